"""The migration runner: once each, in order, under a lock, and never over a changed file."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from mobvibe.errors import MigrationError
from mobvibe.sql import migrate as migrate_module
from mobvibe.sql.files import PRIVILEGES, ROW_SECURITY, Repeatable, migrations, repeatables
from mobvibe.sql.migrate import migrate, schema_is_current
from tests.support.commands import QUEUE_CLI, assert_one_error_line, run_queue_cli
from tests.support.migrations import FROZEN, migrate_as_before
from tests.support.roles import LoginRoles
from tests.support.rows import claim, insert_job, scalar

SHIPPED = tuple(f"{m.version:04d}_{m.name}" for m in migrations())
REAPER_CLI = QUEUE_CLI.removesuffix("mobvibe-queue") + "mobvibe-reaper"
FILES = tuple(r.name for r in repeatables())


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


def recorded(conn: Any) -> list[tuple[int, str, str]]:
    return conn.execute(
        "SELECT version, name, checksum FROM queue_migrations ORDER BY version"
    ).fetchall()


def files_recorded(conn: Any) -> dict[str, str]:
    return dict(conn.execute("SELECT name, checksum FROM queue_repeatables").fetchall())


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
        assert first.files == FILES and first.files_shipped == len(FILES)
        assert recorded(conn) == [(m.version, m.name, m.checksum) for m in migrations()]
        assert files_recorded(conn) == {r.name: r.checksum for r in repeatables()}
        second = migrate(conn)
        assert (second.applied, second.already, second.files) == ((), len(SHIPPED), ())
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
        == [
            (
                f"applied {len(SHIPPED)} migration(s): {', '.join(SHIPPED)}\n"
                f"applied all {len(FILES)} repeatable files "
                "(sql/functions, sql/privileges.sql, sql/row_security.sql)"
            )
        ]
        + [f"schema up to date ({len(SHIPPED)} migrations, {len(FILES)} repeatable files)"] * 3
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
                "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() "
                "AND relation = 'queue_migrations'::regclass",
            )
            == 0
        )
    result = run_queue_cli("migrate", database_url=url)
    line = assert_one_error_line(result, 1)
    assert "0002_functions" in line
    assert len((result.stdout + result.stderr).strip().splitlines()) == 1


def test_a_login_with_no_grants_cannot_hold_up_migrate(new_database: Callable[[], str]) -> None:
    """Any login may take any advisory lock; the runs' lock is one on queue_migrations,
    which only its owner may take."""
    url = new_database()
    with connect(url) as owner:
        owner.execute(
            "CREATE TABLE public.queue_migrations (version integer PRIMARY KEY, name text "
            "NOT NULL, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        roles = LoginRoles(owner, url)
        try:
            with connect(roles.make()) as stranger:
                stranger.execute("SELECT pg_advisory_lock(hashtext('mobvibe-queue migrate'))")
                for mode in ("SHARE ROW EXCLUSIVE", "ROW EXCLUSIVE", "ACCESS EXCLUSIVE"):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        with stranger.transaction():
                            stranger.execute(f"LOCK TABLE public.queue_migrations IN {mode} MODE")
                result = run_queue_cli("migrate", database_url=url, timeout=60)
                assert result.returncode == 0, result.stderr
                assert result.stdout.startswith(f"applied {len(SHIPPED)} migration(s)")
        finally:
            roles.drop()


def test_a_run_that_waits_too_long_for_the_lock_names_its_holder_in_one_line(
    migrated_url: str,
) -> None:
    with psycopg.connect(migrated_url, application_name="held-by-a-test") as holder:
        holder.execute("LOCK TABLE queue_migrations IN SHARE ROW EXCLUSIVE MODE")
        pid, user = holder.execute("SELECT pg_backend_pid(), current_user").fetchone()
        started = time.monotonic()
        result = run_queue_cli("migrate", "--lock-wait", "1s", database_url=migrated_url)
        took = time.monotonic() - started
    line = assert_one_error_line(result, 1)
    assert f"pid {pid} (user {user}, application held-by-a-test)" in line, line
    assert "waited 1s" in line and took < 20


def test_an_operator_reading_the_migrations_does_not_hold_up_migrate(
    migrated_url: str,
) -> None:
    with connect(migrated_url) as owner:
        roles = LoginRoles(owner, migrated_url)
        try:
            with psycopg.connect(roles.make("mobvibe_operator")) as operator:
                operator.execute("SELECT count(*) FROM queue_migrations")  # held open
                report = migrate(owner, lock_wait=5)
                assert (report.applied, report.already) == ((), len(SHIPPED))
        finally:
            roles.drop()


def test_a_migration_this_version_does_not_ship_is_refused(new_database: Callable[[], str]) -> None:
    with connect(new_database()) as conn:
        migrate(conn)
        conn.execute(
            "INSERT INTO queue_migrations (version, name, checksum) "
            "VALUES (9999, 'from_the_future', 'y')"
        )
        with pytest.raises(MigrationError, match="upgrade"):
            migrate(conn)


def test_the_owner_column_of_another_phase_is_kept_as_it_is(
    new_database: Callable[[], str],
) -> None:
    with connect(new_database()) as conn:
        conn.execute("CREATE TABLE coding_sessions (id uuid PRIMARY KEY, user_id uuid NOT NULL)")
        migrate(conn)
        assert conn.execute(
            "SELECT is_nullable FROM information_schema.columns "
            "WHERE table_name = 'coding_sessions' AND column_name = 'user_id'"
        ).fetchone() == ("NO",)


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
        assert columns == {
            "id",
            "status",
            "error_message",
            "updated_at",
            "max_concurrency",
            "user_id",
        }
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
            "claim_next_job(text,uuid)",
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


# -- the repeatable files: sql/functions and sql/privileges.sql --------------------------------

CLAIM = "functions/claim_next_job.sql"
ECHO = "functions/queue_test_echo.sql"
NOT_CURRENT = "Error: the database schema is not up to date: run `mobvibe-queue migrate`"


def ship(monkeypatch: pytest.MonkeyPatch, changes: dict[str, str | None]) -> None:
    """Make the runner see the shipped repeatable files with `changes` (name -> its new
    text; None: the file removed), as a version of the package that changed them would."""
    texts = {r.name: r.sql for r in repeatables()}
    texts.update(changes)
    trailing = [PRIVILEGES, ROW_SECURITY]
    functions = sorted(name for name, text in texts.items() if text and name not in trailing)
    shipped = tuple(Repeatable(name, texts[name] or "") for name in [*functions, *trailing])
    monkeypatch.setattr(migrate_module, "repeatables", lambda: shipped)


def applied_at(conn: Any) -> dict[str, Any]:
    return dict(conn.execute("SELECT name, applied_at FROM queue_repeatables").fetchall())


def signatures(conn: Any, name: str) -> list[str]:
    rows = conn.execute(
        "SELECT oid::regprocedure::text FROM pg_proc WHERE proname = %s ORDER BY 1", [name]
    ).fetchall()
    return [signature for (signature,) in rows]


def executable_by_public(conn: Any, signature: str) -> bool:
    return bool(
        scalar(
            conn,
            "SELECT EXISTS (SELECT 1 FROM pg_proc p, "
            "aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a "
            "WHERE p.oid = %s::regprocedure AND a.grantee = 0)",
            [signature],
        )
    )


def test_a_changed_function_file_is_applied_again_with_the_privileges_and_no_other(
    new_database: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with connect(new_database()) as conn:
        migrate(conn)
        before = applied_at(conn)
        text = next(r.sql for r in repeatables() if r.name == CLAIM)
        ship(monkeypatch, {CLAIM: text.replace("-- The casts:", "-- The casts (changed):")})
        assert not schema_is_current(conn)

        report = migrate(conn)
        assert (report.applied, report.files) == ((), (CLAIM, PRIVILEGES, ROW_SECURITY))
        body = scalar(conn, "SELECT prosrc FROM pg_proc WHERE proname = 'claim_next_job'")
        assert "-- The casts (changed):" in body
        after = applied_at(conn)
        assert {name for name in after if after[name] != before[name]} == {
            CLAIM,
            PRIVILEGES,
            ROW_SECURITY,
        }
        assert scalar(
            conn,
            "SELECT has_function_privilege('mobvibe_worker', 'claim_next_job(text, uuid)', "
            "'EXECUTE')",
        )
        assert schema_is_current(conn)
        # unchanged since: applied no more
        assert migrate(conn).files == ()
        assert applied_at(conn) == after


ECHO_V1 = """
CREATE OR REPLACE FUNCTION public.queue_test_echo(value text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$ SELECT value $$;
"""
ECHO_V2 = """
DROP FUNCTION IF EXISTS public.queue_test_echo(text);

CREATE OR REPLACE FUNCTION public.queue_test_echo(value text, times integer) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$ SELECT repeat(value, times) $$;
"""


def test_a_new_file_a_changed_signature_and_a_removed_file_follow_the_rules(
    new_database: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with connect(new_database()) as conn:
        migrate(conn)
        ship(monkeypatch, {ECHO: ECHO_V1})
        assert migrate(conn).files == (ECHO, PRIVILEGES, ROW_SECURITY)
        assert signatures(conn, "queue_test_echo") == ["queue_test_echo(text)"]
        # a new function is executable by PUBLIC; the privileges, applied after it, revoke it
        assert not executable_by_public(conn, "queue_test_echo(text)")

        # the file starts with a DROP of the old signature: one function, still revoked
        ship(monkeypatch, {ECHO: ECHO_V2})
        assert migrate(conn).files == (ECHO, PRIVILEGES, ROW_SECURITY)
        assert signatures(conn, "queue_test_echo") == ["queue_test_echo(text,integer)"]
        assert not executable_by_public(conn, "queue_test_echo(text,integer)")
        assert schema_is_current(conn)

        # the file removed, its function dropped (by a numbered migration): forgotten
        monkeypatch.undo()
        conn.execute("DROP FUNCTION public.queue_test_echo(text, integer)")
        assert not schema_is_current(conn)
        assert migrate(conn).files == ()
        assert ECHO not in applied_at(conn)
        assert schema_is_current(conn)


def test_a_function_that_does_not_compile_changes_nothing(
    new_database: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with connect(new_database()) as conn:
        migrate_as_before(conn, up_to=FROZEN - 1)
        text = next(r.sql for r in repeatables() if r.name == CLAIM)
        ship(monkeypatch, {CLAIM: text.replace("BEGIN\n", "BEGIN\n    NOT PL/pgSQL;\n", 1)})
        with pytest.raises(
            MigrationError, match=r"^function claim_next_job\(text,uuid\) does not "
        ):
            migrate(conn)
        # one transaction: neither the pending migration nor any file was applied
        assert scalar(conn, "SELECT max(version) FROM queue_migrations") == FROZEN - 1
        assert applied_at(conn) == {}
        body = scalar(conn, "SELECT prosrc FROM pg_proc WHERE proname = 'claim_next_job'")
        assert "NOT PL/pgSQL" not in body
        monkeypatch.undo()
        assert migrate(conn).applied == SHIPPED[FROZEN - 1 :]


def test_functions_other_than_the_shipped_files_are_not_current(
    new_database: Callable[[], str],
) -> None:
    url = new_database()
    with connect(url) as conn:
        migrate(conn)
        conn.execute("UPDATE queue_repeatables SET checksum = 'older' WHERE name = %s", [CLAIM])
        assert not schema_is_current(conn)
    for command in ([QUEUE_CLI, "stats"], [REAPER_CLI, "--once"]):
        refused = subprocess.run(
            command,
            env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (refused.returncode, refused.stderr.strip()) == (2, NOT_CURRENT), command
    result = run_queue_cli("migrate", database_url=url)
    assert result.stdout.strip() == (
        f"applied 3 repeatable file(s): {CLAIM}, {PRIVILEGES}, {ROW_SECURITY}"
    )
    assert run_queue_cli("stats", database_url=url).returncode == 0
