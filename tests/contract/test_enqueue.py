"""Transactional enqueue: with `conn=`, the jobs belong to the caller's transaction."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from mobvibe.client import JobQueue
from mobvibe.errors import InvalidJobError
from mobvibe.sql.jobs import NewJob
from tests.support.rows import table_counts


def test_jobs_enqueued_first_in_the_callers_transaction_roll_back_with_it(
    queue: JobQueue, db_url: str, conn: Any
) -> None:
    with psycopg.connect(db_url) as own:  # not autocommit, and no statement run yet
        queue.enqueue("first thing the caller does", conn=own)
        queue.enqueue_many([NewJob("a"), NewJob("b")], conn=own)
        assert table_counts(conn) == (0, 0)  # nothing visible before the caller commits
        own.rollback()
    assert table_counts(conn) == (0, 0)


def test_jobs_enqueued_in_the_callers_transaction_commit_with_it(
    queue: JobQueue, db_url: str, conn: Any, session_id: Any
) -> None:
    with psycopg.connect(db_url) as own:
        own.execute("UPDATE coding_sessions SET status = 'busy' WHERE id = %s", [session_id])
        job = queue.enqueue("with the caller's update", session_id=session_id, conn=own)
        assert table_counts(conn) == (0, 1)
        own.commit()
    assert conn.execute("SELECT status FROM coding_sessions").fetchone() == ("busy",)
    assert [row[0] for row in conn.execute("SELECT id FROM coding_jobs")] == [job]


def test_a_refused_enqueue_inside_the_callers_transaction_keeps_the_callers_work(
    queue: JobQueue, db_url: str, conn: Any, session_id: Any
) -> None:
    with psycopg.connect(db_url) as own:
        kept = queue.enqueue("kept", session_id=session_id, conn=own)
        with pytest.raises(InvalidJobError, match="session"):
            queue.enqueue("orphan", session_id=uuid.uuid4(), conn=own)
        also = queue.enqueue("also kept", session_id=session_id, conn=own)
        assert table_counts(conn) == (0, 1)
        own.commit()
    assert {row[0] for row in conn.execute("SELECT id FROM coding_jobs")} == {kept, also}


def test_an_autocommit_callers_connection_commits_at_once(
    queue: JobQueue, db_url: str, conn: Any
) -> None:
    with psycopg.connect(db_url, autocommit=True) as own:
        queue.enqueue("now", conn=own)
        assert table_counts(conn) == (1, 1)


def test_inside_the_callers_transaction_block_the_jobs_wait_for_its_end(
    queue: JobQueue, db_url: str, conn: Any
) -> None:
    with psycopg.connect(db_url, autocommit=True) as own:
        with pytest.raises(RuntimeError), own.transaction():  # noqa: PT012 - the caller's block
            queue.enqueue("undone", conn=own)
            raise RuntimeError("the caller's own work failed")
        assert table_counts(conn) == (0, 0)
