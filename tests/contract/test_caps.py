"""Caps the database holds, whoever writes: an attempt's progress events (by count and by
bytes: the rest are dropped and counted) and a job's releases (past the cap, a release is a
failed attempt). Defaults in queue_config; totals in get_queue_stats() for the metrics.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from mobvibe.sql import store
from tests.support.roles import LoginRoles
from tests.support.rows import claim, insert_job, job_row, new_session, scalar
from tests.support.sqlclock import T0, set_clock


def started(conn: Any, **columns: Any) -> tuple[Any, Any]:
    """A job of its own session claimed at T0: (job, lease)."""
    set_clock(conn, T0)
    job = insert_job(conn, new_session(conn), **columns)
    got = claim(conn, "w1")
    assert got is not None and got["job_id"] == job
    return job, got["lease_token"]


def attempt_counts(conn: Any, job: Any) -> list[tuple[int, int, int]]:
    """(events, event_bytes, events_dropped) of each attempt of the job."""
    return conn.execute(
        "SELECT events, event_bytes::integer, events_dropped FROM coding_job_attempts "
        "WHERE job_id = %s ORDER BY attempt",
        [job],
    ).fetchall()


def dropped_totals(conn: Any) -> tuple[int, int, int]:
    row = conn.execute(
        "SELECT events_dropped, event_bytes_dropped, releases_counted FROM get_queue_stats()"
    ).fetchone()
    return tuple(row)


def test_the_defaults_are_in_queue_config(conn: Any) -> None:
    row = conn.execute(
        "SELECT max_events_per_attempt, max_event_bytes_per_attempt, max_releases_per_job "
        "FROM queue_config"
    ).fetchone()
    assert row == (10_000, 10 * 1024 * 1024, 20)


def test_an_attempt_keeps_its_first_events_up_to_the_count_and_drops_the_rest(conn: Any) -> None:
    conn.execute("UPDATE queue_config SET max_events_per_attempt = 5")
    job, lease = started(conn)
    events = [("step", {"n": i}) for i in range(8)]
    assert store.add_events(conn, job, lease, events) == 5
    assert store.add_events(conn, job, lease, events[:2]) == 0
    kept = conn.execute(
        "SELECT payload->>'n' FROM coding_job_events WHERE job_id = %s ORDER BY id", [job]
    ).fetchall()
    assert [int(n) for (n,) in kept] == [0, 1, 2, 3, 4]  # the first ones, in order
    sizes = scalar(
        conn,
        "SELECT sum(octet_length(kind) + octet_length(payload::text)) FROM coding_job_events",
    )
    ((events_kept, event_bytes, dropped),) = attempt_counts(conn, job)
    assert (events_kept, event_bytes, dropped) == (5, sizes, 5)
    assert dropped_totals(conn)[0] == 5


def test_a_worker_login_cannot_write_more_than_the_bytes_cap_in_one_call(
    conn: Any, db_url: str
) -> None:
    """The attack: a worker login sends incompressible 60 KB payloads in one call."""
    conn.execute("UPDATE queue_config SET max_event_bytes_per_attempt = '1048576'")
    roles = LoginRoles(conn, db_url)
    try:
        with psycopg.connect(roles.make("mobvibe_worker"), autocommit=True) as worker:
            set_clock(worker, T0)
            job = insert_job(conn, new_session(conn))
            got = store.claim(worker, "attacker")
            assert got is not None and got.id == job
            blobs = [("blob", {"b": os.urandom(30_000).hex()}) for _ in range(50)]  # 3 MB
            added = store.add_events(worker, job, got.lease_token, blobs)
    finally:
        roles.drop()
    stored = scalar(
        conn,
        "SELECT sum(octet_length(kind) + octet_length(payload::text)) FROM coding_job_events "
        "WHERE job_id = %s",
        [job],
    )
    assert 0 < added < 50 and stored <= 1048576
    ((kept, kept_bytes, dropped),) = attempt_counts(conn, job)
    assert (kept, kept_bytes, dropped) == (added, stored, 50 - added)
    events_dropped, bytes_dropped, _ = dropped_totals(conn)
    assert events_dropped == 50 - added and bytes_dropped > 1_500_000


def test_a_new_attempt_starts_with_a_fresh_allowance(conn: Any) -> None:
    conn.execute("UPDATE queue_config SET max_events_per_attempt = 2")
    job, lease = started(conn)
    assert store.add_events(conn, job, lease, [("a", {})] * 3) == 2
    assert store.release(conn, job, lease, "released at shutdown")
    again = claim(conn, "w2")
    assert again is not None and again["job_id"] == job
    assert store.add_events(conn, job, again["lease_token"], [("b", {})] * 3) == 2
    assert attempt_counts(conn, job) == [
        (2, 2 * len("a{}"), 1),
        (2, 2 * len("b{}"), 1),
    ]


@pytest.fixture
def worker(conn: Any, db_url: str) -> Iterator[psycopg.Connection[Any]]:
    roles = LoginRoles(conn, db_url)
    try:
        with psycopg.connect(roles.make("mobvibe_worker"), autocommit=True) as login:
            yield login
    finally:
        roles.drop()


def test_releasing_a_job_again_and_again_ends_it_past_the_cap(
    conn: Any, worker: psycopg.Connection[Any]
) -> None:
    """The attack: a worker login claims and releases one job in a loop. Past the cap, each
    release counts as a failed attempt, and the job is dead-lettered after max_retries."""
    job = insert_job(conn, new_session(conn), max_retries=3)
    at, cycles = T0, 0
    while cycles < 100:
        set_clock(worker, at)
        got = store.claim(worker, "looper")
        if got is None:
            break
        store.release(worker, got.id, got.lease_token, "released at shutdown")
        at, cycles = at + timedelta(hours=1), cycles + 1  # past any backoff
    row = job_row(conn, job)
    assert (row["status"], row["retry_count"], row["release_count"]) == ("failed", 3, 20)
    assert (row["attempt"], cycles) == (23, 23)
    assert row["end_reason"] == "release_limit" and "max_releases_per_job" in row["error_message"]
    reasons = [
        r
        for (r,) in conn.execute(
            "SELECT end_reason FROM coding_job_attempts WHERE job_id = %s ORDER BY attempt", [job]
        )
    ]
    assert reasons == ["released"] * 20 + ["release_limit"] * 3
    assert dropped_totals(conn)[2] == 3


def test_a_release_past_the_cap_is_retried_with_backoff_and_a_requeue_starts_again(
    conn: Any,
) -> None:
    conn.execute("UPDATE queue_config SET max_releases_per_job = 1")
    job, lease = started(conn)
    assert scalar(conn, "SELECT queue_release_job(%s, %s)", [job, lease]) is True
    again = claim(conn, "w2")
    assert again is not None
    assert store.end_attempt(conn, job, again["lease_token"], "released", "shutdown") == "pending"
    row = job_row(conn, job)
    assert (row["retry_count"], row["release_count"], row["end_reason"]) == (1, 1, "release_limit")
    assert row["run_at"] > T0  # the backoff of a failed attempt
    conn.execute(
        "UPDATE coding_jobs SET status = 'failed', waiting_for = NULL, completed_at = now() "
        "WHERE id = %s",
        [job],
    )
    assert scalar(conn, "SELECT queue_retry_job(%s)", [job]) is True
    assert job_row(conn, job)["release_count"] == 0


def test_a_release_with_a_cancel_requested_ends_cancelled_whatever_the_cap(conn: Any) -> None:
    conn.execute("UPDATE queue_config SET max_releases_per_job = 1")
    job, lease = started(conn)
    assert store.release(conn, job, lease, "released at shutdown")
    again = claim(conn, "w2")
    assert again is not None and scalar(conn, "SELECT cancel_job(%s)", [job]) is True
    assert store.end_attempt(conn, job, again["lease_token"], "released", "shutdown") == (
        "cancelled"
    )
    assert dropped_totals(conn)[2] == 0


def test_a_direct_insert_cannot_start_a_job_with_releases(conn: Any) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match="release_count 5"):
        insert_job(conn, new_session(conn), release_count=5, id=uuid.uuid4())
