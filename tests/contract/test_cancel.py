"""Cancel from the phone: cancel_job and queue_cancel_session in every state of a job.

A pending job is cancelled at once and frees its place; a processing one is marked,
its supervisor is told on job_cancel, and the attempt then ends cancelled however it
ends (except a completion: the work is done); a cancelled job is never retried,
never fails its session, and a late write of its attempt changes nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from mobvibe.reaper.sweep import ReaperSettings, run_once
from tests.support.rows import claim, end_attempt, insert_job, job_row, new_session, scalar
from tests.support.sqlclock import T0, set_clock


@pytest.fixture
def listener(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url, autocommit=True) as connection:
        for channel in ("job_cancel", "new_job", "job_status_changed"):
            connection.execute(f"LISTEN {channel}")
        yield connection


def heard(listener: psycopg.Connection[Any], channel: str) -> list[dict[str, Any]]:
    listener.execute("SELECT 1")
    return [json.loads(n.payload) for n in listener.notifies(timeout=0.3) if n.channel == channel]


def running(conn: Any, session: Any | None = None, **columns: Any) -> tuple[Any, Any]:
    """A job of its own session (or of `session`), claimed at T0: (job, lease)."""
    job = insert_job(conn, session or new_session(conn), **columns)
    set_clock(conn, T0)
    got = claim(conn)
    assert got is not None and got["job_id"] == job
    return job, got["lease_token"]


def cancel(conn: Any, job: Any) -> bool:
    return bool(scalar(conn, "SELECT cancel_job(%s)", [job]))


def session_status(conn: Any, job: Any) -> str:
    return str(
        scalar(
            conn,
            "SELECT s.status FROM coding_sessions s JOIN coding_jobs j ON j.session_id = s.id "
            "WHERE j.id = %s",
            [job],
        )
    )


# -- pending --------------------------------------------------------------------------------


def test_a_pending_job_is_cancelled_at_once(conn: Any, listener: Any) -> None:
    session = new_session(conn)
    job = insert_job(conn, session)
    set_clock(conn, T0)
    assert cancel(conn, job) is True
    row = job_row(conn, job)
    assert (row["status"], row["end_reason"], row["completed_at"], row["waiting_for"]) == (
        "cancelled",
        "cancelled",
        T0,
        None,
    )
    assert claim(conn) is None
    changes = heard(listener, "job_status_changed")
    assert [(c["old_status"], c["new_status"]) for c in changes] == [("pending", "cancelled")]
    assert heard(listener, "job_cancel") == []  # nobody runs it: nobody to tell
    assert scalar(conn, "SELECT count(*) FROM coding_job_attempts") == 0


def test_a_cancelled_prompt_frees_its_place_for_the_next(conn: Any, listener: Any) -> None:
    session = new_session(conn)
    first, second, third = (insert_job(conn, session) for _ in range(3))
    set_clock(conn, T0)
    heard(listener, "new_job")  # the inserts' own
    assert cancel(conn, second) is True  # waiting in the middle: nothing moves
    assert heard(listener, "new_job") == []
    assert cancel(conn, first) is True  # the head: the third may start
    assert [n["job_id"] for n in heard(listener, "new_job")] == [str(third)]
    assert claim(conn)["job_id"] == third  # type: ignore[index]


# -- processing -----------------------------------------------------------------------------


def test_a_processing_job_is_marked_and_its_supervisor_told(conn: Any, listener: Any) -> None:
    job, lease = running(conn)
    set_clock(conn, T0 + timedelta(seconds=3))
    assert cancel(conn, job) is True
    row = job_row(conn, job)
    assert (row["status"], row["cancel_requested_at"], row["lease_token"]) == (
        "processing",
        T0 + timedelta(seconds=3),
        lease,
    )
    session = str(row["session_id"])
    assert heard(listener, "job_cancel") == [{"job_id": str(job), "session_id": session}]
    assert cancel(conn, job) is False, "a second cancel changed something"
    assert heard(listener, "job_cancel") == []
    assert scalar(conn, "SELECT queue_heartbeat(%s, %s)", [job, lease]) is True


def test_the_attempt_then_ends_cancelled_and_frees_its_place(conn: Any, listener: Any) -> None:
    session = new_session(conn)
    job, lease = running(conn, session)
    after = insert_job(conn, session)
    assert cancel(conn, job) is True
    assert claim(conn) is None, "a job being cancelled holds its place until it ended"
    assert end_attempt(conn, job, lease, "cancelled", "stopped on request") == "cancelled"
    row = job_row(conn, job)
    assert (row["status"], row["end_reason"], row["retry_count"], row["heartbeat_at"]) == (
        "cancelled",
        "cancelled",
        0,
        None,
    )
    attempt = conn.execute(
        "SELECT end_reason, error_message, ended_at FROM coding_job_attempts WHERE job_id = %s",
        [job],
    ).fetchone()
    assert attempt == ("cancelled", "stopped on request", T0)
    assert claim(conn)["job_id"] == after  # type: ignore[index]


def test_a_completion_while_a_cancel_is_requested_completes_the_work_is_done(conn: Any) -> None:
    for how in ("end_attempt", "complete_job"):
        job, lease = running(conn)
        assert cancel(conn, job) is True
        if how == "end_attempt":
            assert end_attempt(conn, job, lease, "completed") == "completed"
        else:
            assert scalar(conn, "SELECT complete_job(%s, %s)", [job, lease]) is True
        assert job_row(conn, job)["status"] == "completed"


@pytest.mark.parametrize(
    "reason", ["error", "deadline_exceeded", "worker_exited", "heartbeat_expired", "lease_lost"]
)
def test_a_failure_while_a_cancel_is_requested_ends_cancelled_never_retried(
    conn: Any, reason: str
) -> None:
    job, lease = running(conn, max_retries=1)  # a failure would dead-letter it
    assert cancel(conn, job) is True
    assert (
        scalar(conn, "SELECT fail_job(%s, 'it broke', %s, %s)", [job, lease, reason]) is False
    )  # not retried
    row = job_row(conn, job)
    assert (row["status"], row["retry_count"], row["end_reason"], row["error_message"]) == (
        "cancelled",
        0,
        "cancelled",
        "it broke",
    )
    assert session_status(conn, job) == "active", "a cancelled job failed its session"
    reasons = conn.execute(
        "SELECT end_reason FROM coding_job_attempts WHERE job_id = %s", [job]
    ).fetchall()
    assert reasons == [(reason,)]  # the attempt's own end is on record


def test_a_release_while_a_cancel_is_requested_ends_cancelled(conn: Any) -> None:
    job, lease = running(conn)
    assert cancel(conn, job) is True
    assert scalar(conn, "SELECT queue_release_job(%s, %s)", [job, lease]) is True
    assert job_row(conn, job)["status"] == "cancelled"
    job, lease = running(conn)
    assert cancel(conn, job) is True
    assert end_attempt(conn, job, lease, "released", "released at shutdown") == "cancelled"


def test_an_operators_failure_of_a_job_being_cancelled_cancels_it(conn: Any) -> None:
    job, _ = running(conn, max_retries=1)
    assert cancel(conn, job) is True
    assert scalar(conn, "SELECT fail_job(%s, 'by hand')", [job]) is False
    assert job_row(conn, job)["status"] == "cancelled"
    assert session_status(conn, job) == "active"


def test_an_expired_attempt_whose_cancel_was_requested_is_reaped_cancelled(
    conn: Any,
) -> None:
    job, _ = running(conn, max_retries=1)
    assert cancel(conn, job) is True
    set_clock(conn, T0 + timedelta(seconds=31))
    reaped = conn.execute(
        "SELECT job_id, will_retry, new_status FROM queue_reap_expired()"
    ).fetchall()
    assert reaped == [(job, False, "cancelled")]
    assert job_row(conn, job)["status"] == "cancelled"
    assert session_status(conn, job) == "active"


def test_the_sweep_counts_a_reaped_cancel_as_neither_requeued_nor_dead(conn: Any) -> None:
    job, _ = running(conn)
    assert cancel(conn, job) is True
    set_clock(conn, T0 + timedelta(seconds=31))
    result = run_once(conn, ReaperSettings(name="cancel"))
    assert (result.requeued, result.dead_lettered, result.cancelled) == (0, 0, 1)


# -- a cancelled job stays cancelled -----------------------------------------------------------


def test_a_cancelled_attempts_late_writes_change_nothing(conn: Any) -> None:
    job, lease = running(conn)
    assert cancel(conn, job) is True
    assert end_attempt(conn, job, lease, "cancelled") == "cancelled"
    before = job_row(conn, job)
    assert scalar(conn, "SELECT complete_job(%s, %s)", [job, lease]) is False
    assert scalar(conn, "SELECT fail_job(%s, 'late', %s)", [job, lease]) is None
    assert scalar(conn, "SELECT queue_release_job(%s, %s)", [job, lease]) is False
    assert end_attempt(conn, job, lease, "completed") is None
    assert scalar(conn, "SELECT queue_heartbeat(%s, %s)", [job, lease]) is False
    assert scalar(conn, "SELECT complete_job(%s)", [job]) is False  # nor an operator's
    assert scalar(conn, "SELECT fail_job(%s, 'late')", [job]) is None
    assert job_row(conn, job) == before


def test_cancelling_a_finished_job_returns_false_and_changes_nothing(conn: Any) -> None:
    done, lease = running(conn)
    assert scalar(conn, "SELECT complete_job(%s, %s)", [done, lease]) is True
    dead, lease = running(conn, max_retries=1)
    assert scalar(conn, "SELECT fail_job(%s, 'x', %s)", [dead, lease]) is False
    gone = insert_job(conn, new_session(conn))
    assert cancel(conn, gone) is True
    for job in (done, dead, gone):
        before = job_row(conn, job)
        assert cancel(conn, job) is False
        assert job_row(conn, job) == before
    assert cancel(conn, uuid.uuid4()) is False


# -- a whole session ----------------------------------------------------------------------------


def test_cancel_session_cancels_every_unfinished_job_and_says_how_many(
    conn: Any, listener: Any
) -> None:
    session = new_session(conn, max_concurrency=2)
    (first, lease), (second, _) = running(conn, session), running(conn, session)
    queued = [insert_job(conn, session) for _ in range(3)]
    assert scalar(conn, "SELECT complete_job(%s, %s)", [first, lease]) is True
    third = queued[0]  # started after the first ended
    assert claim(conn)["job_id"] == third  # type: ignore[index]
    heard(listener, "new_job")
    assert scalar(conn, "SELECT queue_cancel_session(%s)", [session]) == 4
    statuses = dict(
        conn.execute("SELECT id, status FROM coding_jobs WHERE session_id = %s", [session])
    )
    assert statuses == {
        first: "completed",
        second: "processing",
        third: "processing",
        queued[1]: "cancelled",
        queued[2]: "cancelled",
    }
    told = {n["job_id"] for n in heard(listener, "job_cancel")}
    assert told == {str(second), str(third)}
    assert heard(listener, "new_job") == [], "a cancelled prompt was announced"
    assert scalar(conn, "SELECT queue_cancel_session(%s)", [session]) == 0  # all asked already
    assert scalar(conn, "SELECT queue_cancel_session(%s)", [uuid.uuid4()]) == 0


# -- statistics and retention --------------------------------------------------------------------


def test_stats_count_the_cancelled_jobs(conn: Any) -> None:
    for _ in range(2):
        assert cancel(conn, insert_job(conn, new_session(conn))) is True
    row = conn.execute(
        "SELECT pending_count, completed_count, failed_count, cancelled_count "
        "FROM get_queue_stats()"
    ).fetchone()
    assert row == (0, 0, 0, 2)


def test_cancelled_jobs_are_pruned_like_completed_ones(conn: Any) -> None:
    old, young = (insert_job(conn, new_session(conn)) for _ in range(2))
    set_clock(conn, T0 - timedelta(days=8))
    assert cancel(conn, old) is True
    set_clock(conn, T0 - timedelta(days=6))
    assert cancel(conn, young) is True
    set_clock(conn, T0)
    assert scalar(conn, "SELECT queue_prune('cancelled')") == 1  # retain_completed: 7 days
    assert [r[0] for r in conn.execute("SELECT id FROM coding_jobs")] == [young]
    conn.execute("UPDATE queue_config SET retain_completed = NULL")
    set_clock(conn, T0 + timedelta(days=365))
    assert scalar(conn, "SELECT queue_prune('cancelled')") == 0


def test_prune_refuses_any_other_status(conn: Any) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="cancelled"):
        conn.execute("SELECT queue_prune('pending')")
