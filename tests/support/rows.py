"""Jobs and sessions made and read in plain SQL, the way other MobVibe parts do."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

WORKER = "worker-a"  # the worker id of a test's claims, unless it names one


def new_session(
    conn: psycopg.Connection[Any], max_concurrency: int = 1, user_id: uuid.UUID | None = None
) -> uuid.UUID:
    """A session as the producer makes one; up to `max_concurrency` of its prompts at once;
    owned by `user_id` (None: the backend's own)."""
    session = uuid.uuid4()
    if user_id is None:  # a schema older than coding_sessions.user_id too
        conn.execute(
            "INSERT INTO coding_sessions (id, max_concurrency) VALUES (%s, %s)",
            [session, max_concurrency],
        )
    else:
        conn.execute(
            "INSERT INTO coding_sessions (id, max_concurrency, user_id) VALUES (%s, %s, %s)",
            [session, max_concurrency, user_id],
        )
    return session


def insert_job(
    conn: psycopg.Connection[Any],
    session_id: Any,
    *,
    created_at: datetime | None = None,
    **columns: Any,
) -> uuid.UUID:
    """INSERT one job (prompt 'Test' unless given); other columns, and those given as None,
    keep their defaults.

    An INSERT cannot give created_at (the database refuses it): a job that must be
    older is moved back afterwards, as the owner, in the same transaction (no one sees
    it with its real created_at).
    """
    given = {k: v for k, v in columns.items() if v is not None}
    values = {"session_id": session_id, "prompt": "Test", **given}
    statement = sql.SQL("INSERT INTO coding_jobs ({}) VALUES ({}) RETURNING id").format(
        sql.SQL(", ").join(map(sql.Identifier, values)),
        sql.SQL(", ").join(sql.Placeholder() * len(values)),
    )
    moved = conn.transaction() if created_at is not None else contextlib.nullcontext()
    with moved:
        job_id: uuid.UUID = scalar(conn, statement, list(values.values()))
        if created_at is not None:
            conn.execute(
                "UPDATE coding_jobs SET created_at = %s WHERE id = %s", [created_at, job_id]
            )
    return job_id


def job_row(conn: psycopg.Connection[Any], job_id: Any) -> dict[str, Any]:
    """Every column of the job's row."""
    row: dict[str, Any] | None = named_row(
        conn, "SELECT * FROM coding_jobs WHERE id = %s", [job_id]
    )
    assert row is not None, f"job {job_id} does not exist"
    return row


def claim(conn: psycopg.Connection[Any], worker_id: str | None = WORKER) -> dict[str, Any] | None:
    """claim_next_job(worker) on `conn` (so on its clock), as a dict (None: nothing due)."""
    return named_row(conn, "SELECT * FROM claim_next_job(%s)", [worker_id])


def named_row(conn: psycopg.Connection[Any], statement: Any, params: Any = None) -> Any:
    """The first row of `statement` as a dict of its columns (None: no row)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(statement, params).fetchone()


def scalar(conn: psycopg.Connection[Any], statement: Any, params: Any = None) -> Any:
    """The first column of the first row."""
    row = conn.execute(statement, params).fetchone()
    assert row is not None
    return row[0]


def end_attempt(
    conn: psycopg.Connection[Any],
    job_id: Any,
    lease_token: Any,
    reason: str,
    error: str | None = None,
    output: str | None = None,
) -> Any:
    """queue_end_attempt on `conn`: the job's new status (None: the lease was stale)."""
    return scalar(
        conn,
        "SELECT queue_end_attempt(%s, %s, %s, %s, %s)",
        [job_id, lease_token, reason, error, output],
    )


def count(conn: psycopg.Connection[Any], status: str) -> int:
    """How many jobs are in `status`."""
    return int(scalar(conn, "SELECT count(*) FROM coding_jobs WHERE status = %s", [status]))


def table_counts(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """(jobs, sessions): to show that a refused call wrote nothing."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM coding_jobs), (SELECT count(*) FROM coding_sessions)"
    ).fetchone()
    assert row is not None
    return row[0], row[1]


@contextlib.contextmanager
def triggers_off(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """The owner's connection with its triggers off (session_replication_role = replica), to
    make rows that an INSERT may not (finished jobs, impossible states); CHECKs still hold."""
    conn.execute("SET session_replication_role = replica")
    try:
        yield conn
    finally:
        conn.execute("RESET session_replication_role")
