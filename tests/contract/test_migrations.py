"""The migration runner: once each, in order, under a lock, and never over a changed file."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from mobvibe.errors import MigrationError
from mobvibe.sql.files import migrations
from mobvibe.sql.migrate import migrate
from tests.support.commands import QUEUE_CLI, assert_one_error_line, run_queue_cli
from tests.support.rows import claim, insert_job, scalar

SHIPPED = tuple(f"{m.version:04d}_{m.name}" for m in migrations())


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


def recorded(conn: Any) -> list[tuple[int, str, str]]:
    return conn.execute(
        "SELECT version, name, checksum FROM queue_migrations ORDER BY version"
    ).fetchall()


def test_the_package_ships_0001_to_0005() -> None:
    assert SHIPPED[:5] == (
        "0001_tables",
        "0002_functions",
        "0003_notifications",
        "0004_privileges",
        "0005_least_privilege",
    )


def test_migrate_applies_every_migration_once_and_records_it(
    new_database: Callable[[], str],
) -> None:
    with connect(new_database()) as conn:
        first = migrate(conn)
        assert (first.applied, first.already) == (SHIPPED, 0)
        assert recorded(conn) == [(m.version, m.name, m.checksum) for m in migrations()]
        second = migrate(conn)
        assert (second.applied, second.already) == ((), len(SHIPPED))
        assert scalar(conn, "SELECT count(*) FROM queue_migrations") == len(SHIPPED)


def test_four_processes_migrating_one_database_at_once_all_succeed(
    new_database: Callable[[], str],
) -> None:
    url = new_database()
    env = {"DATABASE_URL": url, "PATH": "/usr/bin:/bin"}
    runs = [
        subprocess.Popen(
            [QUEUE_CLI, "migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, outputs
    said = sorted(out.strip() for out, _ in outputs)
    # the advisory lock lets exactly one of them do the work
    assert (
        said
        == [f"applied {len(SHIPPED)} migration(s): {', '.join(SHIPPED)}"]
        + [f"schema up to date ({len(SHIPPED)} migrations applied)"] * 3
    )
    with connect(url) as conn:
        assert [version for version, _, _ in recorded(conn)] == [m.version for m in migrations()]


def test_a_changed_applied_migration_is_refused(new_database: Callable[[], str]) -> None:
    url = new_database()
    with connect(url) as conn:
        migrate(conn)
        conn.execute("UPDATE queue_migrations SET checksum = 'x' WHERE version = 2")
        with pytest.raises(MigrationError, match="0002_functions was changed"):
            migrate(conn)
        # the lock is given back even so: another run is not blocked
        assert (
            scalar(
                conn,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND pid = pg_backend_pid()",
            )
            == 0
        )
    result = run_queue_cli("migrate", database_url=url)
    line = assert_one_error_line(result, 1)
    assert "0002_functions" in line
    assert len((result.stdout + result.stderr).strip().splitlines()) == 1


def test_a_migration_this_version_does_not_ship_is_refused(new_database: Callable[[], str]) -> None:
    with connect(new_database()) as conn:
        migrate(conn)
        conn.execute(
            "INSERT INTO queue_migrations (version, name, checksum) "
            "VALUES (9999, 'from_the_future', 'y')"
        )
        with pytest.raises(MigrationError, match="upgrade"):
            migrate(conn)


def test_a_sessions_table_of_another_phase_gains_the_queue_columns(
    new_database: Callable[[], str],
) -> None:
    with connect(new_database()) as conn:
        conn.execute("CREATE TABLE coding_sessions (id uuid PRIMARY KEY)")
        migrate(conn)
        columns = {
            name
            for (name,) in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'coding_sessions'"
            )
        }
        assert columns == {"id", "status", "error_message", "updated_at", "max_concurrency"}
        session = uuid.uuid4()
        conn.execute("INSERT INTO coding_sessions (id) VALUES (%s)", [session])
        job = insert_job(conn, session, max_retries=1)
        assert scalar(conn, "SELECT fail_job(%s, 'broken')", [job]) is False
        assert conn.execute("SELECT status, error_message FROM coding_sessions").fetchone() == (
            "failed",
            "broken",
        )


def test_coding_jobs_joins_the_supabase_realtime_publication(
    new_database: Callable[[], str],
) -> None:
    with connect(new_database()) as conn:
        conn.execute("CREATE PUBLICATION supabase_realtime")
        migrate(conn)
        tables = conn.execute(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = 'supabase_realtime' "
            "ORDER BY 1"
        ).fetchall()
        assert tables == [("coding_job_events",), ("coding_jobs",)]


def test_a_publication_for_all_tables_is_left_alone(new_database: Callable[[], str]) -> None:
    with connect(new_database()) as conn:
        conn.execute("CREATE PUBLICATION supabase_realtime FOR ALL TABLES")
        migrate(conn)
        assert (
            scalar(
                conn,
                "SELECT count(*) FROM pg_publication_tables "
                "WHERE pubname = 'supabase_realtime' "
                "AND tablename = 'coding_jobs'",
            )
            == 1
        )


def test_without_the_publication_nothing_is_published(new_database: Callable[[], str]) -> None:
    with connect(new_database()) as conn:
        migrate(conn)
        assert scalar(conn, "SELECT count(*) FROM pg_publication") == 0


# The plan's schema as an earlier phase left it: the plan's columns only, and
# the functions and triggers of 007/008 (bodies cut down; signatures as written).
PLAN_SCHEMA = """
CREATE TABLE coding_sessions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    status text DEFAULT 'active',
    error_message text,
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now());
CREATE TABLE coding_jobs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    session_id uuid REFERENCES coding_sessions (id) ON DELETE CASCADE,
    prompt text NOT NULL,
    priority integer DEFAULT 0,
    status text DEFAULT 'pending'
        CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    retry_count integer DEFAULT 0,
    max_retries integer DEFAULT 3,
    error_message text,
    created_at timestamptz DEFAULT now(),
    started_at timestamptz,
    completed_at timestamptz,
    updated_at timestamptz DEFAULT now());
CREATE FUNCTION claim_next_job() RETURNS TABLE (job_id uuid, session_id uuid, prompt text)
AS $$ BEGIN RETURN; END $$ LANGUAGE plpgsql;
CREATE FUNCTION complete_job(job_id_param uuid) RETURNS void
AS $$ BEGIN UPDATE coding_jobs SET status = 'completed' WHERE id = job_id_param; END $$
LANGUAGE plpgsql;
CREATE FUNCTION fail_job(job_id_param uuid, error_msg text) RETURNS boolean
AS $$ BEGIN RETURN true; END $$ LANGUAGE plpgsql;
CREATE FUNCTION get_queue_stats() RETURNS TABLE (pending_count bigint, processing_count bigint,
    completed_count bigint, failed_count bigint, oldest_pending_age interval)
AS $$ BEGIN RETURN; END $$ LANGUAGE plpgsql;
CREATE FUNCTION notify_new_job() RETURNS trigger
AS $$ BEGIN PERFORM pg_notify('new_job', NEW.id::text); RETURN NEW; END $$ LANGUAGE plpgsql;
CREATE TRIGGER on_job_created AFTER INSERT ON coding_jobs
    FOR EACH ROW EXECUTE FUNCTION notify_new_job();
CREATE FUNCTION notify_job_status_change() RETURNS trigger
AS $$ BEGIN RETURN NEW; END $$ LANGUAGE plpgsql;
CREATE TRIGGER on_job_status_changed AFTER UPDATE ON coding_jobs
    FOR EACH ROW EXECUTE FUNCTION notify_job_status_change();
"""


def test_a_database_with_the_plans_schema_migrates_and_keeps_working(
    new_database: Callable[[], str],
) -> None:
    with connect(new_database()) as conn:
        conn.execute(PLAN_SCHEMA.encode())
        session = uuid.uuid4()
        conn.execute("INSERT INTO coding_sessions (id) VALUES (%s)", [session])
        old_job, old_second = (
            scalar(
                conn,
                "INSERT INTO coding_jobs (session_id, prompt, priority) "
                "VALUES (%s, 'from before', 1) RETURNING id",
                [session],
            )
            for _ in range(2)
        )
        assert migrate(conn).applied == SHIPPED
        # the jobs already queued take their places: one prompt of a session at a time
        assert scalar(conn, "SELECT waiting_for FROM coding_jobs WHERE id = %s", [old_job]) is None
        assert (
            scalar(conn, "SELECT waiting_for FROM coding_jobs WHERE id = %s", [old_second])
            == "session"
        )

        # the plan's signatures are the operator's overloads, the worker's need a lease:
        # no call of the plan is ambiguous
        overloads = conn.execute(
            "SELECT oid::regprocedure::text FROM pg_proc "
            "WHERE pronamespace = 'public'::regnamespace "
            "AND proname IN ('claim_next_job', 'complete_job', 'fail_job', 'get_queue_stats') "
            "ORDER BY 1"
        ).fetchall()
        assert [signature for (signature,) in overloads] == [
            "claim_next_job(text)",
            "complete_job(uuid)",
            "complete_job(uuid,uuid,text)",
            "fail_job(uuid,text)",
            "fail_job(uuid,text,uuid,text,text)",
            "get_queue_stats()",
        ]

        new_session = uuid.uuid4()
        conn.execute("INSERT INTO coding_sessions (id) VALUES (%s)", [new_session])
        new_job = insert_job(conn, new_session, priority=5)
        first = claim(conn)
        assert first is not None and first["job_id"] == new_job
        cur = conn.execute("SELECT * FROM claim_next_job()")
        assert [d.name for d in cur.description][:3] == ["job_id", "session_id", "prompt"]
        assert cur.fetchone()[:3] == (old_job, session, "from before")
        assert scalar(conn, "SELECT complete_job(%s)", [new_job]) is True
        assert scalar(conn, "SELECT fail_job(%s, 'x')", [old_job]) is True
        stats = conn.execute(
            "SELECT pending_count, processing_count, completed_count, "
            "failed_count FROM get_queue_stats()"
        ).fetchone()
        assert stats == (2, 0, 1, 0)  # the retry, and the old session's second prompt

        # the queue's checks now hold on the old table too
        with pytest.raises(psycopg.errors.CheckViolation):
            insert_job(conn, session, priority=11)
        with pytest.raises(psycopg.errors.CheckViolation):
            insert_job(conn, session, prompt="")
        # the plan's per-row notify trigger gave way to ours: the plan's JSON payload
        conn.execute("LISTEN new_job")
        conn.execute("LISTEN test_marker")
        job = insert_job(conn, session, priority=2)
        conn.execute("NOTIFY test_marker")
        notes = []
        for note in conn.notifies(timeout=10):
            if note.channel == "test_marker":
                break
            notes.append(note)
        assert [json.loads(n.payload) for n in notes] == [
            {"job_id": str(job), "session_id": str(session), "priority": 2}
        ]
