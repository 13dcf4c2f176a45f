"""The queue as a Hypothesis state machine: real PostgreSQL beside a pure-Python model.

Three workers (w1, w2, w3), an operator and a reaper each drive the SQL interface on
a connection of their own; every connection's queue_now() follows the model's clock,
and the backoff has no jitter, so every timestamp is compared exactly. Rules: enqueue
(priority 0..10, max_retries 1..4, run_at past/now/future, some plain INSERTs), claim,
heartbeat, complete, complete-and-claim, fail, release at shutdown, a worker dies,
operator complete/fail without a lease, advance the clock, reaper sweep, zombie writes
with stale leases, requeue from dead letters, prune.

Checked after every step (the database against the model):
  I1  the set of job ids equals the model's: none disappears except by prune, none
      appears unasked;
  I2  every job is in exactly one status, and each row equals the model: status,
      retry_count, attempt, run_at (exact: backoff = min(cap, base * 2^(n-1))),
      created_at, started_at, completed_at, heartbeat_at, lease_token, worker_id,
      end_reason, error_message, seq (a requeue draws a new one);
  I3  get_queue_stats() equals the model: the four counts, oldest_pending_age,
      waiting_retry_count, next_run_at; queue_next_run_at() too (the jobs waiting for
      their session left out);
  I4  0 <= retry_count <= max_retries; `failed` exactly when retry_count = max_retries
      (workers, operator or reaper exhausted the attempts), and then its session is
      failed; sessions' status and error_message equal the model's;
  I5  `processing` exactly when a lease and heartbeat are set; no two jobs share a
      live lease; at most one worker holds a live lease on a job.
Checked by the rules themselves:
  I6  a claim returns the model's job (due, allowed by the order rule of its session:
      no earlier unfinished job of it, then highest priority, then seq) with its
      attempt, retry_count, max_retries, priority, or none when none is due; nothing is
      claimed before its run_at; lease tokens never repeat;
  I7  a stale lease changes nothing: heartbeat false, fail NULL, release false,
      complete false (true only for the lease that completed the job: a retried
      commit), and the whole row, updated_at included, is byte-for-byte unchanged;
  I8  a reaper sweep returns exactly the jobs whose heartbeat is older than the
      timeout (the oldest ones when the batch is smaller), each with the model's
      will_retry; prune deletes exactly the jobs finished before the age, oldest first.
A companion test checks the backoff bounds with jitter: base*2^(n-1) .. *(1 + jitter).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.stateful.model import Job, Lease, Model
from tests.stateful.support import (
    BASE,
    CAP,
    LEASE,
    PROFILE,
    REAPER_MESSAGE,
    STATUSES,
    T0,
    Clocked,
    Row,
    backoff,
    check_queue_invariants,
    claim,
    full_row,
    insert_job,
    new_session,
    profile,
    reap,
    reset,
    scalar,
)

WORKERS = ("w1", "w2", "w3")
SESSIONS = 3
# Clock steps around the heartbeat timeout (10 s) and the backoff values (4, 8, 10 s).
CLOCK_STEPS = [0.5, 1, 3.999, 4, 6, 8, 9.999, 10, 10.001, 12, 30, 120]


@dataclass(frozen=True)
class Spec:
    """A job to enqueue: run_at = clock + delay, created_at = clock - age (or plain INSERT)."""

    priority: int
    max_retries: int
    delay: float
    age: float
    session: int
    plain: bool


specs = st.builds(
    Spec,
    priority=st.integers(0, 10),
    max_retries=st.integers(1, 4),
    delay=st.sampled_from([-30, -1, 0, 0, 0, 1, 4, 30]),
    age=st.sampled_from([0, 0, 0, 5]),
    session=st.integers(0, SESSIONS - 1),
    plain=st.sampled_from([False] * 7 + [True]),
)


class Db:
    """The machine's connections, opened once and kept across examples."""

    def __init__(self, url: str) -> None:
        self.conns = {name: Clocked(url, name) for name in (*WORKERS, "operator", "reaper")}
        self.examples = 0
        self.steps = 0

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()


class QueueMachine(RuleBasedStateMachine):
    jobs = Bundle("jobs")

    def __init__(self, db: Db) -> None:
        super().__init__()
        self.db = db
        db.examples += 1
        operator = db.conns["operator"].at(T0)
        reset(operator)
        self.session_ids = [new_session(operator) for _ in range(SESSIONS)]
        self.model = Model(SESSIONS)
        self.holding: dict[str, Lease | None] = dict.fromkeys(WORKERS)
        self.issued: list[Lease] = []

    def sql(self, who: str) -> Any:
        """`who`'s connection, its queue_now() at the model's clock."""
        return self.db.conns[who].at(self.model.clock)

    def busy_workers(self) -> list[str]:
        return [w for w in WORKERS if self.holding[w]]

    def idle_workers(self) -> list[str]:
        return [w for w in WORKERS if not self.holding[w]]

    def draw_busy(self, data: Any) -> tuple[str, Lease]:
        worker = data.draw(st.sampled_from(self.busy_workers()), label="worker")
        lease = self.holding[worker]
        assert lease is not None
        return worker, lease

    def dead_letters(self) -> list[int]:
        return [j.key for j in self.model.jobs.values() if j.status == "failed"]

    def stale_leases(self) -> list[Lease]:
        return [lease for lease in self.issued if not self.model.live(lease)]

    # --- enqueue ---------------------------------------------------------------------------

    def add(self, spec: Spec) -> int:
        clock = self.model.clock
        session_id = self.session_ids[spec.session]
        conn = self.sql("operator")
        if spec.plain:  # the way other MobVibe parts insert: both times are the real now()
            job_id, created_at, run_at = insert_job(
                conn, session_id, priority=spec.priority, max_retries=spec.max_retries
            )
            assert created_at == run_at < T0
        else:
            job_id, created_at, run_at = insert_job(
                conn,
                session_id,
                priority=spec.priority,
                max_retries=spec.max_retries,
                run_at=clock + timedelta(seconds=spec.delay),
                created_at=clock - timedelta(seconds=spec.age),
            )
        return self.model.enqueue(
            job_id, spec.session, spec.priority, spec.max_retries, created_at, run_at
        )

    @initialize(target=jobs, batch=st.lists(specs, max_size=8))
    def seed(self, batch: list[Spec]) -> Any:
        return multiple(*(self.add(spec) for spec in batch))

    @rule(target=jobs, batch=st.lists(specs, min_size=1, max_size=4))
    def enqueue(self, batch: list[Spec]) -> Any:
        return multiple(*(self.add(spec) for spec in batch))

    # --- workers ---------------------------------------------------------------------------

    def took(self, worker: str, expected: Job | None, row: Any) -> None:
        """Check a claim's result against the model's next due job, then record it (I6)."""
        if expected is None:
            assert row is None or row[0] is None, f"claimed {row[0]} but none was due"
            self.holding[worker] = None
            return
        assert row is not None and row[0] == expected.id, (
            f"claimed {row and row[0]}, expected job {expected.key} ({expected.id})"
        )
        assert expected.run_at <= self.model.clock, "claimed before its run_at"
        _job_id, session_id, _prompt, token, attempt, retry_count, max_retries, priority = row
        assert session_id == self.session_ids[expected.session]
        assert (attempt, retry_count, max_retries, priority) == (
            expected.attempt + 1,
            expected.retry_count,
            expected.max_retries,
            expected.priority,
        )
        assert all(lease.token != token for lease in self.issued), "a lease token came back"
        self.model.claim(expected, token, worker)
        lease = Lease(expected.key, token, worker)
        self.holding[worker] = lease
        self.issued.append(lease)

    @precondition(lambda self: self.idle_workers())
    @rule(data=st.data())
    def claim(self, data: Any) -> None:
        worker = data.draw(st.sampled_from(self.idle_workers()), label="worker")
        expected = self.model.next_due()
        self.took(worker, expected, claim(self.sql(worker), worker))

    @precondition(lambda self: self.busy_workers())
    @rule(data=st.data())
    def heartbeat(self, data: Any) -> None:
        worker, lease = self.draw_busy(data)
        expected = self.model.heartbeat(lease)
        got = scalar(
            self.sql(worker),
            "SELECT queue_heartbeat(%s, %s)",
            [self.model.ids[lease.job], lease.token],
        )
        assert got is expected
        if not got:  # lease lost: the worker stops the job
            self.holding[worker] = None

    @precondition(lambda self: self.busy_workers())
    @rule(data=st.data())
    def complete(self, data: Any) -> None:
        worker, lease = self.draw_busy(data)
        expected = self.model.complete(lease)
        got = scalar(
            self.sql(worker),
            "SELECT complete_job(%s, %s)",
            [self.model.ids[lease.job], lease.token],
        )
        assert got is expected
        self.holding[worker] = None

    @precondition(lambda self: self.busy_workers())
    @rule(data=st.data())
    def complete_and_claim(self, data: Any) -> None:
        worker, lease = self.draw_busy(data)
        expected = self.model.complete(lease)
        expected_next = self.model.next_due()
        row = (
            self.sql(worker)
            .execute(
                "SELECT * FROM queue_complete_and_claim(%s, %s, %s)",
                [self.model.ids[lease.job], lease.token, worker],
            )
            .fetchone()
        )
        assert row is not None and row[0] is expected
        self.took(worker, expected_next, row[1:])

    @precondition(lambda self: self.busy_workers())
    @rule(data=st.data(), reason=st.sampled_from(["error", "timeout", "crashed"]))
    def fail(self, data: Any, reason: str) -> None:
        worker, lease = self.draw_busy(data)
        message = f"{worker}: {reason}"
        expected = self.model.fail(lease, message, reason)
        got = scalar(
            self.sql(worker),
            "SELECT fail_job(%s, %s, %s, %s)",
            [self.model.ids[lease.job], message, lease.token, reason],
        )
        assert got is expected
        self.holding[worker] = None

    @precondition(lambda self: self.busy_workers())
    @rule(data=st.data())
    def release_at_shutdown(self, data: Any) -> None:
        worker, lease = self.draw_busy(data)
        expected = self.model.release(lease, "released at shutdown")
        got = scalar(
            self.sql(worker),
            "SELECT queue_release_job(%s, %s)",
            [self.model.ids[lease.job], lease.token],
        )
        assert got is expected
        self.holding[worker] = None

    @precondition(lambda self: self.busy_workers())
    @rule(data=st.data())
    def worker_dies(self, data: Any) -> None:
        """The process is gone: it forgets its lease, and some seconds of silence pass; the
        job goes stale once the clock passes the heartbeat timeout."""
        worker, _lease = self.draw_busy(data)
        silence = data.draw(st.sampled_from([0, 0, 10, 10.001, 30]), label="silence")
        self.holding[worker] = None
        self.model.clock += timedelta(seconds=silence)

    @precondition(lambda self: self.stale_leases())
    @rule(data=st.data(), op=st.sampled_from(["heartbeat", "complete", "fail", "release"]))
    def zombie_write(self, data: Any, op: str) -> None:
        """A write under a lease that is no longer live changes nothing (I7)."""
        lease = data.draw(st.sampled_from(self.stale_leases()), label="stale lease")
        job_id = self.model.ids[lease.job]
        conn = self.sql(lease.worker)
        before = full_row(self.sql("operator"), job_id)
        if op == "heartbeat":
            assert scalar(conn, "SELECT queue_heartbeat(%s, %s)", [job_id, lease.token]) is False
        elif op == "complete":
            expected = self.model.complete(lease)  # true only for a retried commit
            assert scalar(conn, "SELECT complete_job(%s, %s)", [job_id, lease.token]) is expected
        elif op == "fail":
            assert scalar(conn, "SELECT fail_job(%s, 'zombie', %s)", [job_id, lease.token]) is None
        else:
            assert scalar(conn, "SELECT queue_release_job(%s, %s)", [job_id, lease.token]) is False
        assert full_row(self.sql("operator"), job_id) == before

    # --- operator --------------------------------------------------------------------------

    @rule(job=jobs, action=st.sampled_from(["complete", "fail", "fail", "requeue"]))
    def operator(self, job: int, action: str) -> None:
        """An operator's call without a lease, on any job: pending, running, finished, pruned."""
        conn, job_id = self.sql("operator"), self.model.ids[job]
        if action == "complete":
            expected = self.model.operator_complete(job)
            assert scalar(conn, "SELECT complete_job(%s)", [job_id]) is expected
        elif action == "fail":
            message = f"operator: cancelled job {job}"
            expected = self.model.operator_fail(job, message)
            assert scalar(conn, "SELECT fail_job(%s, %s)", [job_id, message]) is expected
        else:
            expected = self.model.requeue(job)
            assert scalar(conn, "SELECT queue_requeue_failed(%s)", [job_id]) is expected

    @precondition(lambda self: self.dead_letters())
    @rule(data=st.data())
    def requeue_from_dead_letters(self, data: Any) -> None:
        job = data.draw(st.sampled_from(self.dead_letters()), label="dead letter")
        assert self.model.requeue(job) is True
        assert (
            scalar(self.sql("operator"), "SELECT queue_requeue_failed(%s)", [self.model.ids[job]])
            is True
        )

    @precondition(lambda self: any(j.completed_at for j in self.model.jobs.values()))
    @rule(
        status=st.sampled_from(["completed", "failed"]),
        age=st.sampled_from([1, 5, 60]),
        batch=st.sampled_from([1, 1000]),
    )
    def prune(self, status: str, age: int, batch: int) -> None:
        older_than = timedelta(seconds=age)
        candidates = self.model.prunable(status, older_than)
        conn = self.sql("operator")
        # The retention is the database's: configured first, as an operator does.
        conn.execute(
            "UPDATE queue_config SET retain_completed = %s, retain_failed = %s",
            [older_than, older_than],
        )
        deleted = scalar(conn, "SELECT queue_prune(%s, %s)", [status, batch])
        assert deleted == min(batch, len(candidates))
        remaining = {r[0] for r in conn.execute("SELECT id FROM coding_jobs").fetchall()}
        gone = [j for j in candidates if j.id not in remaining]
        assert len(gone) == deleted
        kept = [j.completed_at for j in candidates if j.id in remaining]
        assert all(j.completed_at <= k for j in gone for k in kept), "not the oldest first"
        self.model.prune(gone)

    # --- time and the reaper ---------------------------------------------------------------

    @rule(seconds=st.sampled_from(CLOCK_STEPS))
    def time_passes(self, seconds: float) -> None:
        self.model.clock += timedelta(seconds=seconds)

    @precondition(lambda self: any(j.status == "processing" for j in self.model.jobs.values()))
    @rule(batch=st.sampled_from([1, 100]))
    def reaper_sweep(self, batch: int) -> None:
        candidates = self.model.expired()
        got = reap(self.sql("reaper"), batch)
        ids = [job_id for job_id, _ in got]
        assert len(ids) == len(set(ids)) == min(batch, len(candidates))
        assert set(ids) <= {j.id for j in candidates}, "reaped a job with a fresh heartbeat"
        left = [j.heartbeat_at for j in candidates if j.id not in set(ids)]
        for job_id, will_retry in got:
            job = self.model.by_id(job_id)
            assert all(job.heartbeat_at <= other for other in left), "not the oldest first"
            assert will_retry is self.model.reaped(job, REAPER_MESSAGE)

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def database_equals_model(self) -> None:
        self.db.steps += 1
        conn = self.sql("operator")
        seen = check_queue_invariants(conn, {j.id for j in self.model.jobs.values()})  # I1 I4 I5
        for job in self.model.jobs.values():  # I2
            assert seen.rows[job.id] == self.expected_row(job), f"job {job.key} differs"
        assert seen.stats == self.expected_stats()  # I3
        assert seen.sessions == {
            self.session_ids[i]: (s.status, s.error_message)  # I4
            for i, s in enumerate(self.model.sessions)
        }
        live = [lease.job for lease in self.holding.values() if lease and self.model.live(lease)]
        assert len(live) == len(set(live)), "two workers hold a live lease on one job"

    def expected_row(self, job: Job) -> Row:
        return Row(
            job.id,
            job.seq,
            self.session_ids[job.session],
            job.priority,
            job.status,
            job.retry_count,
            job.max_retries,
            job.attempt,
            job.created_at,
            job.run_at,
            job.started_at,
            job.completed_at,
            job.heartbeat_at,
            job.worker_id,
            job.lease_token,
            job.end_reason,
            job.error_message,
        )

    def expected_stats(self) -> tuple[Any, ...]:
        clock = self.model.clock
        jobs = list(self.model.jobs.values())
        counts = [sum(j.status == s for j in jobs) for s in STATUSES]
        pending = [j for j in jobs if j.status == "pending"]
        waiting = [j.run_at for j in pending if j.run_at > clock]
        oldest = min((j.created_at for j in pending), default=None)
        return (
            *counts,
            None if oldest is None else clock - oldest,
            len(waiting),
            min(waiting, default=None),
            0,  # cancelled_count: the machine cancels nothing yet
            self.model.next_run_at(),
        )


# The long profile runs for many minutes: no per-test timeout then.
@pytest.mark.timeout(0 if PROFILE == "long" else 600)
def test_queue_machine(
    stateful_url: str, capsys: pytest.CaptureFixture[str], record_property: Any
) -> None:
    db = Db(stateful_url)
    started = time.monotonic()
    try:
        run_state_machine_as_test(lambda: QueueMachine(db), settings=profile())
    finally:
        db.close()
    elapsed = time.monotonic() - started
    steps = db.steps - db.examples  # the invariant also runs once before the first step
    summary = f"queue machine [{PROFILE}]: {db.examples} examples, {steps} steps, {elapsed:.1f} s"
    record_property("queue_machine", summary)
    with capsys.disabled():
        print(f"\n{summary}")


@pytest.mark.parametrize("lease_ended_by", ["release", "reaper", "operator"])
def test_a_lease_is_not_told_it_completed_a_job_that_someone_else_completed(
    stateful_url: str, lease_ended_by: str
) -> None:
    """The machine's shrunk failure: claim; the lease ends (released at shutdown, reaped, or
    overruled while running); an operator completes the job; the old lease's complete_job
    answered true ("a retried commit") and its worker counted a completion it never made."""
    conn = Clocked(stateful_url, "regression")
    try:
        op = conn.at(T0)
        reset(op)
        job_id, _, _ = insert_job(op, new_session(op), run_at=T0, created_at=T0)
        token = claim(op, "w1")[3]
        if lease_ended_by == "release":
            assert scalar(op, "SELECT queue_release_job(%s, %s)", [job_id, token]) is True
        elif lease_ended_by == "reaper":
            assert reap(conn.at(T0 + LEASE + timedelta(seconds=1))) == [(job_id, True)]
        assert scalar(op, "SELECT complete_job(%s)", [job_id]) is True
        before = full_row(op, job_id)
        assert scalar(op, "SELECT complete_job(%s, %s)", [job_id, token]) is False
        assert full_row(op, job_id) == before
    finally:
        conn.close()


def test_backoff_with_jitter_stays_within_its_bounds(stateful_url: str) -> None:
    """With jitter j, retry n waits between min(cap, base*2^(n-1)) and that times (1 + j)."""
    jitter = 0.25
    operator = Clocked(stateful_url, "backoff")
    try:
        conn = operator.at(T0)
        reset(conn, jitter=jitter)
        session = new_session(conn)
        delays: dict[int, list[timedelta]] = {}
        for _ in range(20):
            job_id, _, _ = insert_job(conn, session, max_retries=6, run_at=T0, created_at=T0)
            for failures in range(1, 6):
                assert scalar(conn, "SELECT fail_job(%s, 'boom')", [job_id]) is True
                run_at = scalar(conn, "SELECT run_at FROM coding_jobs WHERE id = %s", [job_id])
                delays.setdefault(failures, []).append(run_at - T0)
        for failures, seen in delays.items():
            low = backoff(failures)
            assert all(low <= d <= low * (1 + jitter) for d in seen), (failures, seen)
            assert len(set(seen)) > 1, "no jitter applied"
        assert backoff(1) == BASE and backoff(5) == CAP
    finally:
        operator.close()
