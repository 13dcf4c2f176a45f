"""mobvibe-queue doctor: one seeded violation per check, and a clean database passes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
from click.testing import Result

from mobvibe.client import JobQueue
from mobvibe.sql.files import migrations
from tests.support.roles import LoginRoles

Cli = Callable[..., Result]


def findings(result: Result, check: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(f"{check}: ")]


def test_a_clean_database_passes(queue: JobQueue, cli: Cli) -> None:
    queue.enqueue("pending is fine")
    result = cli("doctor")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "ok: 8 checks, nothing found"
    assert json.loads(cli("doctor", "--json").stdout) == {
        "ok": True,
        "findings": [],
        "not_shown": {},
    }


def test_finds_a_processing_job_with_no_live_attempt(queue: JobQueue, conn: Any, cli: Cli) -> None:
    job_id = queue.enqueue("orphaned")
    job = queue.claim("worker-7")
    assert job is not None
    assert cli("doctor").exit_code == 0  # its heartbeat is fresh
    conn.execute("UPDATE coding_jobs SET heartbeat_at = now() - interval '5 minutes'")
    conn.execute("UPDATE queue_config SET heartbeat_timeout = '10 minutes'")
    assert cli("doctor").exit_code == 0  # the configured timeout, not a guess
    conn.execute("UPDATE queue_config SET heartbeat_timeout = '1 minute'")
    result = cli("doctor")
    assert result.exit_code == 1
    (line,) = findings(result, "processing_without_live_attempt")
    assert str(job_id) in line and str(job.session_id) in line and "worker-7" in line
    assert "last heartbeat 300 s ago" in line and "timeout 1m" in line


def test_the_heartbeat_timeout_is_no_longer_an_option(cli: Cli) -> None:
    result = cli("doctor", "--heartbeat-timeout", "1m")
    assert result.exit_code == 2
    assert "mobvibe-queue config --heartbeat-timeout" in result.output


def test_finds_a_retry_count_above_max_retries(fresh_url: str, cli: Cli) -> None:
    # The CHECK constraint refuses such a row. It can still exist where the
    # constraint was added NOT VALID over older rows (or was dropped): seed it
    # that way, in a database of its own.
    with psycopg.connect(fresh_url, autocommit=True) as conn, JobQueue(fresh_url) as queue:
        job_id = queue.enqueue("retried too often", max_retries=2)
        conn.execute("ALTER TABLE coding_jobs DROP CONSTRAINT coding_jobs_retry_count_check")
        conn.execute("UPDATE coding_jobs SET retry_count = 5")
        conn.execute(
            "ALTER TABLE coding_jobs ADD CONSTRAINT coding_jobs_retry_count_check "
            "CHECK (retry_count BETWEEN 0 AND max_retries) NOT VALID"
        )
    result = cli("doctor", url=fresh_url)
    assert result.exit_code == 1
    (line,) = findings(result, "retry_count_above_max")
    assert str(job_id) in line and "retry_count 5 above max_retries 2" in line


def test_finds_a_failed_job_with_no_reason(queue: JobQueue, conn: Any, cli: Cli) -> None:
    job_id = queue.enqueue("failed by hand")
    conn.execute(
        "UPDATE coding_jobs SET status = 'failed', completed_at = now(), "
        "error_message = NULL WHERE id = %s",
        [job_id],
    )
    result = cli("doctor")
    assert result.exit_code == 1
    (line,) = findings(result, "failed_without_reason")
    assert str(job_id) in line
    assert findings(result, "failed_session_without_failed_job") == []


def test_finds_a_failed_session_with_no_failed_job(queue: JobQueue, conn: Any, cli: Cli) -> None:
    session = queue.create_session()
    queue.enqueue("fine", session_id=session)
    conn.execute("UPDATE coding_sessions SET status = 'failed' WHERE id = %s", [session])
    empty = queue.create_session()  # failed, but its jobs are gone (retention): fine
    conn.execute("UPDATE coding_sessions SET status = 'failed' WHERE id = %s", [empty])
    result = cli("doctor")
    assert result.exit_code == 1
    assert findings(result, "failed_session_without_failed_job") == [
        (f"failed_session_without_failed_job: session {session} is failed, but none of its jobs is")
    ]


def test_finds_queue_functions_executable_by_public(fresh_url: str, cli: Cli) -> None:
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        conn.execute("GRANT EXECUTE ON FUNCTION claim_next_job(text, uuid) TO PUBLIC")
        conn.execute("CREATE FUNCTION queue_sneaky() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    result = cli("doctor", url=fresh_url)
    assert result.exit_code == 1
    assert [
        line.split(" is executable")[0]
        for line in findings(result, "function_executable_by_public")
    ] == [
        "function_executable_by_public: function claim_next_job(text,uuid)",
        "function_executable_by_public: function queue_sneaky()",
    ]


def test_finds_changed_and_unapplied_migrations(fresh_url: str, cli: Cli) -> None:
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        conn.execute("UPDATE queue_migrations SET checksum = 'edited' WHERE version = 2")
        conn.execute("DELETE FROM queue_migrations WHERE version = 4")
    result = cli("doctor", url=fresh_url)
    assert result.exit_code == 1
    (drift,) = findings(result, "migration_drift")
    assert "0002_functions was changed after it was applied" in drift
    assert findings(result, "migration_not_applied") == [
        (
            "migration_not_applied: migration 0004_privileges is not applied: run "
            "`mobvibe-queue migrate`"
        )
    ]


def test_finds_function_files_not_applied_as_shipped(fresh_url: str, cli: Cli) -> None:
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE queue_repeatables SET checksum = 'older' "
            "WHERE name = 'functions/queue_sweep.sql'"
        )
        roles = LoginRoles(conn, fresh_url)
        try:
            owner = cli("doctor", url=fresh_url)
            # a role that may not read queue_repeatables learns it from queue_settings()
            worker = cli("doctor", url=roles.make("mobvibe_worker"))
        finally:
            roles.drop()
    assert (owner.exit_code, worker.exit_code) == (1, 1)
    fix = "not applied as this version ships it: run `mobvibe-queue migrate`"
    assert findings(owner, "function_file_not_applied") == [
        f"function_file_not_applied: functions/queue_sweep.sql: {fix}"
    ]
    assert findings(worker, "function_file_not_applied") == [
        f"function_file_not_applied: sql/functions and sql/privileges.sql: {fix}"
    ]


def test_an_unmigrated_database_is_told_to_migrate(new_database: Any, cli: Cli) -> None:
    result = cli("doctor", url=new_database("mobvibe_empty"))
    assert result.exit_code == 1
    assert len(findings(result, "migration_not_applied")) == len(migrations())
    assert "could not run" not in result.stdout


def test_findings_are_capped_per_check_and_counted(queue: JobQueue, conn: Any, cli: Cli) -> None:
    for _ in range(25):
        queue.enqueue("x")
        queue.claim()
    conn.execute("UPDATE coding_jobs SET heartbeat_at = now() - interval '1 hour'")
    result = cli("doctor", "--limit", "5")
    lines = findings(result, "processing_without_live_attempt")
    assert len(lines) == 6 and lines[-1].endswith("... and 20 more")
    assert result.stdout.splitlines()[-1] == "25 finding(s)"
    report = json.loads(cli("doctor", "--limit", "5", "--json").stdout)
    assert report["ok"] is False and len(report["findings"]) == 5
    assert report["not_shown"] == {"processing_without_live_attempt": 20}
    assert {"check", "message", "job_id", "session_id"} == report["findings"][0].keys()


def test_an_unreachable_database_is_one_error_line(cli: Cli) -> None:
    result = cli("doctor", url="postgresql://postgres@127.0.0.1:1/x")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot connect to the database")
    assert len(result.stderr.strip().splitlines()) == 1
