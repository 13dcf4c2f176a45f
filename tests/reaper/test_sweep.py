"""run_once against real PostgreSQL: expiry, heartbeats, backoff, dead letters, fencing."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest

from mobvibe import metrics
from mobvibe.client import JobQueue
from mobvibe.reaper.sweep import ReaperSettings, run_once
from mobvibe.sql import store
from mobvibe.sql.jobs import NewJob
from tests.support.rows import WORKER, job_row
from tests.support.sqlclock import Clock


def backoff_window(conn: Any, failures: int) -> tuple[float, float]:
    base, cap, jitter = conn.execute(
        "SELECT extract(epoch FROM backoff_base), "
        "extract(epoch FROM backoff_cap), backoff_jitter "
        "FROM queue_config"
    ).fetchone()
    delay = min(float(cap), float(base) * 2 ** (failures - 1))
    return delay, delay * (1 + jitter)


def test_expired_attempt_is_requeued_with_backoff_and_the_reason(
    queue: JobQueue, conn: Any, clock: Clock, settings: ReaperSettings
) -> None:
    job_id = queue.enqueue("build the app", max_retries=3)
    attempt = store.claim(conn, WORKER)
    assert attempt is not None and attempt.id == job_id
    reaped_at = clock.advance(31)

    result = run_once(conn, settings)

    assert (result.requeued, result.dead_lettered) == (1, 0)
    job = job_row(conn, job_id)
    assert job["status"] == "pending"
    assert job["retry_count"] == 1
    assert job["end_reason"] == "heartbeat_expired"
    assert "heartbeat" in job["error_message"]
    assert job["heartbeat_at"] is None
    low, high = backoff_window(conn, 1)
    assert low <= (job["run_at"] - reaped_at).total_seconds() <= high + 0.001
    assert result.waiting_retries == 1 and result.next_retry_at == job["run_at"]


def test_unexpired_attempt_is_left_alone(
    queue: JobQueue, conn: Any, clock: Clock, settings: ReaperSettings
) -> None:
    old, young = queue.enqueue("first"), queue.enqueue("second")  # two sessions
    assert store.claim(conn, WORKER).id == old  # type: ignore[union-attr]
    clock.advance(20)
    assert store.claim(conn, WORKER).id == young  # type: ignore[union-attr]
    clock.advance(11)  # old: silent 31 s; young: 11 s

    assert run_once(conn, settings).requeued == 1
    assert job_row(conn, old)["status"] == "pending"
    assert job_row(conn, young)["status"] == "processing"
    assert job_row(conn, young)["retry_count"] == 0


def test_a_long_job_whose_heartbeats_keep_coming_is_never_reaped(
    queue: JobQueue, conn: Any, clock: Clock, settings: ReaperSettings
) -> None:
    job_id = queue.enqueue("a long refactoring")
    attempt = store.claim(conn, WORKER)
    assert attempt is not None
    for _ in range(30):  # ten minutes of steered time, a heartbeat every 20 s
        clock.advance(20)
        assert queue_heartbeat(conn, attempt.id, attempt.lease_token)
        assert run_once(conn, settings).requeued == 0
    assert job_row(conn, job_id)["status"] == "processing"
    clock.advance(31)  # the worker goes silent
    assert run_once(conn, settings).requeued == 1


def queue_heartbeat(conn: Any, job_id: Any, lease: Any) -> bool:
    return bool(conn.execute("SELECT queue_heartbeat(%s, %s)", [job_id, lease]).fetchone()[0])


def test_no_requeued_job_is_claimed_before_its_run_at(
    queue: JobQueue, conn: Any, clock: Clock, settings: ReaperSettings
) -> None:
    job_id = queue.enqueue("retry me later")
    store.claim(conn, WORKER)
    clock.advance(31)
    run_once(conn, settings)
    run_at = job_row(conn, job_id)["run_at"]

    clock.at(run_at - timedelta(milliseconds=1))
    assert store.claim(conn, "worker-b") is None
    clock.at(run_at)
    again = store.claim(conn, "worker-b")
    assert again is not None and again.id == job_id and again.attempt == 2


def test_exhausted_attempts_are_dead_lettered_and_the_session_failed(
    queue: JobQueue, conn: Any, clock: Clock, settings: ReaperSettings
) -> None:
    session = queue.create_session()
    job_id = queue.enqueue("doomed", session_id=session, max_retries=2)
    for expected in ((1, 0), (0, 1)):
        clock.at(max(clock.now, job_row(conn, job_id)["run_at"]))
        assert store.claim(conn, WORKER) is not None
        clock.advance(31)
        result = run_once(conn, settings)
        assert (result.requeued, result.dead_lettered) == expected

    job = job_row(conn, job_id)
    assert (job["status"], job["retry_count"], job["end_reason"]) == (
        "failed",
        2,
        "heartbeat_expired",
    )
    assert job["completed_at"] == clock.now
    status, error = conn.execute(
        "SELECT status, error_message FROM coding_sessions WHERE id = %s", [session]
    ).fetchone()
    assert status == "failed" and "heartbeat" in error
    # A later sweep does not touch it again.
    clock.advance(3600)
    assert run_once(conn, settings).dead_lettered == 0


def test_reaped_workers_late_writes_change_nothing(
    queue: JobQueue, conn: Any, clock: Clock, settings: ReaperSettings
) -> None:
    job_id = queue.enqueue("fenced")
    lost = store.claim(conn, "worker-a")
    assert lost is not None
    clock.advance(31)
    run_once(conn, settings)
    clock.at(job_row(conn, job_id)["run_at"])
    current = store.claim(conn, "worker-b")
    assert current is not None and current.id == job_id
    before = job_row(conn, job_id)

    assert queue.complete(job_id, lost.lease_token) is False
    assert queue.fail(job_id, "late failure", lost.lease_token) is None
    assert queue.heartbeat(job_id, lost.lease_token) is False
    assert queue.release(job_id, lost.lease_token) is False

    assert job_row(conn, job_id) == before
    assert (before["status"], before["worker_id"], before["attempt"]) == (
        "processing",
        "worker-b",
        2,
    )
    assert before["lease_token"] == current.lease_token
    assert queue.complete(job_id, current.lease_token) is True


def test_a_sweep_is_recorded_in_queue_reaper_runs(
    queue: JobQueue, conn: Any, clock: Clock, settings: ReaperSettings
) -> None:
    queue.enqueue_many([NewJob("x")] * 3)
    for _ in range(3):
        store.claim(conn, WORKER)
    clock.advance(31)
    run_once(conn, settings)
    run_once(conn, settings)
    row = conn.execute(
        "SELECT last_sweep_at, requeued, dead_lettered, pruned "
        "FROM queue_reaper_runs WHERE reaper = 'test-reaper'"
    ).fetchone()
    assert row == (clock.now, 3, 0, 0)


def test_reapers_not_seen_for_a_week_are_forgotten(
    conn: Any, clock: Clock, settings: ReaperSettings
) -> None:
    conn.execute(
        "INSERT INTO queue_reaper_runs (reaper, last_sweep_at) VALUES "
        "('old-cronjob-pod:1', %s), ('recent-pod:1', %s)",
        [clock.now - timedelta(days=8), clock.now - timedelta(days=6)],
    )
    run_once(conn, settings)
    names = {row[0] for row in conn.execute("SELECT reaper FROM queue_reaper_runs")}
    assert names == {"recent-pod:1", "test-reaper"}


def test_batches_loop_until_every_expired_attempt_is_requeued(
    queue: JobQueue, conn: Any, clock: Clock
) -> None:
    queue.enqueue_many([NewJob("x")] * 23)
    for _ in range(23):
        store.claim(conn, WORKER)
    clock.advance(31)
    result = run_once(conn, ReaperSettings(batch_size=5, name="small"))
    assert result.requeued == 23
    assert (
        conn.execute(
            "SELECT count(*) FROM coding_jobs WHERE status = 'pending' AND retry_count = 1"
        ).fetchone()[0]
        == 23
    )


def test_sweep_updates_the_reaper_metrics(
    queue: JobQueue, conn: Any, clock: Clock, settings: ReaperSettings
) -> None:
    before = (metrics.REAPER_REQUEUED.value(), metrics.REAPER_SWEEPS.value("ok"))
    queue.enqueue("x")
    store.claim(conn, WORKER)
    clock.advance(31)
    run_once(conn, settings)
    assert metrics.REAPER_REQUEUED.value() == before[0] + 1
    assert metrics.REAPER_SWEEPS.value("ok") == before[1] + 1
    assert metrics.REAPER_LAST_SUCCESS.value() > 0


def test_an_expired_attempt_whose_cancel_was_asked_ends_cancelled_counted_and_logged(
    queue: JobQueue,
    conn: Any,
    clock: Clock,
    settings: ReaperSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job_id = queue.enqueue("stop me", max_retries=3)
    assert store.claim(conn, WORKER) is not None
    assert queue.cancel(job_id)  # asked of a worker that never answers
    clock.advance(31)
    before = metrics.REAPER_CANCELLED.value(), metrics.REAPER_REQUEUED.value()

    with caplog.at_level(logging.INFO, logger="mobvibe.reaper.sweep"):
        result = run_once(conn, settings)

    assert (result.cancelled, result.requeued, result.dead_lettered) == (1, 0, 0)
    assert job_row(conn, job_id)["status"] == "cancelled"
    assert metrics.REAPER_CANCELLED.value() == before[0] + 1
    assert metrics.REAPER_REQUEUED.value() == before[1]
    logged = [r for r in caplog.records if getattr(r, "event", None) == "job_cancelled"]
    assert [r.__dict__["job_id"] for r in logged] == [str(job_id)]
