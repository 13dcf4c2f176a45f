"""Lease tokens fence every write of an attempt; without one, the operator path of the plan."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from psycopg.rows import dict_row

from tests.support.rows import claim, insert_job, job_row, new_session, scalar
from tests.support.sqlclock import T0, set_clock

# Each call an attempt can make with its lease, and what it answers when the lease is stale.
LEASED_CALLS = {
    "heartbeat": ("SELECT queue_heartbeat(%s, %s)", False),
    "complete": ("SELECT complete_job(%s, %s)", False),
    "fail": ("SELECT fail_job(%s, 'late failure', %s)", None),
    "release": ("SELECT queue_release_job(%s, %s)", False),
}


def leased(conn: Any, call: str, job: Any, lease: Any) -> Any:
    statement, _ = LEASED_CALLS[call]
    return scalar(conn, statement, [job, lease])


def failed_and_reclaimed(conn: Any, session_id: Any) -> tuple[Any, Any]:
    """A job whose first attempt was failed by the operator and which is claimed again.

    Returns (job, the first attempt's now stale lease).
    """
    job = insert_job(conn, session_id, max_retries=5)
    set_clock(conn, T0)
    first = claim(conn, "slow-worker")
    assert first is not None and first["job_id"] == job
    assert scalar(conn, "SELECT fail_job(%s, 'worker presumed dead')", [job]) is True
    set_clock(conn, job_row(conn, job)["run_at"])
    second = claim(conn, "new-worker")
    assert second is not None and second["job_id"] == job
    return job, first["lease_token"]


def completed_job(conn: Any, session_id: Any) -> tuple[Any, Any]:
    """A job completed by its attempt: (job, that attempt's lease)."""
    job = insert_job(conn, session_id)
    set_clock(conn, T0)
    attempt = claim(conn)
    assert attempt is not None
    assert scalar(conn, "SELECT complete_job(%s, %s)", [job, attempt["lease_token"]]) is True
    return job, attempt["lease_token"]


@pytest.mark.parametrize("call", sorted(LEASED_CALLS))
def test_a_stale_lease_after_a_reclaim_changes_nothing(
    conn: Any, session_id: Any, call: str
) -> None:
    job, stale = failed_and_reclaimed(conn, session_id)
    set_clock(conn, T0 + timedelta(days=1))
    before = job_row(conn, job)
    assert leased(conn, call, job, stale) is LEASED_CALLS[call][1]
    assert job_row(conn, job) == before


@pytest.mark.parametrize("call", ["heartbeat", "fail", "release"])
def test_the_lease_of_a_completed_job_changes_nothing(
    conn: Any, session_id: Any, call: str
) -> None:
    job, lease = completed_job(conn, session_id)
    set_clock(conn, T0 + timedelta(days=1))
    before = job_row(conn, job)
    assert leased(conn, call, job, lease) is LEASED_CALLS[call][1]
    assert job_row(conn, job) == before


@pytest.mark.parametrize("call", sorted(LEASED_CALLS))
def test_a_made_up_lease_changes_nothing(conn: Any, session_id: Any, call: str) -> None:
    job = insert_job(conn, session_id)
    set_clock(conn, T0)
    assert claim(conn) is not None
    before = job_row(conn, job)
    assert leased(conn, call, job, uuid.uuid4()) is LEASED_CALLS[call][1]
    assert job_row(conn, job) == before


def test_the_current_lease_heartbeats_completes_fails_and_releases(
    conn: Any, session_id: Any
) -> None:
    job = insert_job(conn, session_id, max_retries=5)
    set_clock(conn, T0)
    lease = claim(conn)["lease_token"]  # type: ignore[index]

    set_clock(conn, T0 + timedelta(seconds=30))
    assert leased(conn, "heartbeat", job, lease) is True
    assert job_row(conn, job)["heartbeat_at"] == T0 + timedelta(seconds=30)

    assert leased(conn, "release", job, lease) is True
    lease = claim(conn)["lease_token"]  # type: ignore[index]
    assert leased(conn, "fail", job, lease) is True
    assert job_row(conn, job)["status"] == "pending"

    set_clock(conn, T0 + timedelta(days=1))
    lease = claim(conn)["lease_token"]  # type: ignore[index]
    assert leased(conn, "complete", job, lease) is True
    row = job_row(conn, job)
    assert (row["status"], row["completed_at"], row["end_reason"]) == (
        "completed",
        T0 + timedelta(days=1),
        "completed",
    )


def test_completing_twice_with_the_same_lease_is_true_both_times_and_completes_once(
    conn: Any, session_id: Any
) -> None:
    job, lease = completed_job(conn, session_id)
    first = job_row(conn, job)
    set_clock(conn, T0 + timedelta(minutes=1))
    assert scalar(conn, "SELECT complete_job(%s, %s)", [job, lease]) is True
    assert job_row(conn, job) == first  # same completed_at and updated_at: completed once


def test_a_stale_lease_cannot_complete_a_job_that_another_attempt_completed(
    conn: Any, session_id: Any
) -> None:
    job, stale = failed_and_reclaimed(conn, session_id)
    current = job_row(conn, job)["lease_token"]
    assert scalar(conn, "SELECT complete_job(%s, %s)", [job, current]) is True
    before = job_row(conn, job)
    assert scalar(conn, "SELECT complete_job(%s, %s)", [job, stale]) is False
    assert job_row(conn, job) == before


@pytest.mark.parametrize("state", ["pending", "processing"])
def test_the_operator_completes_a_pending_or_processing_job(
    conn: Any, session_id: Any, state: str
) -> None:
    job = insert_job(conn, session_id)
    set_clock(conn, T0)
    if state == "processing":
        assert claim(conn) is not None
    assert scalar(conn, "SELECT complete_job(%s)", [job]) is True
    assert job_row(conn, job)["status"] == "completed"


@pytest.mark.parametrize("state", ["pending", "processing"])
def test_the_operator_fails_a_pending_or_processing_job(
    conn: Any, session_id: Any, state: str
) -> None:
    job = insert_job(conn, session_id, max_retries=2)
    set_clock(conn, T0)
    if state == "processing":
        assert claim(conn) is not None
    assert scalar(conn, "SELECT fail_job(%s, 'operator says no')", [job]) is True
    row = job_row(conn, job)
    assert (row["status"], row["retry_count"], row["heartbeat_at"]) == ("pending", 1, None)
    assert scalar(conn, "SELECT fail_job(%s, 'operator says no')", [job]) is False
    assert job_row(conn, job)["status"] == "failed"


@pytest.mark.parametrize("final", ["completed", "failed"])
def test_the_operator_never_changes_a_completed_or_failed_job(
    conn: Any, session_id: Any, final: str
) -> None:
    job = insert_job(conn, session_id, max_retries=1)
    if final == "completed":
        assert scalar(conn, "SELECT complete_job(%s)", [job]) is True
    else:
        assert scalar(conn, "SELECT fail_job(%s, 'dead')", [job]) is False
    set_clock(conn, T0)
    before = job_row(conn, job)
    assert scalar(conn, "SELECT complete_job(%s)", [job]) is False
    assert scalar(conn, "SELECT fail_job(%s, 'again')", [job]) is None
    assert job_row(conn, job) == before


def complete_and_claim(conn: Any, job: Any, lease: Any, worker: str = "w") -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT * FROM queue_complete_and_claim(%s, %s, %s)", [job, lease, worker]
        ).fetchall()
    assert len(rows) == 1, rows
    return rows[0]


def test_complete_and_claim_completes_one_job_and_claims_the_next(
    conn: Any, session_id: Any
) -> None:
    first = insert_job(conn, session_id, priority=5)
    second = insert_job(conn, session_id, priority=1)
    set_clock(conn, T0)
    lease = claim(conn, "w")["lease_token"]  # type: ignore[index]
    result = complete_and_claim(conn, first, lease)
    assert result["completed"] is True
    assert result["job_id"] == second and result["attempt"] == 1
    assert job_row(conn, first)["status"] == "completed"
    row = job_row(conn, second)
    assert (row["status"], row["lease_token"], row["worker_id"]) == (
        "processing",
        result["lease_token"],
        "w",
    )

    last = complete_and_claim(conn, second, result["lease_token"])
    assert last["completed"] is True
    assert {k: v for k, v in last.items() if k != "completed"} == dict.fromkeys(
        [
            "job_id",
            "session_id",
            "prompt",
            "lease_token",
            "attempt",
            "retry_count",
            "max_retries",
            "priority",
        ]
    )


def test_complete_and_claim_with_a_stale_lease_reports_it_and_still_claims(
    conn: Any, session_id: Any
) -> None:
    job, stale = failed_and_reclaimed(conn, session_id)
    other = insert_job(conn, new_session(conn))  # its own session: it may start now
    before = job_row(conn, job)
    result = complete_and_claim(conn, job, stale)
    assert result["completed"] is False
    assert result["job_id"] == other
    assert job_row(conn, job) == before


def test_release_puts_the_job_back_at_once_without_counting_a_retry(
    conn: Any, session_id: Any
) -> None:
    job = insert_job(conn, session_id)
    set_clock(conn, T0)
    lease = claim(conn)["lease_token"]  # type: ignore[index]
    set_clock(conn, T0 + timedelta(seconds=5))
    assert (
        scalar(conn, "SELECT queue_release_job(%s, %s, 'worker shutting down')", [job, lease])
        is True
    )
    row = job_row(conn, job)
    assert (
        row["status"],
        row["retry_count"],
        row["run_at"],
        row["heartbeat_at"],
        row["end_reason"],
    ) == ("pending", 0, T0 + timedelta(seconds=5), None, "worker shutting down")
    again = claim(conn)
    assert again is not None and again["job_id"] == job and again["attempt"] == 2


def test_release_without_a_reason_records_the_default_one(conn: Any, session_id: Any) -> None:
    job = insert_job(conn, session_id)
    lease = claim(conn)["lease_token"]  # type: ignore[index]
    assert scalar(conn, "SELECT queue_release_job(%s, %s)", [job, lease]) is True
    assert job_row(conn, job)["end_reason"] == "released at shutdown"
