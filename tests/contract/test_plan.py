"""The plan's four tests, ported as written (tests/backend/job-queue.test.ts)."""

from __future__ import annotations

from typing import Any

from mobvibe.client import JobQueue
from tests.support.rows import insert_job


def test_claims_jobs_by_priority(queue: JobQueue, conn: Any, session_id: Any) -> None:
    high = insert_job(conn, session_id, priority=10)
    insert_job(conn, session_id, priority=0)
    claimed = queue.claim()
    assert claimed is not None and claimed.id == high


def test_retries_failed_jobs(queue: JobQueue, conn: Any, session_id: Any) -> None:
    job = insert_job(conn, session_id)
    assert queue.fail(job, "Test error") is True
    status, retry_count = conn.execute(
        "SELECT status, retry_count FROM coding_jobs WHERE id = %s", [job]
    ).fetchone()
    assert status == "pending"
    assert retry_count == 1


def test_moves_to_dead_letter_after_max_retries(
    queue: JobQueue, conn: Any, session_id: Any
) -> None:
    job = insert_job(conn, session_id, max_retries=2)
    queue.fail(job, "Error 1")
    queue.claim()  # re-claim: the retry is not due yet, so nothing comes back
    assert queue.fail(job, "Error 2") is False
    status = conn.execute("SELECT status FROM coding_jobs WHERE id = %s", [job]).fetchone()[0]
    assert status == "failed"
    session = conn.execute(
        "SELECT status, error_message FROM coding_sessions WHERE id = %s", [session_id]
    ).fetchone()
    assert session == ("failed", "Error 2")


def test_provides_queue_statistics(queue: JobQueue) -> None:
    stats = queue.stats()
    for name in (
        "pending_count",
        "processing_count",
        "completed_count",
        "failed_count",
        "oldest_pending_age",
    ):
        assert hasattr(stats, name)


def test_sql_functions_keep_the_plan_signatures(conn: Any, session_id: Any) -> None:
    job = insert_job(conn, session_id)
    cur = conn.execute("SELECT * FROM claim_next_job()")
    names = [d.name for d in cur.description][:3]
    assert names == ["job_id", "session_id", "prompt"]
    assert cur.fetchone()[0] == job
    conn.execute("SELECT complete_job(job_id_param => %s)", [job])
    job2 = insert_job(conn, session_id)
    assert (
        conn.execute("SELECT fail_job(job_id_param => %s, error_msg => 'x')", [job2]).fetchone()[0]
        is True
    )
    cur = conn.execute("SELECT * FROM get_queue_stats()")
    assert [d.name for d in cur.description][:5] == [
        "pending_count",
        "processing_count",
        "completed_count",
        "failed_count",
        "oldest_pending_age",
    ]
    assert cur.fetchone()[:4] == (1, 0, 1, 0)
