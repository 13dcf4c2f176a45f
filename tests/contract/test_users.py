"""Users: limits and turns (the order rule, sql/functions/queue_placement.sql).

A job of a user starts only while fewer than the user's limit of the user's jobs are
processing; among the jobs that may start: priority, then the user whose most recent
start is the oldest (no start yet first; every session with no user is one user), then
submission order. A job waiting for its user is never claimed, never walked, and never
wakes a worker; the end of a user's job lets the user's next job start and announces it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from tests.support.plans import buffers
from tests.support.rows import claim, insert_job, job_row, new_session, scalar
from tests.support.sqlclock import T0, set_clock
from tests.support.threads import own_connections, run_together


def limit(conn: Any, user: uuid.UUID, n: int | None) -> Any:
    return scalar(conn, "SELECT queue_set_user_limit(%s, %s)", [user, n])


def user_jobs(conn: Any, user: uuid.UUID | None, count: int, **columns: Any) -> list[uuid.UUID]:
    """`count` jobs of the user, each in a session of its own (no session rule holds them)."""
    return [insert_job(conn, new_session(conn, user_id=user), **columns) for _ in range(count)]


def waiting(conn: Any, *jobs: Any) -> list[str | None]:
    return [job_row(conn, job)["waiting_for"] for job in jobs]


def complete(conn: Any, job: Any) -> None:
    lease = job_row(conn, job)["lease_token"]
    assert scalar(conn, "SELECT complete_job(%s, %s)", [job, lease]) is True


def running(conn: Any, user: uuid.UUID) -> int:
    return int(
        scalar(
            conn,
            "SELECT count(*) FROM coding_jobs WHERE user_key = %s AND status = 'processing'",
            [user],
        )
    )


def claimed_ids(conn: Any, count: int) -> list[Any]:
    got = [claim(conn) for _ in range(count)]
    return [None if row is None else row["job_id"] for row in got]


# -- the limit ---------------------------------------------------------------------------------


def test_a_users_jobs_start_only_while_fewer_than_its_limit_run(conn: Any) -> None:
    user = uuid.uuid4()
    jobs = user_jobs(conn, user, 4)
    assert limit(conn, user, 2) == 2
    set_clock(conn, T0)
    assert claimed_ids(conn, 3) == [jobs[0], jobs[1], None]
    assert waiting(conn, *jobs[2:]) == ["user", "user"]
    complete(conn, jobs[1])
    assert waiting(conn, *jobs[2:]) == [None, "user"]
    assert claimed_ids(conn, 2) == [jobs[2], None]
    assert running(conn, user) == 2


def test_the_end_of_a_users_job_announces_its_next_one(conn: Any, db_url: str) -> None:
    user = uuid.uuid4()
    first, second = user_jobs(conn, user, 2, priority=3)
    limit(conn, user, 1)
    set_clock(conn, T0)
    assert claimed_ids(conn, 2) == [first, None]
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN new_job")
        complete(conn, first)
        notes = [json.loads(n.payload) for n in listener.notifies(timeout=2, stop_after=1)]
    assert [n["job_id"] for n in notes] == [str(second)]
    assert claimed_ids(conn, 1) == [second]


def test_a_failure_a_release_and_a_cancel_free_the_users_place(conn: Any) -> None:
    user = uuid.uuid4()
    jobs = user_jobs(conn, user, 4)
    limit(conn, user, 1)
    set_clock(conn, T0)
    assert claimed_ids(conn, 1) == [jobs[0]]
    lease = job_row(conn, jobs[0])["lease_token"]
    assert scalar(conn, "SELECT fail_job(%s, 'boom', %s)", [jobs[0], lease]) is True
    assert waiting(conn, jobs[0], jobs[1]) == ["run_at", None]  # backing off: not running
    assert claimed_ids(conn, 2) == [jobs[1], None]
    lease = job_row(conn, jobs[1])["lease_token"]
    assert scalar(conn, "SELECT queue_release_job(%s, %s)", [jobs[1], lease]) is True
    assert claimed_ids(conn, 2) == [jobs[1], None]  # the release starts again first
    assert scalar(conn, "SELECT cancel_job(%s)", [jobs[2]]) is True  # a waiting one
    complete(conn, jobs[1])
    assert claimed_ids(conn, 2) == [jobs[3], None]


def test_a_limit_lowered_while_jobs_run_lets_none_start_until_fewer_run(conn: Any) -> None:
    user = uuid.uuid4()
    jobs = user_jobs(conn, user, 5)
    set_clock(conn, T0)
    assert claimed_ids(conn, 3) == jobs[:3]
    limit(conn, user, 1)
    assert waiting(conn, *jobs[3:]) == ["user", "user"]
    assert claimed_ids(conn, 1) == [None]
    complete(conn, jobs[0])
    complete(conn, jobs[1])
    assert claimed_ids(conn, 1) == [None], "started with two of the user's jobs still running"
    complete(conn, jobs[2])
    assert claimed_ids(conn, 2) == [jobs[3], None]
    limit(conn, user, None)  # cleared: no limit (none by default)
    assert claimed_ids(conn, 2) == [jobs[4], None]


def test_the_default_limit_holds_for_users_without_their_own(conn: Any) -> None:
    user, tier = uuid.uuid4(), uuid.uuid4()
    mine, theirs = user_jobs(conn, user, 3), user_jobs(conn, tier, 3)
    limit(conn, tier, 2)
    conn.execute("UPDATE queue_config SET user_max_concurrency = 1")
    set_clock(conn, T0)
    started = {row for row in claimed_ids(conn, 6) if row is not None}
    assert started == {mine[0], theirs[0], theirs[1]}
    conn.execute("UPDATE queue_config SET user_max_concurrency = NULL")
    assert set(claimed_ids(conn, 3)) == {mine[1], mine[2], None}


def test_sessions_with_no_user_have_no_limit(conn: Any) -> None:
    conn.execute("UPDATE queue_config SET user_max_concurrency = 1")
    jobs = user_jobs(conn, None, 3)
    set_clock(conn, T0)
    assert claimed_ids(conn, 4) == [*jobs, None]


def test_concurrent_claimers_never_exceed_a_users_limit(db_url: str, conn: Any) -> None:
    user = uuid.uuid4()
    jobs = user_jobs(conn, user, 40)
    limit(conn, user, 2)
    started: list[Any] = []
    for _ in range(3):
        with own_connections(db_url, 8) as conns:
            rounds = run_together(*[lambda c=c: claimed_ids(c, 3) for c in conns])
        now = [job for mine in rounds for job in mine if job is not None]
        assert 1 <= len(now) <= 2 and running(conn, user) == len(now), now
        # a claim that met the user's row busy passed over it: one more fills the place
        now += [job for job in claimed_ids(conn, 2) if job is not None]
        assert len(now) == 2 and running(conn, user) == 2, now
        started += now
        for job in now:
            complete(conn, job)
    assert len(set(started)) == 6 and set(started) <= set(jobs)  # each once; order: a race


# -- turns -----------------------------------------------------------------------------------


def test_users_take_turns_at_equal_priority(conn: Any) -> None:
    many, one = uuid.uuid4(), uuid.uuid4()
    twenty = user_jobs(conn, many, 20)
    single = user_jobs(conn, one, 1)
    set_clock(conn, T0)
    order = claimed_ids(conn, 3)
    assert order == [twenty[0], single[0], twenty[1]], "one prompt waited behind twenty"


def test_users_alternate_and_a_newcomer_goes_first(conn: Any) -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ours, theirs = user_jobs(conn, a, 3), user_jobs(conn, b, 3)
    set_clock(conn, T0)
    assert claimed_ids(conn, 3) == [ours[0], theirs[0], ours[1]]
    newcomer = user_jobs(conn, c, 1)
    assert claimed_ids(conn, 4) == [newcomer[0], theirs[1], ours[2], theirs[2]]


def test_sessions_with_no_user_take_their_turns_as_one_user(conn: Any) -> None:
    user = uuid.uuid4()
    backend = user_jobs(conn, None, 3)
    phone = user_jobs(conn, user, 2)
    set_clock(conn, T0)
    order = claimed_ids(conn, 6)
    assert order == [backend[0], phone[0], backend[1], phone[1], backend[2], None]


def test_priority_comes_before_turns(conn: Any) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    urgent = user_jobs(conn, a, 2, priority=5)
    calm = user_jobs(conn, b, 1)
    set_clock(conn, T0)
    assert claimed_ids(conn, 3) == [urgent[0], urgent[1], calm[0]]


def test_a_users_own_jobs_start_by_priority_then_submission(conn: Any) -> None:
    user = uuid.uuid4()
    low = user_jobs(conn, user, 1)
    limit(conn, user, 1)
    set_clock(conn, T0)
    assert claimed_ids(conn, 1) == low
    later_low, high = user_jobs(conn, user, 1), user_jobs(conn, user, 1, priority=9)
    complete(conn, low[0])
    assert claimed_ids(conn, 2) == [high[0], None]
    complete(conn, high[0])
    assert claimed_ids(conn, 1) == later_low


# -- never walked, never woken ------------------------------------------------------------------


def test_jobs_waiting_for_their_user_add_nothing_to_a_claim(conn: Any) -> None:
    busy, other = uuid.uuid4(), uuid.uuid4()
    set_clock(conn, T0)
    first = user_jobs(conn, busy, 1)
    limit(conn, busy, 1)
    assert claimed_ids(conn, 1) == first
    user_jobs(conn, other, 1)  # the job each measured claim takes (and gives back)
    alone = buffers(conn, "SELECT * FROM claim_next_job('w')", generic=True)
    sessions = [new_session(conn, user_id=busy) for _ in range(20)]
    conn.execute(
        "INSERT INTO coding_jobs (session_id, prompt) "
        "SELECT s, 'waits' FROM unnest(%s::uuid[]) AS s, generate_series(1, 100)",
        [sessions],
    )
    conn.execute("ANALYZE coding_jobs")
    assert scalar(conn, "SELECT count(*) FROM coding_jobs WHERE waiting_for = 'user'") == 20
    crowded = buffers(conn, "SELECT * FROM claim_next_job('w')", generic=True)
    assert crowded <= alone + 15, (alone, crowded)


def test_an_idle_worker_does_not_wake_for_a_user_at_its_limit(conn: Any) -> None:
    user = uuid.uuid4()
    jobs = user_jobs(conn, user, 3)
    limit(conn, user, 1)
    set_clock(conn, T0)
    assert claimed_ids(conn, 2) == [jobs[0], None]
    assert scalar(conn, "SELECT queue_next_run_at()") is None


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -1, 1001])
def test_a_limit_outside_1_to_1000_is_refused_and_changes_nothing(conn: Any, n: int) -> None:
    user = uuid.uuid4()
    user_jobs(conn, user, 1)
    limit(conn, user, 3)
    with pytest.raises(psycopg.errors.CheckViolation, match="1 to 1000"):
        limit(conn, user, n)
    assert scalar(conn, "SELECT max_concurrency FROM queue_user_limits") == 3


def test_a_limit_for_an_unknown_user_is_refused(conn: Any) -> None:
    with pytest.raises(psycopg.errors.NoDataFound, match="no session belongs to user"):
        limit(conn, uuid.uuid4(), 2)
    assert scalar(conn, "SELECT count(*) FROM queue_user_limits") == 0


def test_the_list_of_users_counts_their_jobs(conn: Any) -> None:
    user = uuid.uuid4()
    jobs = user_jobs(conn, user, 3)
    user_jobs(conn, None, 1)
    limit(conn, user, 1)
    set_clock(conn, T0)
    claimed_ids(conn, 1)
    assert jobs[0] in {job_row(conn, j)["id"] for j in jobs}
    rows = conn.execute(
        "SELECT user_id, max_concurrency, limit_source, running, ready, waiting "
        "FROM queue_user_list(true)"
    ).fetchall()
    assert rows == [(user, 1, "own", 1, 0, 2)]


def test_a_retry_that_comes_due_for_a_user_at_its_limit_waits_for_the_user(conn: Any) -> None:
    user = uuid.uuid4()
    retried, other = user_jobs(conn, user, 2)
    limit(conn, user, 1)
    set_clock(conn, T0)
    assert claimed_ids(conn, 1) == [retried]
    lease = job_row(conn, retried)["lease_token"]
    assert scalar(conn, "SELECT fail_job(%s, 'boom', %s)", [retried, lease]) is True
    assert claimed_ids(conn, 1) == [other]
    set_clock(conn, job_row(conn, retried)["run_at"])
    assert claimed_ids(conn, 1) == [None]  # due, but the user runs its limit
    assert waiting(conn, retried) == ["user"]
    complete(conn, other)
    assert claimed_ids(conn, 2) == [retried, None]


def test_a_sessions_user_cannot_change_while_it_has_unfinished_jobs(conn: Any) -> None:
    user, other = uuid.uuid4(), uuid.uuid4()
    session = new_session(conn, user_id=user)
    job = insert_job(conn, session)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="unfinished jobs"):
        conn.execute("UPDATE coding_sessions SET user_id = %s WHERE id = %s", [other, session])
    assert scalar(conn, "SELECT cancel_job(%s)", [job]) is True
    conn.execute("UPDATE coding_sessions SET user_id = %s WHERE id = %s", [other, session])
    assert job_row(conn, job)["user_key"] == other
