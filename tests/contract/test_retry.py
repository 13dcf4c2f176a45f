"""fail_job, the backoff schedule, the dead letters and the way back out of them."""

from __future__ import annotations

import functools
import json
from datetime import timedelta
from typing import Any

from mobvibe.client import JobQueue
from tests.support.commands import assert_one_error_line, run_queue_cli
from tests.support.rows import claim, insert_job, job_row, scalar
from tests.support.sqlclock import T0, set_clock
from tests.support.threads import own_connections, run_together


def backoff_config(conn: Any) -> tuple[float, float, float]:
    """(base seconds, cap seconds, jitter) as queue_config has them."""
    row = conn.execute(
        "SELECT extract(epoch FROM backoff_base), extract(epoch FROM backoff_cap), "
        "backoff_jitter FROM queue_config"
    ).fetchone()
    return float(row[0]), float(row[1]), float(row[2])


def set_backoff(conn: Any, base: float, cap: float, jitter: float) -> None:
    conn.execute(
        "UPDATE queue_config SET backoff_base = %s * interval '1 second', "
        "backoff_cap = %s * interval '1 second', backoff_jitter = %s",
        [base, cap, jitter],
    )


def fail_at(
    conn: Any, job: Any, at: Any, error: str = "boom", lease: Any = None
) -> tuple[bool | None, float]:
    """fail_job at SQL time `at`: (its result, seconds from `at` to the new run_at)."""
    set_clock(conn, at)
    if lease is None:  # the operator's call, the plan's
        result = scalar(conn, "SELECT fail_job(%s, %s)", [job, error])
    else:
        result = scalar(conn, "SELECT fail_job(%s, %s, %s)", [job, error, lease])
    return result, (job_row(conn, job)["run_at"] - at).total_seconds()


def session_status(conn: Any, session_id: Any) -> str:
    return scalar(conn, "SELECT status FROM coding_sessions WHERE id = %s", [session_id])


def test_backoff_delays_lie_within_their_jitter_bounds(conn: Any, session_id: Any) -> None:
    base, cap, jitter = backoff_config(conn)
    assert (base, cap, jitter) == (10.0, 600.0, 0.25)  # the documented defaults
    jobs = [insert_job(conn, session_id, max_retries=100) for _ in range(12)]
    for n in range(1, 7):
        d = min(cap, base * 2 ** (n - 1))
        at = T0 + timedelta(days=n)
        outcomes = [fail_at(conn, job, at, f"error {n}") for job in jobs]
        assert all(result is True for result, _ in outcomes)
        delays = [delay for _, delay in outcomes]
        assert all(d <= delay <= d * (1 + jitter) + 1e-6 for delay in delays), (n, d, delays)
        assert len(set(delays)) > 1, f"no jitter in {delays}"
    rows = [job_row(conn, job) for job in jobs]
    assert {(r["status"], r["retry_count"], r["error_message"]) for r in rows} == {
        ("pending", 6, "error 6")
    }


def test_without_jitter_the_delays_are_exact_and_a_job_waits_for_them(
    conn: Any, session_id: Any
) -> None:
    set_backoff(conn, base=10, cap=600, jitter=0)
    job = insert_job(conn, session_id, max_retries=100)
    at = T0
    for n in range(1, 7):
        set_clock(conn, at)
        claimed = claim(conn, "w")
        assert claimed is not None and claimed["job_id"] == job
        result, delay = fail_at(conn, job, at, f"error {n}", lease=claimed["lease_token"])
        assert (result, delay) == (True, 10 * 2 ** (n - 1))
        run_at = job_row(conn, job)["run_at"]
        set_clock(conn, run_at - timedelta(microseconds=1))
        assert claim(conn) is None, "claimed before its backoff ended"
        at = run_at
    assert job_row(conn, job)["retry_count"] == 6


def test_the_cap_bounds_the_delay_before_jitter(conn: Any, session_id: Any) -> None:
    set_backoff(conn, base=1, cap=5, jitter=0)
    job = insert_job(conn, session_id, max_retries=100)
    delays = [fail_at(conn, job, T0 + timedelta(hours=n))[1] for n in range(1, 9)]
    assert delays == [1, 2, 4, 5, 5, 5, 5, 5]

    set_backoff(conn, base=1, cap=5, jitter=0.5)
    delays = [fail_at(conn, job, T0 + timedelta(days=n))[1] for n in range(1, 11)]
    assert all(5 <= delay <= 7.5 + 1e-6 for delay in delays), delays


def test_a_long_run_of_failures_stays_at_the_cap(conn: Any, session_id: Any) -> None:
    job = insert_job(conn, session_id, max_retries=100)
    conn.execute("UPDATE coding_jobs SET retry_count = 98 WHERE id = %s", [job])
    result, delay = fail_at(conn, job, T0)
    assert result is True
    assert 600 <= delay <= 750 + 1e-6


def test_max_retries_2_dead_letters_on_the_second_failure_and_fails_the_session(
    conn: Any, session_id: Any
) -> None:
    job = insert_job(conn, session_id, max_retries=2)
    set_clock(conn, T0)
    first = claim(conn)
    assert first is not None
    assert scalar(conn, "SELECT fail_job(%s, 'Error 1', %s)", [job, first["lease_token"]]) is True
    assert session_status(conn, session_id) == "active"

    later = job_row(conn, job)["run_at"]
    set_clock(conn, later)
    second = claim(conn)
    assert second is not None and second["job_id"] == job
    assert scalar(conn, "SELECT fail_job(%s, 'Error 2', %s)", [job, second["lease_token"]]) is False
    row = job_row(conn, job)
    assert (row["status"], row["retry_count"], row["error_message"]) == ("failed", 2, "Error 2")
    assert row["completed_at"] == later
    assert row["heartbeat_at"] is None
    session = conn.execute(
        "SELECT status, error_message FROM coding_sessions WHERE id = %s", [session_id]
    ).fetchone()
    assert session == ("failed", "Error 2")
    assert scalar(conn, "SELECT failed_count FROM get_queue_stats()") == 1
    set_clock(conn, later + timedelta(days=1))
    assert claim(conn) is None, "a dead-lettered job came back"


def test_fail_job_on_a_completed_or_failed_job_returns_null_and_changes_nothing(
    conn: Any, session_id: Any
) -> None:
    done = insert_job(conn, session_id)
    assert scalar(conn, "SELECT complete_job(%s)", [done]) is True
    dead = insert_job(conn, session_id, max_retries=1)
    assert scalar(conn, "SELECT fail_job(%s, 'final')", [dead]) is False
    set_clock(conn, T0)
    for job in (done, dead):
        before = job_row(conn, job)
        assert scalar(conn, "SELECT fail_job(%s, 'again')", [job]) is None
        lease = before["lease_token"]
        assert scalar(conn, "SELECT fail_job(%s, 'again', %s)", [job, lease]) is None
        assert job_row(conn, job) == before


def test_fail_job_on_an_unknown_job_returns_null(conn: Any) -> None:
    assert scalar(conn, "SELECT fail_job(gen_random_uuid(), 'nobody')") is None


def test_concurrent_failures_of_one_job_each_count(db_url: str, conn: Any, session_id: Any) -> None:
    job = insert_job(conn, session_id, max_retries=100)
    callers = 20
    with own_connections(db_url, callers) as conns:
        calls = [
            functools.partial(scalar, own, "SELECT fail_job(%s, %s)", [job, f"error {n}"])
            for n, own in enumerate(conns)
        ]
        results = run_together(*calls, timeout=60)
    assert results == [True] * callers
    row = job_row(conn, job)
    assert (row["status"], row["retry_count"]) == ("pending", callers)


def test_requeue_failed_brings_a_dead_letter_back_and_reactivates_the_session(
    queue: JobQueue, conn: Any, session_id: Any
) -> None:
    first = insert_job(conn, session_id, max_retries=1)
    second = insert_job(conn, session_id, max_retries=1)
    for job in (first, second):
        assert queue.fail(job, f"broken {job}") is False
    assert session_status(conn, session_id) == "failed"

    set_clock(conn, T0)
    assert scalar(conn, "SELECT queue_requeue_failed(%s)", [first]) is True
    row = job_row(conn, first)
    assert (row["status"], row["retry_count"], row["run_at"], row["completed_at"]) == (
        "pending",
        0,
        T0,
        None,
    )
    assert row["end_reason"] == "requeued from dead letters"
    # the session stays failed while one of its jobs still is
    assert session_status(conn, session_id) == "failed"

    assert queue.requeue_failed(second) is True
    session = conn.execute(
        "SELECT status, error_message FROM coding_sessions WHERE id = %s", [session_id]
    ).fetchone()
    assert session == ("active", None)
    assert queue.stats().failed_count == 0

    claimed = claim(conn)
    assert claimed is not None and claimed["job_id"] == first and claimed["retry_count"] == 0


def test_requeue_failed_of_a_job_that_is_not_failed_changes_nothing(
    queue: JobQueue, conn: Any, session_id: Any
) -> None:
    job = insert_job(conn, session_id)
    before = job_row(conn, job)
    assert queue.requeue_failed(job) is False
    assert job_row(conn, job) == before


def test_the_config_command_sets_the_schedule_that_the_next_failure_uses(
    db_url: str, conn: Any, session_id: Any
) -> None:
    result = run_queue_cli(
        "config",
        "--backoff-base",
        "2",
        "--backoff-cap",
        "3",
        "--backoff-jitter",
        "0",
        database_url=db_url,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "backoff_base_seconds": 2.0,
        "backoff_cap_seconds": 3.0,
        "backoff_jitter": 0.0,
        "heartbeat_timeout_seconds": 30.0,
        "retain_completed_seconds": 7 * 86400.0,
        "retain_failed_seconds": 30 * 86400.0,
        "max_events_per_attempt": 10_000,
        "max_event_bytes_per_attempt": 10 * 1024 * 1024,
        "max_releases_per_job": 20,
        "user_max_concurrency": None,
    }
    assert backoff_config(conn) == (2.0, 3.0, 0.0)
    job = insert_job(conn, session_id, max_retries=10)
    delays = [fail_at(conn, job, T0 + timedelta(hours=n))[1] for n in range(1, 4)]
    assert delays == [2, 3, 3]


def test_the_config_command_refuses_a_cap_below_the_base(db_url: str, conn: Any) -> None:
    result = run_queue_cli(
        "config", "--backoff-base", "60", "--backoff-cap", "5", database_url=db_url
    )
    assert "backoff cap" in assert_one_error_line(result, 2)
    assert backoff_config(conn) == (10.0, 600.0, 0.25)


def test_a_failure_after_max_retries_was_lowered_to_the_count_dead_letters(
    conn: Any, session_id: Any
) -> None:
    job = insert_job(conn, session_id, max_retries=5)
    set_clock(conn, T0)
    lease = claim(conn)["lease_token"]  # type: ignore[index]
    conn.execute("UPDATE coding_jobs SET retry_count = 2, max_retries = 2 WHERE id = %s", [job])
    assert scalar(conn, "SELECT fail_job(%s, 'enough', %s)", [job, lease]) is False
    row = job_row(conn, job)
    assert (row["status"], row["retry_count"], row["max_retries"]) == ("failed", 2, 2)
