"""A session's prompts start in submission order, at most max_concurrency at once.

A job may start only when fewer than max_concurrency unfinished (pending or
processing) jobs of its session were submitted before it; a retry keeps its place;
the end of a job promotes the next and announces it on new_job; a requeued job goes
to the back. Jobs that wait are never claimed, never walked, and never wake a worker.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from tests.support.rows import claim, insert_job, job_row, new_session, scalar
from tests.support.sqlclock import T0, set_clock


def lease_of(conn: Any, job: Any) -> Any:
    return job_row(conn, job)["lease_token"]


def waiting(conn: Any, *jobs: Any) -> list[str | None]:
    return [job_row(conn, job)["waiting_for"] for job in jobs]


def complete(conn: Any, job: Any) -> None:
    assert scalar(conn, "SELECT complete_job(%s, %s)", [job, lease_of(conn, job)]) is True


def processing(conn: Any) -> int:
    return int(scalar(conn, "SELECT count(*) FROM coding_jobs WHERE status = 'processing'"))


# -- in order, one at a time -----------------------------------------------------------------


def test_a_sessions_prompts_start_one_at_a_time_in_submission_order(conn: Any) -> None:
    session = new_session(conn)
    # priorities do not reorder a session: submission order does
    first, second, third = (insert_job(conn, session, priority=p) for p in (0, 10, 5))
    set_clock(conn, T0)
    assert waiting(conn, first, second, third) == [None, "session", "session"]
    for job in (first, second, third):
        got = claim(conn)
        assert got is not None and got["job_id"] == job
        assert claim(conn) is None, "a second prompt of the session started"
        complete(conn, job)
    assert claim(conn) is None


def test_among_sessions_the_order_is_priority_then_submission(conn: Any) -> None:
    low, high, other = new_session(conn), new_session(conn), new_session(conn)
    a = insert_job(conn, low, priority=1)
    insert_job(conn, low, priority=10)  # behind a: waits, its priority notwithstanding
    b = insert_job(conn, high, priority=5)
    c = insert_job(conn, other, priority=1)
    set_clock(conn, T0)
    assert [claim(conn)["job_id"] for _ in range(3)] == [b, a, c]  # type: ignore[index]
    assert claim(conn) is None


def test_never_more_than_max_concurrency_of_a_session_run_at_once(conn: Any) -> None:
    session = new_session(conn, max_concurrency=3)
    jobs = [insert_job(conn, session) for _ in range(7)]
    set_clock(conn, T0)
    assert waiting(conn, *jobs) == [None] * 3 + ["session"] * 4
    started = [claim(conn)["job_id"] for _ in range(3)]  # type: ignore[index]
    assert started == jobs[:3] and claim(conn) is None
    complete(conn, jobs[1])  # the middle one ends: the fourth may start
    assert claim(conn)["job_id"] == jobs[3]  # type: ignore[index]
    assert claim(conn) is None and processing(conn) == 3


def test_the_end_of_a_job_announces_the_next_prompt_on_new_job(conn: Any, db_url: str) -> None:
    session = new_session(conn)
    first, second = insert_job(conn, session, priority=3), insert_job(conn, session, priority=3)
    set_clock(conn, T0)
    claimed = claim(conn)
    assert claimed is not None and claimed["job_id"] == first
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN new_job")
        complete(conn, first)
        notes = [json.loads(n.payload) for n in listener.notifies(timeout=2, stop_after=1)]
    assert notes == [{"job_id": str(second), "session_id": str(session), "priority": 3}]
    assert waiting(conn, second) == [None]


def test_a_prompt_behind_its_session_whose_run_at_is_later_waits_for_it_once_promoted(
    conn: Any,
) -> None:
    session = new_session(conn)
    set_clock(conn, T0)  # a run_at is at most a year ahead of the queue's clock
    first = insert_job(conn, session)
    later = insert_job(conn, session, run_at=T0 + timedelta(minutes=5))
    claim(conn)
    complete(conn, first)
    assert waiting(conn, later) == ["run_at"]
    assert claim(conn) is None
    set_clock(conn, T0 + timedelta(minutes=5))
    got = claim(conn)
    assert got is not None and got["job_id"] == later


# -- retries keep their place ----------------------------------------------------------------


def test_a_retry_keeps_its_place_and_the_sessions_later_prompts_wait_behind_it(
    conn: Any,
) -> None:
    session, elsewhere = new_session(conn), new_session(conn)
    first, second = insert_job(conn, session), insert_job(conn, session)
    set_clock(conn, T0)
    claimed = claim(conn)
    assert claimed is not None
    assert scalar(conn, "SELECT fail_job(%s, 'boom', %s)", [first, claimed["lease_token"]])
    assert waiting(conn, first, second) == ["run_at", "session"]
    other = insert_job(conn, elsewhere)
    assert claim(conn)["job_id"] == other  # type: ignore[index]
    assert claim(conn) is None, "the retry's session started its next prompt"
    set_clock(conn, job_row(conn, first)["run_at"])
    assert claim(conn)["job_id"] == first  # type: ignore[index]
    complete(conn, first)
    assert claim(conn)["job_id"] == second  # type: ignore[index]


def test_a_dead_letter_frees_its_place(conn: Any) -> None:
    session = new_session(conn)
    doomed, next_one = insert_job(conn, session, max_retries=1), insert_job(conn, session)
    set_clock(conn, T0)
    lease = claim(conn)["lease_token"]  # type: ignore[index]
    assert scalar(conn, "SELECT fail_job(%s, 'boom', %s)", [doomed, lease]) is False
    assert claim(conn)["job_id"] == next_one  # type: ignore[index]


def test_a_released_job_keeps_its_place_and_starts_again_first(conn: Any) -> None:
    session = new_session(conn)
    first, second = insert_job(conn, session), insert_job(conn, session)
    set_clock(conn, T0)
    lease = claim(conn)["lease_token"]  # type: ignore[index]
    assert scalar(conn, "SELECT queue_release_job(%s, %s)", [first, lease]) is True
    assert waiting(conn, first, second) == [None, "session"]
    assert claim(conn)["job_id"] == first  # type: ignore[index]


def test_blocked_and_backed_off_jobs_are_never_claimed(conn: Any) -> None:
    sessions = [new_session(conn) for _ in range(3)]
    set_clock(conn, T0)
    heads = [insert_job(conn, s) for s in sessions]
    behind = [insert_job(conn, s, priority=10) for s in sessions for _ in range(5)]
    for head in heads:
        lease = claim(conn)["lease_token"]  # type: ignore[index]
        assert scalar(conn, "SELECT fail_job(%s, 'boom', %s)", [head, lease]) is True
    for step in range(9):  # up to just before the backoff (10 s, jitter 25 %)
        set_clock(conn, T0 + timedelta(seconds=step))
        assert claim(conn) is None
    assert all(job_row(conn, job)["status"] == "pending" for job in behind)


# -- queue_next_run_at -------------------------------------------------------------------------


def test_next_run_at_ignores_jobs_waiting_for_their_session(conn: Any) -> None:
    session = new_session(conn)
    set_clock(conn, T0)
    head = insert_job(conn, session, run_at=T0 + timedelta(hours=1))
    insert_job(conn, session)  # due now, but behind the head
    assert waiting(conn, head) == ["run_at"]
    assert scalar(conn, "SELECT queue_next_run_at()") == T0 + timedelta(hours=1)
    insert_job(conn, new_session(conn), run_at=T0 + timedelta(minutes=1))
    assert scalar(conn, "SELECT queue_next_run_at()") == T0 + timedelta(minutes=1)


def test_next_run_at_is_null_when_every_pending_job_waits_for_its_session(conn: Any) -> None:
    session = new_session(conn)
    set_clock(conn, T0)
    insert_job(conn, session)
    insert_job(conn, session)
    claim(conn)
    assert scalar(conn, "SELECT queue_next_run_at()") is None


# -- queue_due_jobs ------------------------------------------------------------------------------


def test_due_jobs_counts_the_jobs_that_could_start_now_up_to_the_limit(conn: Any) -> None:
    set_clock(conn, T0)
    session = new_session(conn)
    insert_job(conn, session)  # ready
    insert_job(conn, session)  # behind it in its session: not counted
    later = insert_job(conn, new_session(conn), run_at=T0 + timedelta(minutes=1))
    insert_job(conn, new_session(conn))  # ready
    assert waiting(conn, later) == ["run_at"]
    assert scalar(conn, "SELECT queue_due_jobs(10)") == 2
    assert scalar(conn, "SELECT queue_due_jobs(1)") == 1
    assert scalar(conn, "SELECT queue_due_jobs(0)") == 0
    set_clock(conn, T0 + timedelta(minutes=2))  # the head whose run_at came due: a claim takes it
    assert scalar(conn, "SELECT queue_due_jobs(10)") == 3


# -- max_concurrency changed ---------------------------------------------------------------------


def test_raising_max_concurrency_lets_the_waiting_prompts_start_and_announces_them(
    conn: Any, db_url: str
) -> None:
    session = new_session(conn)
    jobs = [insert_job(conn, session) for _ in range(4)]
    set_clock(conn, T0)
    claim(conn)
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN new_job")
        conn.execute("UPDATE coding_sessions SET max_concurrency = 3 WHERE id = %s", [session])
        notes = [
            json.loads(n.payload)["job_id"] for n in listener.notifies(timeout=2, stop_after=2)
        ]
    assert sorted(notes) == sorted([str(jobs[1]), str(jobs[2])])
    assert waiting(conn, *jobs[1:]) == [None, None, "session"]
    assert [claim(conn)["job_id"] for _ in range(2)] == jobs[1:3]  # type: ignore[index]
    assert claim(conn) is None


def test_lowering_max_concurrency_holds_back_prompts_that_had_not_started(conn: Any) -> None:
    session = new_session(conn, max_concurrency=3)
    jobs = [insert_job(conn, session) for _ in range(4)]
    set_clock(conn, T0)
    claim(conn)
    conn.execute("UPDATE coding_sessions SET max_concurrency = 1 WHERE id = %s", [session])
    assert waiting(conn, *jobs[1:]) == ["session"] * 3
    assert claim(conn) is None
    complete(conn, jobs[0])
    assert waiting(conn, *jobs[1:]) == [None, "session", "session"]


def test_lowering_it_below_the_running_count_starts_nothing_until_enough_have_ended(
    conn: Any,
) -> None:
    session = new_session(conn, max_concurrency=2)
    jobs = [insert_job(conn, session) for _ in range(3)]
    set_clock(conn, T0)
    claim(conn), claim(conn)
    conn.execute("UPDATE coding_sessions SET max_concurrency = 1 WHERE id = %s", [session])
    complete(conn, jobs[1])  # one of the two still runs: the third must wait
    assert claim(conn) is None
    complete(conn, jobs[0])
    assert claim(conn)["job_id"] == jobs[2]  # type: ignore[index]


@pytest.mark.parametrize("value", [0, 101, -1])
def test_max_concurrency_out_of_range_is_refused(conn: Any, value: int) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        new_session(conn, max_concurrency=value)
    assert refused.value.diag.constraint_name == "coding_sessions_max_concurrency_check"
    session = new_session(conn)
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "UPDATE coding_sessions SET max_concurrency = %s WHERE id = %s", [value, session]
        )


# -- requeued and retried jobs go to the back ------------------------------------------------------


def dead_letter(conn: Any, job: Any) -> None:
    lease = claim(conn)["lease_token"]  # type: ignore[index]
    assert scalar(conn, "SELECT fail_job(%s, 'boom', %s)", [job, lease]) is False


def test_a_requeued_dead_letter_goes_to_the_back_of_its_session(conn: Any) -> None:
    session = new_session(conn)
    first, second = insert_job(conn, session, max_retries=1), insert_job(conn, session)
    set_clock(conn, T0)
    dead_letter(conn, first)
    running = claim(conn)
    assert running is not None and running["job_id"] == second
    seq_before = job_row(conn, first)["seq"]
    assert scalar(conn, "SELECT queue_requeue_failed(%s)", [first]) is True
    row = job_row(conn, first)
    assert row["seq"] > job_row(conn, second)["seq"] > seq_before
    assert (row["status"], row["waiting_for"]) == ("pending", "session")
    assert claim(conn) is None, "the requeued job overtook the running one"
    complete(conn, second)
    assert claim(conn)["job_id"] == first  # type: ignore[index]


def test_retry_job_submits_a_failed_or_cancelled_job_again_at_the_back(conn: Any) -> None:
    session = new_session(conn)
    failed, cancelled, last = (insert_job(conn, session, max_retries=1) for _ in range(3))
    set_clock(conn, T0)
    dead_letter(conn, failed)
    assert scalar(conn, "SELECT cancel_job(%s)", [cancelled]) is True
    assert scalar(conn, "SELECT queue_retry_job(%s)", [failed]) is True
    assert scalar(conn, "SELECT queue_retry_job(%s)", [cancelled]) is True
    order = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM coding_jobs WHERE status = 'pending' ORDER BY seq"
        ).fetchall()
    ]
    assert order == [last, failed, cancelled]
    assert waiting(conn, last, failed, cancelled) == [None, "session", "session"]
    row = job_row(conn, failed)
    assert (row["retry_count"], row["end_reason"], row["run_at"]) == (
        0,
        "retried by an operator",
        T0,
    )
    assert conn.execute("SELECT status FROM coding_sessions").fetchone() == ("active",)


def test_retry_job_refuses_a_job_that_is_not_failed_or_cancelled(conn: Any) -> None:
    done = insert_job(conn, new_session(conn))
    set_clock(conn, T0)
    claim(conn)
    complete(conn, done)
    session = new_session(conn)
    running, pending = insert_job(conn, session), insert_job(conn, session)
    claim(conn)
    for job in (pending, running, done, uuid.uuid4()):
        assert scalar(conn, "SELECT queue_retry_job(%s)", [job]) is False


# -- placement under concurrency -------------------------------------------------------------------


def test_prompts_submitted_at_once_from_many_connections_still_start_one_at_a_time(
    conn: Any, db_url: str
) -> None:
    """Each insert locks its session; whichever commits first is first, even when it
    drew the higher seq before it had the lock."""
    session = new_session(conn)
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as own:
                start.wait(10)
                for _ in range(5):
                    insert_job(own, session)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    rows = conn.execute(
        "SELECT id, waiting_for FROM coding_jobs WHERE session_id = %s ORDER BY seq", [session]
    ).fetchall()
    assert [w for _, w in rows] == [None] + ["session"] * 29
    set_clock(conn, T0)
    for job, _ in rows:
        got = claim(conn)
        assert got is not None and got["job_id"] == job
        assert claim(conn) is None
        complete(conn, job)


# -- the claim stays cheap ------------------------------------------------------------------------


def test_the_claim_reads_a_handful_of_buffers_whatever_waits(conn: Any) -> None:
    """3,000 pending jobs, 99 % of them behind their session or backed off: the claim's
    walk touches the ready ones only (the index holds no others)."""
    conn.execute("""
        WITH s AS (INSERT INTO coding_sessions (id) SELECT gen_random_uuid()
                   FROM generate_series(1, 30) RETURNING id)
        INSERT INTO coding_jobs (session_id, prompt, priority)
        SELECT s.id, 'p', 10 FROM s, generate_series(1, 99)""")
    conn.execute("UPDATE coding_jobs SET run_at = now() + interval '1 day'")  # none is due
    conn.execute(
        "UPDATE coding_jobs SET waiting_for = 'run_at' WHERE waiting_for IS NULL"
    )  # the heads: backed off
    conn.execute(
        "INSERT INTO coding_sessions (id) SELECT gen_random_uuid() FROM generate_series(1, 30)"
    )
    conn.execute(
        "INSERT INTO coding_jobs (session_id, prompt, priority) "
        "SELECT id, 'ready', 0 FROM coding_sessions s "
        "WHERE NOT EXISTS (SELECT 1 FROM coding_jobs j WHERE j.session_id = s.id)"
    )
    conn.execute("VACUUM ANALYZE coding_jobs")
    set_clock(conn, None)  # the real clock: the ready jobs are due, the others are not
    for _ in range(2):  # the first call compiles and plans the function's statements
        with conn.transaction(force_rollback=True):
            explained = scalar(
                conn,
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM claim_next_job('probe')",
            )
    # the buffers of the function's own statements count in its scan node
    plan = (json.loads(explained) if isinstance(explained, str) else explained)[0]["Plan"]
    buffers = plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
    assert buffers < 100, plan  # ~50; a walk over the waiting jobs: thousands
    got = claim(conn)
    assert got is not None and got["prompt"] == "ready"
