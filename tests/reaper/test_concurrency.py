"""Many reapers at once (every supervisor pod has one, plus the CronJob): no attempt is
counted twice."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from mobvibe.client import JobQueue
from mobvibe.reaper.sweep import ReaperSettings, SweepResult, run_once
from mobvibe.sql.jobs import NewJob

JOBS = 1000


def expire_all(conn: Any) -> None:
    """Every job becomes an attempt whose worker died an hour ago (many of a session at
    once: the reapers' contention on sessions, not the order rule, is under test)."""
    conn.execute("""
        UPDATE coding_jobs
        SET status = 'processing', lease_token = gen_random_uuid(), attempt = 1, waiting_for = NULL,
            worker_id = 'dead', started_at = now() - interval '2 hours',
            heartbeat_at = now() - interval '1 hour'""")


def sweep_together(url: str, reapers: int) -> list[SweepResult]:
    """Start `reapers` sweeps at the same instant, each on its own connection."""
    conns = [psycopg.connect(url, autocommit=True) for _ in range(reapers)]
    barrier = threading.Barrier(reapers)
    results: list[SweepResult | BaseException] = [RuntimeError("no result")] * reapers

    def sweep(index: int) -> None:
        try:
            barrier.wait(10)
            results[index] = run_once(
                conns[index], ReaperSettings(batch_size=50, name=f"reaper-{index}")
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            results[index] = exc

    threads = [threading.Thread(target=sweep, args=(i,)) for i in range(reapers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for conn in conns:
        conn.close()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


@pytest.mark.parametrize("reapers", [2, 5])
def test_reapers_sweeping_together_requeue_each_job_exactly_once(
    reapers: int, queue: JobQueue, conn: Any, db_url: str
) -> None:
    queue.enqueue_many([NewJob("x", max_retries=3)] * JOBS)
    expire_all(conn)

    results = sweep_together(db_url, reapers)

    assert sum(r.requeued for r in results) == JOBS
    assert sum(r.dead_lettered for r in results) == 0
    rows = conn.execute(
        "SELECT status, retry_count, end_reason, count(*) FROM coding_jobs GROUP BY 1, 2, 3"
    ).fetchall()
    assert rows == [("pending", 1, "heartbeat_expired", JOBS)]
    recorded = conn.execute("SELECT count(*), sum(requeued) FROM queue_reaper_runs").fetchone()
    assert recorded == (reapers, JOBS)
    print(f"{reapers} reapers: requeued {[r.requeued for r in results]}")


@pytest.mark.parametrize("reapers", [2, 5])
def test_reapers_sweeping_together_dead_letter_each_job_once(
    reapers: int, queue: JobQueue, conn: Any, db_url: str
) -> None:
    sessions = [queue.create_session() for _ in range(10)]
    queue.enqueue_many(
        [NewJob("x", session_id=sessions[i % 10], max_retries=1) for i in range(JOBS)]
    )
    expire_all(conn)
    notes: list[str] = []
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN job_status_changed")

        results = sweep_together(db_url, reapers)

        notes = [n.payload for n in listener.notifies(timeout=1, stop_after=2 * JOBS)]
    assert sum(r.dead_lettered for r in results) == JOBS
    assert sum(r.requeued for r in results) == 0
    assert (
        conn.execute(
            "SELECT count(*) FROM coding_jobs WHERE status = 'failed' AND retry_count = 1"
        ).fetchone()[0]
        == JOBS
    )
    # one processing -> failed transition per job, never two
    assert len(notes) == JOBS
    assert (
        conn.execute("SELECT count(*) FROM coding_sessions WHERE status = 'failed'").fetchone()[0]
        == 10
    )
