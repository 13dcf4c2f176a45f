"""get_queue_stats() tells three kinds of pending job apart: a job due and waiting (the
oldest is the alert's "workers do not keep up"), a retry waiting for its backoff, and a
job enqueued with a delay, which is neither late nor a retry."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

from mobvibe.sql import store
from mobvibe.sql.jobs import NewJob
from tests.support.sqlclock import Clock


@pytest.fixture
def clock(conn: Any) -> Clock:
    return Clock(conn)


def seconds(age: timedelta | None) -> float | None:
    return None if age is None else age.total_seconds()


def test_a_job_enqueued_with_a_delay_is_neither_late_nor_a_retry(
    conn: Any, clock: Clock, session_id: uuid.UUID
) -> None:
    store.enqueue(conn, NewJob("in fifteen minutes", session_id, delay=900))
    stats = store.stats(conn)
    assert (stats.pending_count, stats.delayed_count, stats.waiting_retry_count) == (1, 1, 0)
    assert stats.oldest_pending_age is None and stats.next_retry_at is None
    assert stats.next_run_at == clock.now + timedelta(seconds=900)

    clock.advance(900 + 60)  # due for a minute, not for sixteen
    stats = store.stats(conn)
    assert (stats.delayed_count, stats.waiting_retry_count) == (0, 0)
    assert seconds(stats.oldest_pending_age) == pytest.approx(60, abs=1)


def test_a_retry_waiting_is_counted_apart_and_is_late_only_once_due(
    conn: Any, clock: Clock, session_id: uuid.UUID
) -> None:
    job_id = store.enqueue(conn, NewJob("flaky", session_id))
    job = store.claim(conn, "worker-a")
    assert job is not None and job.id == job_id
    assert store.fail(conn, job_id, "boom", job.lease_token) is True
    run_at = store.retry_at(conn, job_id)
    stats = store.stats(conn)
    assert (stats.waiting_retry_count, stats.delayed_count) == (1, 0)
    assert stats.next_retry_at == stats.next_run_at == run_at
    assert stats.oldest_pending_age is None

    assert run_at is not None
    clock.at(run_at + timedelta(seconds=30))
    stats = store.stats(conn)
    assert (stats.waiting_retry_count, stats.next_retry_at) == (0, None)
    assert seconds(stats.oldest_pending_age) == pytest.approx(30, abs=1)


def test_a_due_job_is_late_from_its_submission(
    conn: Any, clock: Clock, session_id: uuid.UUID
) -> None:
    store.enqueue(conn, NewJob("now", session_id))
    store.enqueue(conn, NewJob("later", session_id, delay=3600))
    clock.advance(600)
    stats = store.stats(conn)
    assert seconds(stats.oldest_pending_age) == pytest.approx(600, abs=1)
    assert (stats.pending_count, stats.delayed_count) == (2, 1)
    assert store.stats(conn).as_dict()["delayed_count"] == 1


def test_the_sweep_counts_no_delayed_job_among_the_retries_waiting(
    conn: Any, clock: Clock, session_id: uuid.UUID
) -> None:
    store.enqueue(conn, NewJob("in an hour", session_id, delay=3600))
    assert store.sweep(conn, "test", 10, 10).waiting_retries == 0
