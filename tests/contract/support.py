"""Plain-SQL helpers for the contract tests: jobs made and read the way other MobVibe parts do."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo, sql
from psycopg.rows import dict_row

from mobvibe.sql import store
from mobvibe.sql.files import migrations

# A fixed instant in the future of every test run: jobs inserted with the
# default run_at (the real now()) are due when the SQL clock is set to it.
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

QUEUE_CLI = str(Path(sys.executable).with_name("mobvibe-queue"))

# The migrations that also defined functions, before the function files of sql/functions.
FROZEN = 9


def insert_job(
    conn: psycopg.Connection[Any],
    session_id: Any,
    *,
    created_at: datetime | None = None,
    **columns: Any,
) -> uuid.UUID:
    """INSERT one job (prompt 'Test' unless given); other columns keep their defaults.

    An INSERT cannot give created_at (the database refuses it): a test that
    needs an older job moves it back afterwards, as the owner.
    """
    values = {"session_id": session_id, "prompt": "Test", **columns}
    statement = sql.SQL("INSERT INTO coding_jobs ({}) VALUES ({}) RETURNING id").format(
        sql.SQL(", ").join(map(sql.Identifier, values)),
        sql.SQL(", ").join(sql.Placeholder() * len(values)),
    )
    row = conn.execute(statement, list(values.values())).fetchone()
    assert row is not None
    if created_at is not None:
        conn.execute("UPDATE coding_jobs SET created_at = %s WHERE id = %s", [created_at, row[0]])
    return row[0]


def new_session(conn: psycopg.Connection[Any], max_concurrency: int = 1) -> uuid.UUID:
    """A session as the producer makes one; up to `max_concurrency` of its prompts at once."""
    session = uuid.uuid4()
    conn.execute(
        "INSERT INTO coding_sessions (id, max_concurrency) VALUES (%s, %s)",
        [session, max_concurrency],
    )
    return session


def job_row(conn: psycopg.Connection[Any], job_id: Any) -> dict[str, Any]:
    """Every column of the job's row."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM coding_jobs WHERE id = %s", [job_id]).fetchone()
    assert row is not None, f"job {job_id} does not exist"
    return row


def claim(conn: psycopg.Connection[Any], worker_id: str | None = None) -> dict[str, Any] | None:
    """SELECT * FROM claim_next_job(worker) on `conn`, as a dict (None: nothing due)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM claim_next_job(%s)", [worker_id]).fetchone()


def scalar(conn: psycopg.Connection[Any], statement: Any, params: Any = None) -> Any:
    """The first column of the first row."""
    row = conn.execute(statement, params).fetchone()
    assert row is not None
    return row[0]


def table_counts(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """(jobs, sessions): to show that a refused call wrote nothing."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM coding_jobs), (SELECT count(*) FROM coding_sessions)"
    ).fetchone()
    assert row is not None
    return row[0], row[1]


class LoginRoles:
    """Login roles made for a test (cluster-wide, so with random names), dropped by drop()."""

    def __init__(self, admin: psycopg.Connection[Any], url: str) -> None:
        self.admin, self.url, self.made = admin, url, list[str]()

    def make(self, *member_of: str, inherit: bool = True, prefix: str = "mobvibe_test") -> str:
        """A login role in the groups `member_of`; its URL. NOINHERIT: it has the groups'
        rights only after SET ROLE, as Supabase's API roles take theirs."""
        name = f"{prefix}_{secrets.token_hex(4)}"
        self.admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN {}").format(
                sql.Identifier(name), sql.SQL("INHERIT" if inherit else "NOINHERIT")
            )
        )
        self.made.append(name)
        for group in member_of:
            self.admin.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(name))
            )
        return conninfo.make_conninfo(self.url, user=name)

    def drop(self) -> None:
        for name in self.made:
            self.admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                [name],
            )
            self.admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            self.admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        self.made.clear()


def run_queue_cli(
    *args: str, database_url: str | None, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the installed `mobvibe-queue` with DATABASE_URL set (None: unset)."""
    env = {
        k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("MOBVIBE_")
    }
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return subprocess.run(
        [QUEUE_CLI, *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    """The command failed with `exit_code`, one `Error:` line and no traceback; that line."""
    output = result.stdout + result.stderr
    assert result.returncode == exit_code, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    return errors[0]


def migrate_as_before(conn: psycopg.Connection[Any], up_to: int = FROZEN) -> None:
    """Migrations 0001 to `up_to` as the runner did before the function files: each in a
    transaction of its own, recorded in queue_migrations, and nothing else."""
    store.create_migrations_table(conn)
    for migration in migrations():
        if migration.version <= up_to:
            with conn.transaction():
                store.set_local(conn, "lock_timeout", "10s")
                store.apply_migration(
                    conn, migration.version, migration.name, migration.checksum, migration.sql
                )
