"""Races that really run at once: threads on connections of their own, released together by
a barrier, each scenario repeated over many small Hypothesis-drawn cases (with a drawn
pause of a few hundred microseconds to spread the interleavings).

Per scenario:
  - 8 workers claiming together (each job in a session of its own): no job is claimed
    twice; nothing before its run_at; the claimed jobs are exactly the first ones of the
    due jobs in (priority DESC, seq) order, as many as there were claims or due jobs;
    each worker's claims follow that order (SKIP LOCKED only skips rows that another
    claim is taking);
  - a claim racing a reaper sweep (and the holder's own heartbeat) on an expired job:
    exactly one of the sweep and the heartbeat wins, the expired attempt is counted
    once, and the claim gets the job only after the sweep requeued it;
  - a late complete racing the sweep, requeue and re-claim: exactly one is accepted,
    never both; the loser changes nothing; at most one terminal transition;
  - 2 and 5 reapers sweeping the same expired jobs: each expired job is swept exactly
    once, by one reaper, with retry_count 1; jobs with a fresh heartbeat are untouched;
  - concurrent fail_job of one job: without a lease every failure counts (until the
    job is dead-lettered, by exactly one of them); with the one lease exactly one counts;
  - complete racing the heartbeat-expiry sweep: exactly one wins per job.
After every case (check_queue_invariants): no job lost or appeared; one known status
each; 0 <= retry_count <= max_retries; failed exactly when retry_count = max_retries,
and then the session is failed; processing exactly with a lease and a heartbeat; no
shared live lease; get_queue_stats() counts equal a direct count. The job_status_changed
notifications count the terminal transitions.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from mobvibe.sql import store
from mobvibe.sql.jobs import NewJob
from tests.stateful.support import (
    BASE,
    CAP,
    LEASE,
    REAPER_MESSAGE,
    T0,
    Clocked,
    check_queue_invariants,
    interleaving_settings,
    reap,
    reset,
    snapshot,
)
from tests.support.rows import claim, end_attempt, insert_job, new_session, scalar
from tests.support.threads import run_together

LATE = T0 + LEASE + timedelta(seconds=1)  # every heartbeat from T0 has expired
LATER = LATE + CAP + timedelta(seconds=1)  # every retry requeued at LATE is due
pauses = st.integers(0, 400)  # microseconds before a thread makes its call
END_REASONS = ["cancelled", "completed", "released", "error", "worker_exited"]


def pause(micros: int) -> None:
    if micros:
        time.sleep(micros / 1e6)


class Rig:
    """The connections of the scenarios, kept for the whole module: 8 workers, 5 reapers,
    an operator and a listener of job_status_changed."""

    def __init__(self, url: str) -> None:
        self.workers = [Clocked(url, f"w{i}") for i in range(8)]
        self.reapers = [Clocked(url, f"r{i}") for i in range(5)]
        self.operator = Clocked(url, "operator")
        self.listener = psycopg.connect(url, autocommit=True)
        self.changes: list[dict[str, Any]] = []
        self.cancels: list[dict[str, Any]] = []  # job_cancel: a supervisor told to stop
        self.listener.execute("LISTEN job_status_changed")
        self.listener.execute("LISTEN job_cancel")

    def fresh(self) -> uuid.UUID:
        """Empty queue, no pending notifications; a new session."""
        conn = self.operator.at(T0)
        reset(conn)
        self.heard()
        self.changes.clear()
        self.cancels.clear()
        return new_session(conn)

    def heard(self) -> list[dict[str, Any]]:
        """The status changes committed so far (and the job_cancel notifications)."""
        self.listener.execute("SELECT 1")  # collects those that arrived into the backlog
        for n in self.listener.notifies(timeout=0.01):
            heard = self.cancels if n.channel == "job_cancel" else self.changes
            heard.append(json.loads(n.payload))
        return self.changes

    def terminal(self, job_id: Any) -> Counter[str]:
        """How many times the job entered completed, failed and cancelled."""
        return Counter(
            c["new_status"]
            for c in self.heard()
            if c["job_id"] == str(job_id)
            and c["new_status"] in ("completed", "failed", "cancelled")
        )

    def told_to_cancel(self, job_id: Any) -> int:
        """How many job_cancel notifications named the job."""
        self.heard()
        return sum(c["job_id"] == str(job_id) for c in self.cancels)

    def close(self) -> None:
        for conn in (*self.workers, *self.reapers, self.operator):
            conn.close()
        self.listener.close()


@pytest.fixture(scope="module")
def rig(stateful_url: str) -> Iterator[Rig]:
    made = Rig(stateful_url)
    yield made
    made.close()


def claimed_by(rig: Rig, index: int, at: datetime) -> tuple[Any, Any]:
    """Worker `index` claims at `at`: (job_id, lease_token), or (None, None)."""
    row = claim(rig.workers[index].at(at), f"w{index}")
    return (None, None) if row is None else (row["job_id"], row["lease_token"])


# --- 8 workers claim at once ----------------------------------------------------------------

job_specs = st.lists(
    st.tuples(st.integers(0, 10), st.booleans(), st.integers(0, 3)), min_size=1, max_size=24
)


@interleaving_settings()
@given(specs=job_specs, rounds=st.integers(1, 3), waits=st.lists(pauses, min_size=8, max_size=8))
def test_eight_workers_claiming_at_once_take_each_due_job_once_in_priority_order(
    rig: Rig, specs: list[tuple[int, bool, int]], rounds: int, waits: list[int]
) -> None:
    rig.fresh()
    op = rig.operator.at(T0)
    order: dict[Any, tuple[int, int]] = {}  # due jobs: their claim order key
    ids = set()
    for seq, (priority, due, age) in enumerate(specs):
        created_at = T0 - timedelta(seconds=age)  # breaks no tie: seq does
        job_id = insert_job(
            op,
            new_session(op),  # every job may start at once
            priority=priority,
            created_at=created_at,
            run_at=T0 if due else T0 + timedelta(hours=1),
        )
        ids.add(job_id)
        if due:
            order[job_id] = (-priority, seq)
    ranked = sorted(order, key=order.__getitem__)
    position = {job_id: i for i, job_id in enumerate(ranked)}

    def worker(index: int) -> list[Any]:
        conn = rig.workers[index].at(T0)
        pause(waits[index])
        got = []
        for _ in range(rounds):
            row = claim(conn, f"w{index}")
            if row is not None:
                got.append(row["job_id"])
        return got

    results = run_together(*(lambda i=i: worker(i) for i in range(8)))
    claimed = [job_id for got in results for job_id in got]
    event(f"workers that claimed nothing: {sum(not got for got in results)}")
    assert len(claimed) == len(set(claimed)), "a job was claimed twice"
    assert set(claimed) <= set(order), "a job was claimed before its run_at"
    expected = ranked[: min(8 * rounds, len(ranked))]
    assert set(claimed) == set(expected), "the claimed jobs are not the first in priority order"
    for got in results:
        assert [position[j] for j in got] == sorted(position[j] for j in got)
    rows = check_queue_invariants(op, ids).rows
    holder = {job_id: f"w{index}" for index, got in enumerate(results) for job_id in got}
    for job_id, row in rows.items():
        assert (row.status, row.worker_id) == (
            ("processing", holder[job_id]) if job_id in holder else ("pending", None)
        )


def run_all(worker: Any, count: int) -> list[Any]:
    return run_together(*(lambda i=i: worker(i) for i in range(count)))


# --- a claim racing a reaper sweep ----------------------------------------------------------


@interleaving_settings()
@given(
    max_retries=st.integers(1, 3),
    with_heartbeat=st.booleans(),
    waits=st.lists(pauses, min_size=3, max_size=3),
)
def test_a_claim_racing_a_reaper_sweep_ends_in_one_outcome_counted_once(
    rig: Rig, max_retries: int, with_heartbeat: bool, waits: list[int]
) -> None:
    session = rig.fresh()
    op = rig.operator.at(T0)
    job = insert_job(op, session, max_retries=max_retries, run_at=T0, created_at=T0)
    _, token = claimed_by(rig, 0, T0)
    reaper, claimer, holder = (
        rig.reapers[0].at(LATE),
        rig.workers[1].at(LATER),
        rig.workers[0].at(LATE),
    )

    calls = [
        lambda: (pause(waits[0]), reap(reaper))[1],
        lambda: (pause(waits[1]), claim(claimer, "w1"))[1],
    ]
    if with_heartbeat:
        calls.append(
            lambda: (
                pause(waits[2]),
                scalar(holder, "SELECT queue_heartbeat(%s, %s)", [job, token]),
            )[1]
        )
    swept, claimed, *beat = run_together(*calls)
    beat_won = bool(beat and beat[0])

    reaped = [will_retry for job_id, will_retry in swept if job_id == job]
    assert len(reaped) == int(not beat_won), "exactly one of the sweep and the heartbeat wins"
    row = check_queue_invariants(op, {job}).rows[job]
    event(
        "heartbeat won"
        if beat_won
        else "swept, then claimed"
        if claimed
        else "swept, claim found nothing"
    )
    if beat_won:
        assert claimed is None
        assert (row.status, row.retry_count, row.attempt, row.lease_token, row.heartbeat_at) == (
            "processing",
            0,
            1,
            token,
            LATE,
        )
        return
    assert reaped == [max_retries > 1]
    assert row.retry_count == 1, "the expired attempt was not counted exactly once"
    if claimed is not None:  # the claim came after the sweep's commit
        assert max_retries > 1 and claimed["job_id"] == job
        assert (row.status, row.attempt, row.lease_token, row.worker_id) == (
            "processing",
            2,
            claimed["lease_token"],
            "w1",
        )
    elif max_retries > 1:
        assert (row.status, row.run_at) == ("pending", LATE + BASE)
    else:
        assert row.status == "failed"


# --- a late complete racing the requeue and a re-claim -------------------------------------


@interleaving_settings()
@given(max_retries=st.integers(1, 2), wait=st.integers(0, 3000))
def test_a_late_complete_racing_requeue_and_reclaim_is_never_both_accepted(
    rig: Rig, max_retries: int, wait: int
) -> None:
    session = rig.fresh()
    op = rig.operator.at(T0)
    job = insert_job(op, session, max_retries=max_retries, run_at=T0, created_at=T0)
    _, token = claimed_by(rig, 0, T0)
    holder = rig.workers[0].at(LATE)
    reaper, operator = rig.reapers[0].at(LATE), rig.operator.at(LATE)

    def requeue_and_reclaim() -> tuple[list[Any], tuple[Any, Any]]:
        swept = reap(reaper)
        if swept and max_retries == 1:  # dead-lettered: the operator brings it back
            assert scalar(operator, "SELECT queue_requeue_failed(%s)", [job]) is True
        # Poll like a worker: the late complete, even when rejected, holds the row's lock
        # for the length of its statement (UPDATE locks the new version before it
        # rechecks), and a claim skips locked rows.
        for _ in range(200):
            got = claimed_by(rig, 1, LATER)
            if got[0] is not None or not swept:
                return swept, got
            time.sleep(0.001)
        return swept, got

    def late_complete() -> bool:
        pause(wait)
        return bool(scalar(holder, "SELECT complete_job(%s, %s)", [job, token]))

    (swept, (reclaimed, new_token)), completed = run_together(requeue_and_reclaim, late_complete)
    reaped = any(job_id == job for job_id, _ in swept)
    assert completed != reaped, "the late complete and the requeue were both (or neither) accepted"
    row = check_queue_invariants(rig.operator.at(LATE), {job}).rows[job]
    terminal = rig.terminal(job)
    event("late complete won" if completed else "requeue and re-claim won")
    if completed:
        assert reclaimed is None
        assert (row.status, row.retry_count, row.lease_token) == ("completed", 0, token)
        assert terminal == Counter(completed=1)
    else:
        assert reclaimed == job and new_token != token
        assert (row.status, row.attempt, row.lease_token) == ("processing", 2, new_token)
        assert row.retry_count == (1 if max_retries > 1 else 0)  # requeue resets the count
        assert terminal == (Counter(failed=1) if max_retries == 1 else Counter())
    before = snapshot(op)[job]
    # the holder retries its commit: accepted again only if its completion was the one
    assert bool(scalar(holder, "SELECT complete_job(%s, %s)", [job, token])) is completed
    assert snapshot(op)[job] == before


# --- several reapers sweep the same expired jobs --------------------------------------------


@pytest.mark.parametrize("reapers", [2, 5])
@interleaving_settings()
@given(
    expired=st.integers(1, 20),
    fresh=st.integers(0, 4),
    batch=st.sampled_from([1, 3, 100]),
    max_retries=st.integers(1, 3),
    owners=st.lists(st.integers(0, 3), min_size=24, max_size=24),
    waits=st.lists(pauses, min_size=5, max_size=5),
)
def test_reapers_sweeping_the_same_expired_jobs_count_each_once(
    rig: Rig,
    reapers: int,
    expired: int,
    fresh: int,
    batch: int,
    max_retries: int,
    owners: list[int],
    waits: list[int],
) -> None:
    # Jobs of up to four sessions (each running many prompts at once), claimed one
    # millisecond apart: the reapers contend for the sessions, which each takes SKIP
    # LOCKED, and for the jobs.
    rig.fresh()
    sessions = [new_session(rig.operator.at(T0), max_concurrency=100) for _ in range(4)]
    op = rig.operator.at(T0)
    for index in range(expired + fresh):
        insert_job(op, sessions[owners[index]], max_retries=max_retries, run_at=T0, created_at=T0)
    leases = [claimed_by(rig, 0, T0 + timedelta(milliseconds=k)) for k in range(expired + fresh)]
    holder = rig.workers[0].at(T0 + timedelta(seconds=5))  # still fresh at LATE
    for job_id, token in leases[expired:]:
        assert scalar(holder, "SELECT queue_heartbeat(%s, %s)", [job_id, token]) is True
    stale = {job_id for job_id, _ in leases[:expired]}

    def sweep_until_empty(index: int) -> list[tuple[Any, bool | None]]:
        conn = rig.reapers[index].at(LATE)
        pause(waits[index])
        seen: list[tuple[Any, bool | None]] = []
        while swept := reap(conn, batch):
            seen.extend(swept)
        return seen

    results = run_together(*(lambda i=i: sweep_until_empty(i) for i in range(reapers)))
    swept_ids = [job_id for seen in results for job_id, _ in seen]
    event(f"reapers that swept something: {sum(bool(seen) for seen in results)}/{reapers}")
    assert len(swept_ids) == len(set(swept_ids)), "a job was swept twice"
    assert set(swept_ids) == stale, "the sweeps missed an expired job or took a fresh one"
    assert all(will_retry is (max_retries > 1) for seen in results for _, will_retry in seen)
    rows = check_queue_invariants(op, {job_id for job_id, _ in leases}).rows
    for job_id, token in leases:
        row = rows[job_id]
        if job_id in stale:
            assert row.retry_count == 1
            assert row.status == ("pending" if max_retries > 1 else "failed")
        else:
            assert (row.status, row.retry_count, row.lease_token) == ("processing", 0, token)


# --- concurrent failures of one job ---------------------------------------------------------


@interleaving_settings()
@given(
    threads=st.integers(2, 8),
    max_retries=st.integers(1, 10),
    fenced=st.booleans(),
    running=st.booleans(),
    waits=st.lists(pauses, min_size=8, max_size=8),
)
def test_concurrent_failures_of_one_job_are_each_counted(
    rig: Rig, threads: int, max_retries: int, fenced: bool, running: bool, waits: list[int]
) -> None:
    session = rig.fresh()
    op = rig.operator.at(T0)
    job = insert_job(op, session, max_retries=max_retries, run_at=T0, created_at=T0)
    token = claimed_by(rig, 0, T0)[1] if fenced or running else None

    def fail(index: int) -> bool | None:
        conn = rig.workers[index].at(T0)
        pause(waits[index])
        # the worker's call carries the lease; the operator's (the plan's) has none
        answer: bool | None = (
            scalar(conn, "SELECT fail_job(%s, %s, %s)", [job, f"error {index}", token])
            if fenced
            else scalar(conn, "SELECT fail_job(%s, %s)", [job, f"error {index}"])
        )
        return answer

    answers = run_together(*(lambda i=i: fail(i) for i in range(threads)))
    counted = [a for a in answers if a is not None]
    event("dead-lettered" if False in counted else "still retrying")
    row = check_queue_invariants(op, {job}).rows[job]
    expected = 1 if fenced else min(threads, max_retries)
    assert len(counted) == row.retry_count == expected, f"answers {answers}, row {row}"
    assert counted.count(False) == int(row.retry_count == max_retries)
    assert rig.terminal(job) == (Counter(failed=1) if row.status == "failed" else Counter())


# --- complete racing the heartbeat-expiry sweep ---------------------------------------------


@interleaving_settings()
@given(
    jobs=st.integers(1, 4),
    max_retries=st.integers(1, 3),
    waits=st.lists(pauses, min_size=5, max_size=5),
)
def test_complete_racing_the_expiry_sweep_has_exactly_one_winner(
    rig: Rig, jobs: int, max_retries: int, waits: list[int]
) -> None:
    session = rig.fresh()
    op = rig.operator.at(T0)
    op.execute("UPDATE coding_sessions SET max_concurrency = 4 WHERE id = %s", [session])
    for _ in range(jobs):
        insert_job(op, session, max_retries=max_retries, run_at=T0, created_at=T0)
    leases = [claimed_by(rig, i, T0) for i in range(jobs)]

    def complete(index: int) -> bool:
        job_id, token = leases[index]
        conn = rig.workers[index].at(LATE)
        pause(waits[index])
        return bool(scalar(conn, "SELECT complete_job(%s, %s)", [job_id, token]))

    def sweep() -> list[tuple[Any, bool | None]]:
        pause(waits[4])
        return reap(rig.reapers[0].at(LATE))

    *completed, swept = run_together(*(lambda i=i: complete(i) for i in range(jobs)), sweep)
    reaped = {job_id for job_id, _ in swept}
    rows = check_queue_invariants(op, {job_id for job_id, _ in leases}).rows
    event(f"completes won: {sum(completed)}/{jobs}")
    for (job_id, _), won in zip(leases, completed, strict=True):
        assert won != (job_id in reaped), "the complete and the sweep both (or neither) won"
        row = rows[job_id]
        if won:
            assert (row.status, row.retry_count) == ("completed", 0)
            assert rig.terminal(job_id) == Counter(completed=1)
        else:
            assert row.retry_count == 1
            assert row.status == ("pending" if max_retries > 1 else "failed")
            assert rig.terminal(job_id) == (Counter(failed=1) if max_retries == 1 else Counter())


# --- cancel racing the end of an attempt ----------------------------------------------------


def attempt_rows(conn: psycopg.Connection[Any], job_id: Any) -> list[tuple[Any, ...]]:
    """The job's coding_job_attempts rows: (attempt, worker_id, end_reason, error_message)."""
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT attempt, worker_id, end_reason, error_message FROM coding_job_attempts"
            " WHERE job_id = %s ORDER BY attempt",
            [job_id],
        ).fetchall()
    ]


@interleaving_settings()
@given(
    end=st.sampled_from(["complete", "fail"]),
    max_retries=st.integers(1, 2),
    waits=st.lists(pauses, min_size=2, max_size=2),
)
def test_cancel_racing_complete_or_fail_a_completion_stands_an_accepted_cancel_is_never_retried(
    rig: Rig, end: str, max_retries: int, waits: list[int]
) -> None:
    """The phone cancels a running prompt while its worker ends the attempt. A completion
    always stands (the work was done; the cancel is true only if it came first and marked
    the job). A failure: the cancel came first (the attempt ends cancelled, not counted,
    not retried), or came second and cancelled the pending retry, or found the job dead-
    lettered (false). Whenever the cancel answered true the job ends cancelled and its
    session is not failed. Either way one terminal transition, the attempt's row closed
    with the worker's own end, and the session's next prompt is the next claim's."""
    session = rig.fresh()
    op = rig.operator.at(T0)
    job = insert_job(op, session, max_retries=max_retries, run_at=T0, created_at=T0)
    following = insert_job(op, session, run_at=T0, created_at=T0)
    claimed, token = claimed_by(rig, 0, T0)
    assert claimed == job
    holder, phone = rig.workers[0].at(T0), rig.workers[1].at(T0)

    def finish() -> Any:
        pause(waits[0])
        if end == "complete":
            return scalar(holder, "SELECT complete_job(%s, %s)", [job, token])
        return scalar(holder, "SELECT queue_end_attempt(%s, %s, 'error', 'boom')", [job, token])

    def cancel() -> bool:
        pause(waits[1])
        return bool(scalar(phone, "SELECT cancel_job(%s)", [job]))

    ended, cancelled = run_together(finish, cancel)
    seen = check_queue_invariants(op, {job, following})
    row = seen.rows[job]
    marked = row.cancel_requested_at is not None  # the cancel came while it ran
    event(
        f"{end}: " + ("cancel first" if marked else "cancel second" if cancelled else "no cancel")
    )
    assert cancelled is (marked or (end == "fail" and row.status == "cancelled"))
    assert rig.told_to_cancel(job) == int(marked)
    if end == "complete":
        assert ended is True and row.status == "completed"
        assert attempt_rows(op, job) == [(1, "w0", "completed", None)]
    else:
        assert attempt_rows(op, job) == [(1, "w0", "error", "boom")]
        if marked:  # the failure of a cancel-requested attempt ends it cancelled
            assert (ended, row.status, row.retry_count) == ("cancelled", "cancelled", 0)
        elif cancelled:  # failed first, retry pending: the cancel ended it at once
            assert (ended, row.status, row.retry_count, max_retries) == (
                "pending",
                "cancelled",
                1,
                2,
            )
        else:  # the last attempt failed first: nothing left to cancel
            assert (ended, row.status, max_retries) == ("failed", "failed", 1)
    if cancelled:
        assert row.status == "cancelled" or (end == "complete" and marked)
        assert seen.sessions[session][0] == "active", "a cancel failed its session"
    assert rig.terminal(job) == Counter({row.status: 1})
    assert claimed_by(rig, 2, T0 + CAP)[0] == following, "the ended job still holds its place"


# --- cancel racing the reaper ---------------------------------------------------------------


@interleaving_settings()
@given(max_retries=st.integers(1, 2), waits=st.lists(pauses, min_size=2, max_size=2))
def test_cancel_racing_the_expiry_sweep_reaps_once_and_an_accepted_cancel_is_never_retried(
    rig: Rig, max_retries: int, waits: list[int]
) -> None:
    """A worker went silent; the phone cancels its prompt as the reaper sweeps it. The sweep
    ends the attempt exactly once ('heartbeat_expired' on its row). Cancel first: the
    sweep ends it cancelled (will_retry false, not counted). Sweep first: a retry left is
    pending and the cancel ends it at once; the last attempt is a dead letter, and the
    cancel answers false. A true cancel always leaves the job cancelled, its session not
    failed."""
    session = rig.fresh()
    op = rig.operator.at(T0)
    job = insert_job(op, session, max_retries=max_retries, run_at=T0, created_at=T0)
    assert claimed_by(rig, 0, T0)[0] == job  # then the worker dies
    reaper, phone = rig.reapers[0].at(LATE), rig.workers[1].at(LATE)

    def sweep() -> list[tuple[Any, ...]]:
        pause(waits[0])
        rows = reaper.execute(
            "SELECT job_id, will_retry, new_status FROM queue_reap_expired(100)"
        ).fetchall()
        return [tuple(r) for r in rows]

    def cancel() -> bool:
        pause(waits[1])
        return bool(scalar(phone, "SELECT cancel_job(%s)", [job]))

    swept, cancelled = run_together(sweep, cancel)
    seen = check_queue_invariants(op, {job})
    row = seen.rows[job]
    marked = row.cancel_requested_at is not None
    event("cancel first" if marked else "sweep first")
    assert len(swept) == 1, f"the attempt was not swept exactly once: {swept}"
    (_, will_retry, new_status) = swept[0]
    assert attempt_rows(op, job) == [(1, "w0", "heartbeat_expired", REAPER_MESSAGE)]
    assert rig.told_to_cancel(job) == int(marked)
    if marked:
        assert (will_retry, new_status, cancelled) == (False, "cancelled", True)
        assert (row.status, row.retry_count, row.end_reason) == ("cancelled", 0, "cancelled")
    elif max_retries > 1:
        assert (will_retry, new_status, cancelled) == (True, "pending", True)
        assert (row.status, row.retry_count) == ("cancelled", 1)
    else:
        assert (will_retry, new_status, cancelled) == (False, "failed", False)
        assert row.status == "failed" and seen.sessions[session][0] == "failed"
    if cancelled:
        assert seen.sessions[session][0] == "active", "a cancel failed its session"
    assert rig.terminal(job) == Counter({row.status: 1})


# --- cancel racing a claim ------------------------------------------------------------------


@interleaving_settings()
@given(waits=st.lists(pauses, min_size=2, max_size=2), end=st.sampled_from(END_REASONS))
def test_cancel_racing_a_claim_never_hands_out_a_cancelled_job_and_a_claimed_one_holds_its_place(
    rig: Rig, waits: list[int], end: str
) -> None:
    """The phone cancels a due prompt as a worker claims. The cancel always answers true.
    Cancel first: the job is cancelled without an attempt, and the claim gets nothing or
    the session's next prompt (promoted by the cancel). Claim first: the worker holds the
    job, marked, told by job_cancel and by its renewal; the next prompt waits until that
    attempt has ended (however it ends: cancelled unless it completes)."""
    session = rig.fresh()
    op = rig.operator.at(T0)
    job = insert_job(op, session, priority=5, run_at=T0, created_at=T0)
    following = insert_job(op, session, run_at=T0, created_at=T0)
    claimer, phone = rig.workers[0].at(T0), rig.workers[1].at(T0)

    def take() -> Any:
        pause(waits[0])
        return claim(claimer, "w0")

    def cancel() -> bool:
        pause(waits[1])
        return bool(scalar(phone, "SELECT cancel_job(%s)", [job]))

    got, cancelled = run_together(take, cancel)
    assert cancelled is True
    seen = check_queue_invariants(op, {job, following})
    row = seen.rows[job]
    taken = None if got is None else got["job_id"]
    event("claim first" if taken == job else f"cancel first, claimed {taken == following}")
    if taken != job:
        assert (row.status, row.attempt, row.cancel_requested_at) == ("cancelled", 0, None)
        assert attempt_rows(op, job) == []
        assert rig.told_to_cancel(job) == 0
        if taken is None:
            assert claimed_by(rig, 2, T0)[0] == following
        return
    token = got["lease_token"]
    assert (row.status, row.lease_token, row.cancel_requested_at) == ("processing", token, T0)
    assert rig.told_to_cancel(job) == 1
    renewal = claimer.execute(
        "SELECT renewed, cancel_requested FROM queue_renew_leases(%s, %s)", [[job], [token]]
    ).fetchone()
    assert renewal == (True, True)
    assert claimed_by(rig, 2, T0) == (None, None), "the next prompt overtook a running one"
    outcome = scalar(claimer, "SELECT queue_end_attempt(%s, %s, %s)", [job, token, end])
    assert outcome == ("completed" if end == "completed" else "cancelled")
    failure = end not in ("cancelled", "completed", "released")
    assert attempt_rows(op, job) == [(1, "w0", end, end if failure else None)]
    assert claimed_by(rig, 2, T0)[0] == following
    assert check_queue_invariants(op, {job, following}).sessions[session][0] == "active"


# --- two identical submits ------------------------------------------------------------------


@interleaving_settings()
@given(
    raw=st.lists(st.booleans(), min_size=2, max_size=4),
    waits=st.lists(pauses, min_size=4, max_size=4),
)
def test_identical_submits_at_once_make_one_row_and_every_client_gets_its_id(
    rig: Rig, raw: list[bool], waits: list[int]
) -> None:
    """Two to four connections submit the same session and idempotency key at the same
    instant, through the client's enqueue or a raw INSERT. One row is made; every
    client's enqueue answers with its id; of the raw INSERTs, all but (at most) the one
    that made the row fail with unique_violation; the row is a plain first prompt."""
    session = rig.fresh()
    op = rig.operator.at(T0)

    def submit(index: int) -> tuple[str, Any]:
        conn = rig.workers[index].at(T0)
        pause(waits[index])
        if raw[index]:
            try:
                return "inserted", insert_job(conn, session, idempotency_key="tap")
            except psycopg.errors.UniqueViolation:
                return "refused", None
        new = NewJob(prompt="double tap", session_id=session, idempotency_key="tap")
        return "client", store.enqueue(conn, new.validated())

    results = run_all(submit, len(raw))
    ids = {job_id for _, job_id in results if job_id is not None}
    assert len(ids) == 1, f"one key, several jobs: {results}"
    (job,) = ids
    outcomes = Counter(kind for kind, _ in results)
    event(
        f"{len(raw)} submits, the row made by "
        + ("a raw INSERT" if outcomes["inserted"] else "the client")
    )
    assert outcomes["inserted"] <= 1 and outcomes["inserted"] + outcomes["refused"] == sum(raw)
    if outcomes["client"] == 0:
        assert outcomes["inserted"] == 1, "every raw INSERT was refused: no row"
    seen = check_queue_invariants(op, {job})
    row = seen.rows[job]
    assert (row.status, row.idempotency_key, row.session_id) == ("pending", "tap", session)
    assert claimed_by(rig, 0, T0 + timedelta(seconds=1))[0] == job


# --- users: limits and turns ----------------------------------------------------------------


def set_limit(conn: psycopg.Connection[Any], user: Any, limit: int | None) -> None:
    """An operator's limit for `user` (its row of queue_user_limits), or none (None)."""
    conn.execute("SELECT queue_set_user_limit(%s, %s)", [user, limit])


def user_jobs(conn: psycopg.Connection[Any], user: Any, count: int, **columns: Any) -> list[Any]:
    """`count` due jobs of `user`, each in a session of its own (a prompt per session)."""
    return [
        insert_job(conn, new_session(conn, user_id=user), run_at=T0, created_at=T0, **columns)
        for _ in range(count)
    ]


def running_of(rows: dict[Any, Any], jobs: list[Any]) -> int:
    return sum(rows[job].status == "processing" for job in jobs)


@interleaving_settings()
@given(
    limit=st.integers(1, 3),
    mine=st.integers(1, 10),
    others=st.integers(0, 6),
    by_default=st.booleans(),
    rounds=st.integers(1, 2),
    waits=st.lists(pauses, min_size=8, max_size=8),
)
def test_concurrent_claimers_of_one_limited_user_never_exceed_its_limit(
    rig: Rig,
    limit: int,
    mine: int,
    others: int,
    by_default: bool,
    rounds: int,
    waits: list[int],
) -> None:
    """8 workers claim at once; one user's prompts, in sessions of their own, may run
    `limit` at a time (its row of queue_user_limits, or queue_config's default), beside
    prompts of another user with a row above anything that runs and of no user. No job is
    claimed twice and the user never has more than its limit running; the others are
    not held back by it: once the claims are over, claims one after another take every
    other job, and none of the limited user's beyond its limit."""
    rig.fresh()
    op = rig.operator.at(T0)
    user, other = uuid.uuid4(), uuid.uuid4()
    limited = user_jobs(op, user, mine)
    if by_default:
        op.execute("UPDATE queue_config SET user_max_concurrency = %s", [limit])
    else:
        set_limit(op, user, limit)
    free = user_jobs(op, other, others)
    if free:
        set_limit(op, other, 1000)
    free += [insert_job(op, new_session(op), run_at=T0, created_at=T0) for _ in range(others)]

    def worker(index: int) -> list[Any]:
        conn = rig.workers[index].at(T0)
        pause(waits[index])
        return [row["job_id"] for _ in range(rounds) if (row := claim(conn, f"w{index}"))]

    claimed = [job for got in run_all(worker, 8) for job in got]
    assert len(claimed) == len(set(claimed)), "a job was claimed twice"
    ids = set(limited) | set(free)
    rows = check_queue_invariants(op, ids).rows
    assert running_of(rows, limited) <= limit, "the user's limit was exceeded"
    event(f"claims of the limited user: {running_of(rows, limited)} of limit {limit}")
    while (row := claim(rig.workers[0].at(T0), "w0")) is not None:
        claimed.append(row["job_id"])
    rows = check_queue_invariants(op, ids).rows
    assert running_of(rows, limited) == min(limit, mine), "the user's next prompt starved"
    assert running_of(rows, free) == len(free), "another user's prompt was held back"


LIMIT_CHANGES = ["row", "row", "delete", "default"]  # what the operator changes


@interleaving_settings()
@given(
    before=st.integers(1, 3),
    after=st.integers(1, 3),
    running=st.integers(0, 3),
    change=st.sampled_from(LIMIT_CHANGES),
    waits=st.lists(pauses, min_size=2, max_size=2),
)
def test_a_claim_racing_a_change_of_the_users_limit_obeys_the_limit_before_or_after(
    rig: Rig, before: int, after: int, running: int, change: str, waits: list[int]
) -> None:
    """A user runs `running` prompts (at most `before`, its limit) and has more waiting; a
    worker claims as an operator changes the limit: its row set to `after`, or deleted
    with queue_config's default `after` (or none) in force, or the default changed to
    `after` with no row. The claim starts the user's next prompt only if the limit
    before or after the change has room for it (or passes over the user while the change
    holds it); then a claim starts it exactly when the new limit has room (raised: the
    waiting prompt is not forgotten; lowered: no start beyond it)."""
    running = min(running, before)
    rig.fresh()
    op = rig.operator.at(T0)
    user = uuid.uuid4()
    default = after if change == "delete" and after != before else None
    op.execute("UPDATE queue_config SET user_max_concurrency = %s", [default])
    jobs = user_jobs(op, user, running + 2)
    if change == "default":
        op.execute("UPDATE queue_config SET user_max_concurrency = %s", [before])
    else:
        set_limit(op, user, before)
    for index in range(running):
        assert claimed_by(rig, index + 2, T0)[0] == jobs[index]
    new_limit = None if change == "delete" and default is None else after
    operator = rig.reapers[0].at(T0)

    def set_new() -> None:
        pause(waits[0])
        if change == "default":
            operator.execute("UPDATE queue_config SET user_max_concurrency = %s", [after])
        elif change == "delete":
            set_limit(operator, user, None)
        else:
            set_limit(operator, user, after)

    def take() -> Any:
        pause(waits[1])
        return claimed_by(rig, 0, T0)[0]

    _, got = run_together(set_new, take)
    allowed = running < before or new_limit is None or running < new_limit
    assert got in (None, jobs[running])
    assert got is None or allowed, f"claimed {got} with {running} running"
    # A claim that meets the user's row locked by the change passes over the user: the
    # change announces the prompt it lets start (new_job), and the claim below takes it.
    event(f"{change}: {'claimed' if got else 'passed over' if allowed else 'nothing'}")
    now_running = running + (got is not None)
    lowered = [user] if new_limit is not None and new_limit < now_running else []
    check_queue_invariants(op, set(jobs), lowered_users=lowered)
    room = new_limit is None or now_running < new_limit
    again = claimed_by(rig, 1, T0)[0]
    assert (again is not None) == room, f"limit {new_limit}, {now_running} running: {again}"


@interleaving_settings()
@given(
    end=st.sampled_from(["complete", "fail", "release", "cancel"]),
    waits=st.lists(pauses, min_size=2, max_size=2),
)
def test_the_end_of_a_users_prompt_racing_a_claim_lets_its_next_prompt_start(
    rig: Rig, end: str, waits: list[int]
) -> None:
    """A user limited to one prompt at a time runs one and has a second waiting (in
    another session); its worker ends the attempt as another worker claims. The claim
    gets the second prompt or nothing; either way the user never runs two, and a claim
    after the end takes the second prompt (or, after a release, one of the two)."""
    rig.fresh()
    op = rig.operator.at(T0)
    user = uuid.uuid4()
    first, second = user_jobs(op, user, 2, max_retries=3)
    set_limit(op, user, 1)
    job, token = claimed_by(rig, 0, T0)
    assert job == first
    holder = rig.workers[0].at(T0)

    def finish() -> None:
        pause(waits[0])
        if end == "complete":
            assert scalar(holder, "SELECT complete_job(%s, %s)", [first, token]) is True
        elif end == "fail":
            assert scalar(holder, "SELECT fail_job(%s, 'boom', %s)", [first, token]) is True
        elif end == "release":
            assert scalar(holder, "SELECT queue_release_job(%s, %s)", [first, token]) is True
        else:
            assert scalar(holder, "SELECT cancel_job(%s)", [first]) is True
            assert end_attempt(holder, first, token, "cancelled") == "cancelled"

    def take() -> Any:
        pause(waits[1])
        return claimed_by(rig, 1, T0)[0]

    _, got = run_together(finish, take)
    assert got in (None, second) or (end == "release" and got == first), got
    event(f"{end}: {'claimed at once' if got else 'claimed after'}")
    rows = check_queue_invariants(op, {first, second}).rows
    assert running_of(rows, [first, second]) == int(got is not None)
    if got is None:
        got = claimed_by(rig, 2, T0)[0]
        assert got == second or (end == "release" and got == first), "the next prompt starved"
    assert claimed_by(rig, 3, T0)[0] is None, "the user's limit of one was exceeded"
