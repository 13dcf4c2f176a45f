"""mobvibe-queue dlq: list, requeue (and the job then completes), purge."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from click.testing import Result

from mobvibe.client import JobQueue
from mobvibe.reaper.sweep import ReaperSettings, run_once
from mobvibe.sql import store
from mobvibe.sql.jobs import NewJob
from tests.support.rows import WORKER, job_row
from tests.support.sqlclock import Clock

Cli = Callable[..., Result]


def dead_letter(
    queue: JobQueue, n: int = 1, error: str = "model timed out", days_ago: float = 0
) -> list[Any]:
    """n jobs that failed their only attempt `days_ago` days ago."""
    ids = queue.enqueue_many([NewJob(f"prompt {i}", max_retries=1) for i in range(n)])
    for job_id in ids:
        assert queue.fail(job_id, error) is False
    with queue.connection() as c:
        c.execute(
            "UPDATE coding_jobs SET completed_at = completed_at - %s * interval '1 day' "
            "WHERE id = ANY(%s)",
            [days_ago, ids],
        )
    return ids


def status(conn: Any, job_id: Any) -> str:
    return str(job_row(conn, job_id)["status"])


def test_a_job_dead_lettered_by_the_reaper_is_requeued_and_completes(
    queue: JobQueue, conn: Any, clock: Clock, cli: Cli
) -> None:
    session = queue.create_session()
    job_id = queue.enqueue("worker keeps dying", session_id=session, max_retries=1)
    store.claim(conn, WORKER)
    clock.advance(31)
    assert run_once(conn, ReaperSettings(name="t")).dead_lettered == 1

    result = cli("dlq", "requeue", str(job_id))

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "requeued 1 job(s)"
    assert "dlq_requeued" in result.stderr and str(job_id) in result.stderr
    assert "heartbeat expired" in result.stderr  # the last error, kept in the log line
    job = job_row(conn, job_id)
    assert (job["status"], job["retry_count"]) == ("pending", 0)
    session_status = conn.execute(
        "SELECT status FROM coding_sessions WHERE id = %s", [session]
    ).fetchone()[0]
    assert session_status == "active"
    again = queue.claim()
    assert again is not None and again.id == job_id
    assert queue.complete(job_id, again.lease_token) is True
    assert status(conn, job_id) == "completed"


def test_requeue_all_brings_back_every_dead_letter(queue: JobQueue, conn: Any, cli: Cli) -> None:
    ids = dead_letter(queue, 3)
    result = cli("dlq", "requeue", "--all")
    assert result.exit_code == 0
    assert result.stdout.strip() == "requeued 3 job(s)"
    assert [status(conn, i) for i in ids] == ["pending"] * 3


def test_requeue_a_bad_id_is_a_usage_error_and_changes_nothing(
    queue: JobQueue, conn: Any, cli: Cli
) -> None:
    (job_id,) = dead_letter(queue)
    result = cli("dlq", "requeue", str(job_id), "not-a-uuid")
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        == "Error: job id must be a UUID or the start of one (at least 4 hex digits), "
        "got 'not-a-uuid'"
    )
    assert status(conn, job_id) == "failed"


def test_requeue_an_unknown_or_live_job_says_why_and_exits_1(
    queue: JobQueue, conn: Any, cli: Cli
) -> None:
    (dead,) = dead_letter(queue)
    live = queue.enqueue("still pending")
    unknown = "00000000-0000-4000-8000-000000000000"
    result = cli("dlq", "requeue", unknown, str(live), str(dead))
    assert result.exit_code == 1
    assert f"Error: job {unknown} not found" in result.stderr
    assert f"Error: job {live} is not dead-lettered (status pending)" in result.stderr
    assert result.stdout.strip() == "requeued 1 job(s)"
    assert status(conn, dead) == "pending"


def test_requeue_needs_ids_or_all_but_not_both(cli: Cli) -> None:
    assert cli("dlq", "requeue").exit_code == 2
    both = cli("dlq", "requeue", "--all", "00000000-0000-4000-8000-000000000000")
    assert both.exit_code == 2
    assert "give the job IDs to requeue, or --all" in both.stderr


def test_list_shows_the_newest_dead_letters(queue: JobQueue, cli: Cli) -> None:
    assert cli("dlq", "list").stdout.strip() == "no dead-lettered jobs"
    old = dead_letter(queue, 1, "old failure", days_ago=2)
    new = dead_letter(queue, 2, "new failure\nwith a second line")
    limited = cli("dlq", "list", "--limit", "2")
    text = limited.stdout.splitlines()
    assert text[0].startswith("JOB ID") and len(text) == 3
    assert {line.split()[0] for line in text[1:3]} == {str(i) for i in new}
    assert "new failure with a second line" in text[1]
    # a hint for the person, not a row for a pipe
    assert limited.stderr == "showing the newest 2 of 3: --limit shows more\n"

    rows = [json.loads(line) for line in cli("dlq", "list", "--json").stdout.splitlines()]
    assert [r["id"] for r in rows][-1] == str(old[0])
    assert rows[-1]["error_message"] == "old failure"
    assert {"session_id", "retry_count", "max_retries", "end_reason", "completed_at"} <= rows[
        0
    ].keys()


def test_purge_deletes_only_dead_letters_older_than_the_age(
    queue: JobQueue, conn: Any, cli: Cli
) -> None:
    old = dead_letter(queue, 3, days_ago=40)
    recent = dead_letter(queue, 2, days_ago=10)
    pending = queue.enqueue("not failed")
    conn.execute("UPDATE coding_jobs SET created_at = now() - interval '90 days'")

    result = cli("dlq", "purge", "--older-than", "30d", "--yes")

    assert result.exit_code == 0
    assert result.stdout.strip() == "deleted 3 dead-lettered job(s) older than 30d"
    left = {row[0] for row in conn.execute("SELECT id FROM coding_jobs")}
    assert left == {*recent, pending}
    assert not left & set(old)


def test_purge_asks_first_and_no_keeps_everything(queue: JobQueue, conn: Any, cli: Cli) -> None:
    dead_letter(queue, 2, days_ago=40)
    refused = cli("dlq", "purge", "--older-than", "30d", input="n\n")
    assert refused.exit_code == 1
    assert "Delete 2 dead-lettered job(s) older than 30d?" in refused.stderr
    assert conn.execute("SELECT count(*) FROM coding_jobs").fetchone()[0] == 2
    accepted = cli("dlq", "purge", "--older-than", "30d", input="y\n")
    assert accepted.exit_code == 0
    assert conn.execute("SELECT count(*) FROM coding_jobs").fetchone()[0] == 0


def test_purge_with_a_bad_age_is_a_usage_error(cli: Cli) -> None:
    result = cli("dlq", "purge", "--older-than", "a month")
    assert result.exit_code == 2
    assert "'a month' is not a duration" in result.stderr
