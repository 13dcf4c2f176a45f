"""Retention: finished jobs older than the configured retention are deleted, in bounded
batches; a retention of NULL keeps them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from mobvibe.client import JobQueue
from mobvibe.reaper.sweep import ReaperSettings, run_once
from mobvibe.sql.jobs import NewJob

COUNT_DELETES = """
CREATE TABLE test_delete_statements (deleted integer NOT NULL);
CREATE FUNCTION test_count_deletes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- fired inside queue_prune, whose search_path is pg_catalog: hence public.
    INSERT INTO public.test_delete_statements SELECT count(*) FROM gone;
    RETURN NULL;
END $$;
CREATE TRIGGER test_count_deletes AFTER DELETE ON coding_jobs
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION test_count_deletes();
"""


@pytest.fixture
def counted(fresh_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to a database that records how many rows each DELETE removed."""
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        conn.execute(COUNT_DELETES.encode())
        yield conn


def finished(conn: Any, status: str, days_ago: float, n: int) -> list[Any]:
    """n jobs that reached `status` `days_ago` days ago."""
    with JobQueue(conn.info.dsn) as queue:
        ids = queue.enqueue_many([NewJob(f"{status} {days_ago}")] * n)
    conn.execute(
        "UPDATE coding_jobs SET status = %s, retry_count = %s, error_message = %s, "
        "completed_at = now() - %s * interval '1 day' WHERE id = ANY(%s)",
        [
            status,
            3 if status == "failed" else 0,
            "boom" if status == "failed" else None,
            days_ago,
            ids,
        ],
    )
    return ids


def remaining(conn: Any) -> dict[tuple[str, str], int]:
    rows = conn.execute("SELECT status, prompt, count(*) FROM coding_jobs GROUP BY 1, 2")
    return {(status, prompt): n for status, prompt, n in rows}


def test_retention_deletes_only_old_enough_jobs_in_batches(counted: Any) -> None:
    finished(counted, "completed", 8, 35)
    finished(counted, "completed", 6, 3)
    finished(counted, "failed", 31, 4)
    finished(counted, "failed", 29, 2)
    with JobQueue(counted.info.dsn) as queue:
        queue.enqueue("still pending")  # created now, but never finished: never pruned
    counted.execute("UPDATE coding_jobs SET created_at = now() - interval '90 days'")

    result = run_once(counted, ReaperSettings(prune_batch=10, name="retention"))

    assert (result.pruned_completed, result.pruned_failed, result.pruned) == (35, 4, 39)
    assert remaining(counted) == {
        ("completed", "completed 6"): 3,
        ("failed", "failed 29"): 2,
        ("pending", "still pending"): 1,
    }
    statements = [n for (n,) in counted.execute("SELECT deleted FROM test_delete_statements")]
    assert max(statements) <= 10
    # Each call of the sweep deletes a batch of each status (completed, failed,
    # cancelled); the calls go on while a batch came back full.
    assert statements == [10, 4, 0, 10, 0, 0, 10, 0, 0, 5, 0, 0]


def test_a_batch_that_comes_back_full_is_followed_by_another(counted: Any) -> None:
    finished(counted, "completed", 8, 20)
    result = run_once(counted, ReaperSettings(prune_batch=10, name="retention"))
    assert result.pruned_completed == 20
    statements = [n for (n,) in counted.execute("SELECT deleted FROM test_delete_statements")]
    # the first call: a full batch of completed jobs, then failed's and cancelled's;
    # again, as a batch was full: the second one; again: the short one
    assert statements == [10, 0, 0, 10, 0, 0, 0, 0, 0]


def test_a_null_retention_keeps_finished_jobs_forever(conn: Any) -> None:
    finished(conn, "completed", 400, 5)
    finished(conn, "failed", 400, 5)
    conn.execute("UPDATE queue_config SET retain_completed = NULL, retain_failed = NULL")
    result = run_once(conn, ReaperSettings(name="keep"))
    assert result.pruned == 0
    assert (result.retain_completed_s, result.retain_failed_s) == (None, None)
    assert sum(remaining(conn).values()) == 10


def test_each_retention_is_its_own_setting(conn: Any) -> None:
    finished(conn, "completed", 2, 5)
    finished(conn, "failed", 2, 5)
    conn.execute("UPDATE queue_config SET retain_completed = '1 day', retain_failed = NULL")
    result = run_once(conn, ReaperSettings(name="one-day"))
    assert (result.pruned_completed, result.pruned_failed) == (5, 0)
    assert result.retain_completed_s == 86400


def test_the_retention_is_the_databases_whoever_calls(conn: Any) -> None:
    """queue_prune deletes nothing younger than the configured retention (7 and 30 days)."""
    finished(conn, "completed", 6.9, 3)
    finished(conn, "failed", 29.9, 3)
    assert conn.execute("SELECT queue_prune('completed', 100000)").fetchone() == (0,)
    assert conn.execute("SELECT queue_prune('failed', 100000)").fetchone() == (0,)
    assert sum(remaining(conn).values()) == 6
