"""The queue as a Hypothesis state machine: real PostgreSQL beside a pure-Python model.

Three workers (w1, w2, w3), an operator and a reaper each drive the SQL interface on
a connection of their own; every connection's queue_now() follows the model's clock,
and the backoff has no jitter, so every timestamp is compared exactly.

Four sessions, each created with a max_concurrency drawn from 1, 1, 2, 3 and owned by
one of two users or by none (drawn: a user often owns two sessions or more), and
queue_config.user_max_concurrency drawn from none, 1, 2. Rules:
enqueue (priority 0..10, half of them 0 so that turns decide, max_retries 1..4, run_at
past/now/future, some plain INSERTs,
some with an idempotency key: a raw INSERT of a key its session has is refused, the
client's enqueue answers with the first job's id), a double tap (the same key twice in
a row), an operator changing a session's max_concurrency (up or down), an operator
setting, changing or clearing a user's own limit (queue_set_user_limit) or changing
queue_config.user_max_concurrency (up, down, cleared) while jobs run, claim, heartbeat
(one worker's, or a pod's queue_renew_leases of every held lease, which also says
whether a cancel was asked), complete, complete-and-claim, fail, release at shutdown,
queue_end_attempt / queue_end_and_claim with every kind of end, a worker dies, the
phone's cancel_job of any job (or queue_cancel_session), a cancel of a running job, a
worker that obeys a cancel (ends the attempt 'cancelled'), operator complete/fail
without a lease, requeue from dead letters, an operator's retry of a failed or
cancelled job (queue_retry_job), advance the clock, reaper sweep, zombie writes with
stale leases (a cancelled attempt's late writes among them), prune (completed, failed,
cancelled).

The model follows the session order rule exactly (model.py): a job may start only when
fewer than max_concurrency unfinished jobs of its session were submitted before it; a
retry keeps its place, an operator's requeue or retry goes to the back; a job being
cancelled holds its place until its attempt ends. And the users' rules (model.py): a job
of a user may start only while fewer than the user's limit of the user's jobs are
processing; among the jobs that may start, priority, then the user whose most recent
start is the oldest (none first; the sessions with no user are one user), then seq.
A cancel-requested attempt that fails, is released, expires or is failed by an operator
ends cancelled (not counted, not retried, its session not failed); one that completes
ends completed.

Checked after every step (the database against the model):
  I1  the set of job ids equals the model's: none disappears except by prune, none
      appears unasked;
  I2  every job is in exactly one status, and each row equals the model: status,
      retry_count, attempt, run_at (exact: backoff = min(cap, base * 2^(n-1))),
      created_at, started_at, completed_at, heartbeat_at, lease_token, worker_id,
      end_reason, error_message, cancel_requested_at, idempotency_key, seq (a requeue
      or retry draws a new one, and so does every INSERT, a refused one too);
  I3  get_queue_stats() equals the model: the five counts (cancelled_count too),
      oldest_pending_age (since the job came due), waiting_retry_count (jobs attempted
      before), next_run_at; queue_next_run_at(): not in the future when a job may
      start now, else the earliest run_at of a job that its session lets start (the
      jobs waiting for their session left out); early (not in the future) only while
      a due job waits for its user and no claim has met it since: never right after a
      claim that found nothing (an idle worker does not spin);
  I4  0 <= retry_count <= max_retries; `failed` exactly when retry_count = max_retries
      (workers, operator or reaper exhausted the attempts), and then its session is
      failed; sessions' status, error_message and max_concurrency equal the model's;
  I5  `processing` exactly when a lease and heartbeat are set; no two jobs share a
      live lease; at most one worker holds a live lease on a job;
  I9  never more than max_concurrency processing jobs per session; precisely: the k-th
      running job of a session in submission order was claimed while max_concurrency
      was at least k (after a lowering, the running jobs are not stopped, and a job
      that had started before may start again: the rule counts only those ahead);
  I10 a cancelled job never changes again (never claimed, retried by the queue,
      completed or failed: its row stays as the cancel left it) until an operator's
      retry or prune; a step that cancelled a job left its session as it was (unless
      a job of that session was dead-lettered in the same step);
  I11 one row per (session, idempotency key), and the key of each row is the model's;
  I12 coding_job_attempts equals the attempts made: a row per claim (1..attempt), open
      exactly while the job is processing under its latest attempt, closed with the
      model's ended_at, end_reason (completed, released, cancelled, error,
      heartbeat_expired, deadline_exceeded, ...: what happened to the attempt, also
      when the job ended cancelled) and error_message ('completed by an operator' for
      an operator's completion);
  I13 a user's limit is never exceeded by a start. What the contract implies, and what
      is checked: a user's processing jobs number at most its limit, unless the limit
      was lowered while more ran (they are never stopped); precisely, the k-th of a
      user's running jobs in the order they started was started while the user's
      limit was at least k, so after a lowering the running jobs only dwindle until
      they are under the limit, and none of the user's jobs starts meanwhile.
      queue_user_limits and queue_config.user_max_concurrency equal the model's.
Checked by the rules themselves:
  I6  a claim returns the model's job (due, allowed by the order rule of its session and
      by its user's limit, then highest priority, then the user whose most recent start
      is the oldest, then seq) with its attempt, retry_count, max_retries,
      priority, or none when none is due; nothing is claimed before its run_at; lease
      tokens never repeat; an end's answer (complete_job, fail_job, queue_end_attempt,
      cancel_job, queue_retry_job, ...) is the model's;
  I7  a stale lease changes nothing: heartbeat false, fail NULL, release false,
      queue_end_attempt NULL, complete false (true only for the lease that completed
      the job: a retried commit), and the whole row, updated_at included, is
      byte-for-byte unchanged;
  I8  a reaper sweep returns exactly the jobs whose heartbeat is older than the
      timeout (the oldest ones when the batch is smaller), each with the model's
      will_retry; prune deletes exactly the jobs finished before the age, oldest first;
  I14 nothing starves: a claim finds a job whenever one may start (I6), the start's
      user had fewer than its limit running, and users take turns: while a user has a
      job that may start at the highest priority among those that may start, no other
      user starts twice at that priority.
The summary line counts what the examples exercised (the ends of cancel-requested
attempts by path, double taps, sessions running several jobs at once, ...).
A companion test checks the backoff bounds with jitter: base*2^(n-1) .. *(1 + jitter).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import psycopg
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

from mobvibe.sql import store
from mobvibe.sql.jobs import NewJob
from tests.stateful.model import Job, Lease, Model, Session
from tests.stateful.support import (
    BASE,
    CAP,
    LEASE,
    PROFILE,
    REAPER_MESSAGE,
    STATUSES,
    T0,
    AttemptTuple,
    Clocked,
    Observed,
    Row,
    backoff,
    check_queue_invariants,
    full_row,
    insert_timed_job,
    profile,
    reap,
    reset,
)
from tests.support.rows import claim, insert_job, named_row, new_session, scalar

WORKERS = ("w1", "w2", "w3")
SESSIONS = 4
CONCURRENCY = [1, 1, 2, 3]  # each session's max_concurrency, drawn at the start
USERS = 2
OWNERS = [None, 0, 1]  # each session's user, drawn at the start (None: no user)
USER_LIMITS = [1, 2, 3]  # a row of queue_user_limits, or queue_config's default
# Clock steps around the heartbeat timeout (10 s) and the backoff values (4, 8, 10 s).
CLOCK_STEPS = [0.5, 1, 3.999, 4, 6, 8, 9.999, 10, 10.001, 12, 30, 120]
TAP_KEYS = ["tap-1", "tap-2"]  # a few keys, so that they repeat within a session
# How a worker ends an attempt with queue_end_attempt: each kind of end, several failures.
END_REASONS = [
    "cancelled",
    "completed",
    "released",
    "error",
    "deadline_exceeded",
    "worker_exited",
    "lease_lost",
]


@dataclass(frozen=True)
class Spec:
    """A job to enqueue: run_at = clock + delay, created_at = clock - age (or plain INSERT).

    With an idempotency key: `plain` is a raw INSERT (a key its session has: unique
    violation), otherwise the client's enqueue (a key its session has: that job's id)."""

    priority: int
    max_retries: int
    delay: float
    age: float
    session: int
    plain: bool
    key: str | None


specs = st.builds(
    Spec,
    priority=st.one_of(st.just(0), st.integers(0, 10)),
    max_retries=st.integers(1, 4),
    delay=st.sampled_from([-30, -1, 0, 0, 0, 1, 4, 30]),
    age=st.sampled_from([0, 0, 0, 5]),
    session=st.integers(0, SESSIONS - 1),
    plain=st.sampled_from([False] * 7 + [True]),
    key=st.sampled_from([None] * 10 + TAP_KEYS),
)


class Db:
    """The machine's connections, opened once and kept across examples, and what the
    examples exercised (printed with the summary)."""

    def __init__(self, url: str) -> None:
        self.conns = {name: Clocked(url, name) for name in (*WORKERS, "operator", "reaper")}
        self.examples = 0
        self.steps = 0
        self.seen: Counter[str] = Counter()

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()


class QueueMachine(RuleBasedStateMachine):
    jobs = Bundle("jobs")

    def __init__(self, db: Db) -> None:
        super().__init__()
        self.db = db
        db.examples += 1
        reset(db.conns["operator"].at(T0))
        self.model = Model()
        self.session_ids: list[Any] = []  # made by the seed
        self.user_ids = [uuid.uuid4() for _ in range(USERS)]
        # I14: by user, the users that started since its own last start, at the priority
        # of its best job that could start then
        self.passed: dict[int | None, set[int | None]] = defaultdict(set)
        self.settled = False  # this step's claim found nothing (I3: no early wake then)
        self.holding: dict[str, Lease | None] = dict.fromkeys(WORKERS)
        self.issued: list[Lease] = []
        # I10: each cancelled job's row as the step that cancelled it left it, until an
        # operator's retry (or prune) takes it out
        self.frozen: dict[int, Row] = {}
        self.before: tuple[dict[Any, Any], dict[int, str]] | None = None  # sessions, statuses

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

    def with_status(self, *statuses: str) -> list[int]:
        return [j.key for j in self.model.jobs.values() if j.status in statuses]

    def stale_leases(self) -> list[Lease]:
        return [lease for lease in self.issued if not self.model.live(lease)]

    def note_end(self, path: str, lease: Lease | None = None, key: int | None = None) -> None:
        """Count how a cancel-requested attempt ended (called before the model ends it):
        `lease` a worker's (counted when live), `key` an operator's call on the job."""
        target = lease.job if lease is not None else key
        job = None if target is None else self.model.job(target)
        if job is None or job.status != "processing" or job.cancel_requested_at is None:
            return
        if lease is None or self.model.live(lease):
            self.db.seen[f"cancel-requested attempt ended by {path}"] += 1

    # --- enqueue ---------------------------------------------------------------------------

    def add(self, spec: Spec) -> int | None:
        """Submit one job; its model key (the twin's, for a repeated key through the
        client), or None when a raw INSERT repeated a key and was refused."""
        clock = self.model.clock
        session_id = self.session_ids[spec.session]
        conn = self.sql("operator")
        run_at = clock + timedelta(seconds=spec.delay)
        created_at = clock - timedelta(seconds=spec.age)
        if spec.key is None and spec.plain:
            # the way other MobVibe parts insert: both times are the real now()
            job_id, created_at, run_at = insert_timed_job(
                conn, session_id, priority=spec.priority, max_retries=spec.max_retries
            )
            assert created_at == run_at < T0
        elif spec.key is None:
            job_id, created_at, run_at = insert_timed_job(
                conn,
                session_id,
                priority=spec.priority,
                max_retries=spec.max_retries,
                run_at=run_at,
                created_at=created_at,
            )
        else:
            twin = self.model.keyed(spec.session, spec.key)
            if twin is not None:
                return self.add_twin(spec, twin, run_at, created_at)
            if spec.plain:
                job_id, created_at, run_at = insert_timed_job(
                    conn,
                    session_id,
                    priority=spec.priority,
                    max_retries=spec.max_retries,
                    run_at=run_at,
                    created_at=created_at,
                    idempotency_key=spec.key,
                )
            else:
                job_id = store.enqueue(conn, self.new_job(spec, run_at))
                row = conn.execute(
                    "SELECT created_at, run_at FROM coding_jobs WHERE id = %s", [job_id]
                ).fetchone()
                assert row is not None and row[1] == run_at
                created_at = row[0]
        return self.model.enqueue(
            job_id, spec.session, spec.priority, spec.max_retries, created_at, run_at, spec.key
        )

    def new_job(self, spec: Spec, run_at: Any) -> NewJob:
        """The spec as the client's enqueue takes it."""
        return NewJob(
            prompt="stateful test",
            session_id=self.session_ids[spec.session],
            priority=spec.priority,
            max_retries=spec.max_retries,
            run_at=run_at,
            idempotency_key=spec.key,
        ).validated()

    def add_twin(self, spec: Spec, twin: Job, run_at: Any, created_at: Any) -> int | None:
        """A key its session already has: a raw INSERT is refused (unique_violation on
        coding_jobs_idempotency_idx), the client's enqueue answers with the twin's id. Either
        way no row is made, and the INSERT drew a seq (nextval is not transactional)."""
        conn = self.sql("operator")
        self.model.draw_seq()
        if spec.plain:
            with pytest.raises(psycopg.errors.UniqueViolation) as refused:
                insert_job(
                    conn,
                    self.session_ids[spec.session],
                    priority=spec.priority,
                    max_retries=spec.max_retries,
                    run_at=run_at,
                    created_at=created_at,
                    idempotency_key=spec.key,
                )
            assert refused.value.diag.constraint_name == "coding_jobs_idempotency_idx"
            self.db.seen["repeated key refused (raw INSERT)"] += 1
            return None
        assert store.enqueue(conn, self.new_job(spec, run_at)) == twin.id, "another job's id"
        self.db.seen["repeated key answered with its job (client)"] += 1
        return twin.key

    @initialize(
        target=jobs,
        concurrency=st.lists(st.sampled_from(CONCURRENCY), min_size=SESSIONS, max_size=SESSIONS),
        owners=st.lists(st.sampled_from(OWNERS), min_size=SESSIONS, max_size=SESSIONS),
        default=st.sampled_from([None, None, 1, 2]),
        batch=st.lists(specs, max_size=8),
    )
    def seed(
        self,
        concurrency: list[int],
        owners: list[int | None],
        default: int | None,
        batch: list[Spec],
    ) -> Any:
        """Sessions created with their max_concurrency and owner (the producer's INSERT),
        the users' default limit, then jobs."""
        conn = self.sql("operator")
        self.session_ids = [
            new_session(conn, value, None if user is None else self.user_ids[user])
            for value, user in zip(concurrency, owners, strict=True)
        ]
        self.model.sessions = [
            Session(value, user=user) for value, user in zip(concurrency, owners, strict=True)
        ]
        if default is not None:
            self.set_user_max_concurrency(default)
        return multiple(*(k for k in map(self.add, batch) if k is not None))

    @rule(target=jobs, batch=st.lists(specs, min_size=1, max_size=4))
    def enqueue(self, batch: list[Spec]) -> Any:
        return multiple(*(k for k in map(self.add, batch) if k is not None))

    @rule(target=jobs, spec=specs, key=st.sampled_from(TAP_KEYS), first_raw=st.booleans())
    def double_tap(self, spec: Spec, key: str, first_raw: bool) -> int:
        """The same session and key twice in a row: one row, and the client's second
        submit answers with its id."""
        first = self.add(replace(spec, key=key, plain=first_raw))
        second = self.add(replace(spec, key=key, plain=False))
        assert second is not None and first in (None, second)
        return second

    @rule(session=st.integers(0, SESSIONS - 1), value=st.sampled_from([1, 2, 3]))
    def set_max_concurrency(self, session: int, value: int) -> None:
        """An operator changes how many prompts of a session may run at once."""
        changed = self.sql("operator").execute(
            "UPDATE coding_sessions SET max_concurrency = %s WHERE id = %s",
            [value, self.session_ids[session]],
        )
        assert changed.rowcount == 1
        running = sum(
            j.session == session and j.status == "processing" for j in self.model.jobs.values()
        )
        if value < running:
            self.db.seen["max_concurrency lowered below the running jobs"] += 1
        self.model.set_max_concurrency(session, value)

    @rule(user=st.integers(0, USERS - 1), value=st.sampled_from([*USER_LIMITS, None]))
    def set_user_limit(self, user: int, value: int | None) -> None:
        """An operator sets, changes or clears a user's own limit (queue_set_user_limit: a
        row of queue_user_limits); the limit in force comes back."""
        if all(s.user != user for s in self.model.sessions):
            return  # a user is known by its sessions: refused (tests/contract)
        in_force = scalar(
            self.sql("operator"),
            "SELECT queue_set_user_limit(%s, %s)",
            [self.user_ids[user], value],
        )
        self.note_limit(user, lambda: self.model.set_user_limit(user, value))
        assert in_force == self.model.user_limit(user)

    @rule(value=st.sampled_from([*USER_LIMITS, None]))
    def set_user_max_concurrency(self, value: int | None) -> None:
        """An operator changes (or clears) the limit of users without a row."""
        self.sql("operator").execute("UPDATE queue_config SET user_max_concurrency = %s", [value])
        self.note_limit(None, lambda: self.model.set_user_max_concurrency(value))

    def note_limit(self, user: int | None, change: Any) -> None:
        """Apply a change of limits to the model; count those that left a user over it."""
        change()
        for u in range(USERS) if user is None else [user]:
            limit = self.model.user_limit(u)
            if limit is not None and self.model.user_running(u) > limit:
                self.db.seen["user limit lowered below the running jobs"] += 1

    # --- workers ---------------------------------------------------------------------------

    def took(self, worker: str, expected: Job | None, row: Any) -> None:
        """Check a claim's result against the model's next due job, then record it (I6)."""
        if expected is None:
            assert row is None or row["job_id"] is None, f"claimed {row} but none was due"
            self.holding[worker] = None
            self.settled = True
            return
        assert row is not None and row["job_id"] == expected.id, (
            f"claimed {row and row['job_id']}, expected job {expected.key} ({expected.id})"
        )
        assert expected.run_at <= self.model.clock, "claimed before its run_at"
        token = row["lease_token"]
        assert row["session_id"] == self.session_ids[expected.session]
        assert (row["attempt"], row["retry_count"], row["max_retries"], row["priority"]) == (
            expected.attempt + 1,
            expected.retry_count,
            expected.max_retries,
            expected.priority,
        )
        assert all(lease.token != token for lease in self.issued), "a lease token came back"
        self.check_start(expected)
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
    @rule(data=st.data(), pod=st.booleans())
    def heartbeat(self, data: Any, pod: bool) -> None:
        """One worker's queue_heartbeat, or a pod's queue_renew_leases of every attempt its
        workers hold (renewed; cancel_requested, for a live lease whose cancel was asked)."""
        if pod:
            held = [(w, lease) for w, lease in self.holding.items() if lease]
            ids = [self.model.ids[lease.job] for _, lease in held]
            rows = (
                self.sql(held[0][0])
                .execute(
                    "SELECT job_id, renewed, cancel_requested FROM queue_renew_leases(%s, %s)",
                    [ids, [lease.token for _, lease in held]],
                )
                .fetchall()
            )
            expected = []
            for (_, lease), job_id in zip(held, ids, strict=True):
                renewed = self.model.heartbeat(lease)
                asked = renewed and self.model.jobs[lease.job].cancel_requested_at is not None
                expected.append((job_id, renewed, asked))
            assert [tuple(r) for r in rows] == expected
            for (worker, _), (_, renewed, _) in zip(held, expected, strict=True):
                if not renewed:
                    self.holding[worker] = None
            return
        worker, lease = self.draw_busy(data)
        expected_beat = self.model.heartbeat(lease)
        got = scalar(
            self.sql(worker),
            "SELECT queue_heartbeat(%s, %s)",
            [self.model.ids[lease.job], lease.token],
        )
        assert got is expected_beat
        if not got:  # lease lost: the worker stops the job
            self.holding[worker] = None

    @precondition(lambda self: self.busy_workers())
    @rule(data=st.data())
    def complete(self, data: Any) -> None:
        worker, lease = self.draw_busy(data)
        self.note_end("complete_job", lease)
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
        self.note_end("complete_job", lease)
        expected = self.model.complete(lease)
        expected_next = self.model.next_due()
        row = named_row(
            self.sql(worker),
            "SELECT * FROM queue_complete_and_claim(%s, %s, %s)",
            [self.model.ids[lease.job], lease.token, worker],
        )
        assert row is not None and row["completed"] is expected
        self.took(worker, expected_next, row)

    @precondition(lambda self: self.busy_workers())
    @rule(data=st.data(), reason=st.sampled_from(["error", "timeout", "crashed"]))
    def fail(self, data: Any, reason: str) -> None:
        worker, lease = self.draw_busy(data)
        message = f"{worker}: {reason}"
        self.note_end("fail_job", lease)
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
        self.note_end("queue_release_job", lease)
        expected = self.model.release(lease, "released at shutdown")
        got = scalar(
            self.sql(worker),
            "SELECT queue_release_job(%s, %s)",
            [self.model.ids[lease.job], lease.token],
        )
        assert got is expected
        self.holding[worker] = None

    @precondition(lambda self: self.busy_workers())
    @rule(
        data=st.data(),
        end_reason=st.sampled_from(END_REASONS),
        error=st.sampled_from([None, "the agent stopped"]),
        and_claim=st.booleans(),
    )
    def end_attempt(self, data: Any, end_reason: str, error: str | None, and_claim: bool) -> None:
        """The supervisor's end of an attempt (queue_end_attempt, or queue_end_and_claim):
        'cancelled' after a cancel, or any other end; the job's new status comes back."""
        worker, lease = self.draw_busy(data)
        self.end(worker, lease, end_reason, error, and_claim=and_claim)

    def end(
        self, worker: str, lease: Lease, end_reason: str, error: str | None, *, and_claim: bool
    ) -> None:
        self.note_end(f"queue_end_attempt '{end_reason}'", lease)
        job_id = self.model.ids[lease.job]
        expected = self.model.end_attempt(lease, end_reason, error)
        if and_claim:
            expected_next = self.model.next_due()
            row = named_row(
                self.sql(worker),
                "SELECT * FROM queue_end_and_claim(%s, %s, %s, %s, NULL, %s)",
                [job_id, lease.token, end_reason, error, worker],
            )
            assert row is not None and row["ended"] == expected
            self.took(worker, expected_next, row)
            return
        got = scalar(
            self.sql(worker),
            "SELECT queue_end_attempt(%s, %s, %s, %s)",
            [job_id, lease.token, end_reason, error],
        )
        assert got == expected
        self.holding[worker] = None

    def told_to_cancel(self) -> list[str]:
        """The busy workers whose live attempt has a cancel requested (job_cancel told them)."""
        return [
            w
            for w, lease in self.holding.items()
            if lease
            and self.model.live(lease)
            and self.model.jobs[lease.job].cancel_requested_at is not None
        ]

    @precondition(lambda self: self.told_to_cancel())
    @rule(data=st.data(), and_claim=st.booleans())
    def worker_obeys_cancel(self, data: Any, and_claim: bool) -> None:
        """The supervisor heard job_cancel: it stops the attempt and records 'cancelled'
        (queue_end_attempt, or queue_end_and_claim to take the next prompt at once)."""
        worker = data.draw(st.sampled_from(self.told_to_cancel()), label="worker")
        lease = self.holding[worker]
        assert lease is not None
        self.end(worker, lease, "cancelled", "cancelled from the phone", and_claim=and_claim)

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
    @rule(
        data=st.data(),
        op=st.sampled_from(["heartbeat", "complete", "fail", "release", "end"]),
    )
    def zombie_write(self, data: Any, op: str) -> None:
        """A write under a lease that is no longer live changes nothing (I7); a cancelled
        attempt's late complete or fail among them."""
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
        elif op == "release":
            assert scalar(conn, "SELECT queue_release_job(%s, %s)", [job_id, lease.token]) is False
        else:
            reason = data.draw(st.sampled_from(END_REASONS), label="end reason")
            got = scalar(
                conn, "SELECT queue_end_attempt(%s, %s, %s)", [job_id, lease.token, reason]
            )
            assert got is None
        job = self.model.job(lease.job)
        if job is not None and job.status == "cancelled":
            self.db.seen[f"late {op} of a cancelled job"] += 1
        assert full_row(self.sql("operator"), job_id) == before

    # --- cancel ----------------------------------------------------------------------------

    @rule(job=jobs, whole_session=st.sampled_from([False] * 5 + [True]))
    def cancel(self, job: int, whole_session: bool) -> None:
        """The phone's cancel of any job (pending, running, finished, pruned), or of its
        whole session (queue_cancel_session)."""
        conn = self.sql("operator")
        found = self.model.job(job)
        if whole_session and found is not None:
            expected_count = self.model.cancel_session(found.session)
            got = scalar(conn, "SELECT queue_cancel_session(%s)", [self.session_ids[found.session]])
            assert got == expected_count
            return
        expected = self.model.cancel(job)
        assert scalar(conn, "SELECT cancel_job(%s)", [self.model.ids[job]]) is expected

    @precondition(lambda self: self.with_status("processing"))
    @rule(data=st.data(), again=st.sampled_from([False] * 4 + [True]))
    def cancel_running(self, data: Any, again: bool) -> None:
        """A cancel of a running job: marked (true), once (again: false); it holds its
        place until its attempt ends, however it ends."""
        running = self.with_status("processing")
        asked = [k for k in running if self.model.jobs[k].cancel_requested_at is not None]
        candidates = (asked if again else [k for k in running if k not in asked]) or running
        job = data.draw(st.sampled_from(candidates), label="running job")
        expected = self.model.cancel(job)
        got = scalar(self.sql("operator"), "SELECT cancel_job(%s)", [self.model.ids[job]])
        assert got is expected
        self.db.seen["cancel of a running job" + ("" if expected else " (again)")] += 1

    # --- operator --------------------------------------------------------------------------

    def requeue(self, job: int, action: str) -> bool:
        """queue_requeue_failed or queue_retry_job; what it answered (the model's answer)."""
        function, statuses, reason = {
            "requeue": ("queue_requeue_failed", ("failed",), "requeued from dead letters"),
            "retry": ("queue_retry_job", ("failed", "cancelled"), "retried by an operator"),
        }[action]
        before = self.model.job(job)
        was = before.status if before else None
        expected = self.model.requeue(job, statuses, reason)
        got = scalar(self.sql("operator"), f"SELECT {function}(%s)", [self.model.ids[job]])
        assert got is expected
        if expected and was == "cancelled":
            del self.frozen[job]  # I10: an operator's retry is the one way out of cancelled
            self.db.seen["operator retried a cancelled job"] += 1
        return bool(got)

    @rule(job=jobs, action=st.sampled_from(["complete", "fail", "fail", "requeue", "retry"]))
    def operator(self, job: int, action: str) -> None:
        """An operator's call without a lease, on any job: pending, running, finished, pruned."""
        conn, job_id = self.sql("operator"), self.model.ids[job]
        if action in ("complete", "fail"):
            self.note_end(f"the operator's {action}", key=job)
        if action == "complete":
            expected = self.model.operator_complete(job)
            assert scalar(conn, "SELECT complete_job(%s)", [job_id]) is expected
        elif action == "fail":
            message = f"operator: failed job {job}"
            failed = self.model.operator_fail(job, message)
            assert scalar(conn, "SELECT fail_job(%s, %s)", [job_id, message]) is failed
        else:
            self.requeue(job, action)

    @precondition(lambda self: self.with_status("failed", "cancelled"))
    @rule(data=st.data(), retry=st.booleans())
    def requeue_or_retry(self, data: Any, retry: bool) -> None:
        """A dead letter requeued (queue_requeue_failed), or a failed or cancelled job
        retried (queue_retry_job), on purpose: the back of its session."""
        statuses = ("failed", "cancelled") if retry else ("failed",)
        candidates = self.with_status(*statuses) or self.with_status("cancelled")
        job = data.draw(st.sampled_from(candidates), label="finished job")
        retry = retry or self.model.jobs[job].status == "cancelled"
        assert self.requeue(job, "retry" if retry else "requeue") is True

    @precondition(lambda self: any(j.completed_at for j in self.model.jobs.values()))
    @rule(
        status=st.sampled_from(["completed", "failed", "cancelled"]),
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
        for job in gone:
            self.frozen.pop(job.key, None)

    # --- time and the reaper ---------------------------------------------------------------

    @rule(seconds=st.sampled_from(CLOCK_STEPS))
    def time_passes(self, seconds: float) -> None:
        self.model.clock += timedelta(seconds=seconds)

    @precondition(lambda self: self.with_status("processing"))
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
            if job.cancel_requested_at is not None:
                self.db.seen["cancel-requested attempt ended by the reaper"] += 1
            assert will_retry is self.model.reaped(job, REAPER_MESSAGE)

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def database_equals_model(self) -> None:
        self.db.steps += 1
        conn = self.sql("operator")
        model = self.model
        lowered = {self.session_ids[i] for i, s in enumerate(model.sessions) if s.lowered}
        seen = check_queue_invariants(  # I1 I4 I5 I9 I11 I13
            conn,
            {j.id for j in model.jobs.values()},
            lowered,
            {self.user_ids[u] for u in model.lowered_users},
        )
        for job in model.jobs.values():  # I2
            assert seen.rows[job.id] == self.expected_row(job), f"job {job.key} differs"
        assert seen.stats[:8] == self.expected_stats()  # I3
        self.check_next_run_at(seen.stats[8])  # I3
        self.settled = False
        assert seen.sessions == {
            self.session_ids[i]: (s.status, s.error_message, s.max_concurrency)  # I4
            for i, s in enumerate(model.sessions)
        }
        live = [lease.job for lease in self.holding.values() if lease and model.live(lease)]
        assert len(live) == len(set(live)), "two workers hold a live lease on one job"
        self.check_concurrency(seen.rows)  # I9
        self.check_users(seen)  # I13
        self.check_cancelled(seen.rows, seen.sessions)  # I10
        self.check_attempts(seen.attempts)  # I12

    def check_start(self, job: Job) -> None:
        """I13 and I14 for a start, before the model records it: the user had fewer than
        its limit running; no user starts twice at the priority of another's best job
        that may start, unless that other user started in between."""
        model = self.model
        user = model.user_of(job)
        limit = model.user_limit(user)
        assert limit is None or model.user_running(user) < limit, (
            f"job {job.key} started with {model.user_running(user)} of its user's running,"
            f" limit {limit}"
        )
        startable = model.startable()
        if min(startable, key=lambda j: (-j.priority, j.seq)) is not job:
            self.db.seen["claims where a user's turn overtook submission order"] += 1
        if any(
            j.status == "pending"
            and j.run_at <= model.clock
            and model.session_allows(j)
            and not model.user_allows(j)
            for j in model.jobs.values()
        ):
            self.db.seen["claims while a user's limit held a due job back"] += 1
        best: dict[int | None, int] = {}
        for j in startable:
            best[model.user_of(j)] = max(best.get(model.user_of(j), -1), j.priority)
        self.passed[user] = set()
        for waiting, top in best.items():
            if waiting != user and top == job.priority:
                assert user not in self.passed[waiting], (
                    f"user {user} started twice at priority {top} while user {waiting} waited"
                )
                self.passed[waiting].add(user)

    def check_concurrency(self, rows: dict[Any, Row]) -> None:
        """I9: in each session, the k-th running job in submission order started when its
        session allowed at least k at once; so at most max_concurrency run, and after a
        lowering no more than the limit under which the last of them started."""
        running: dict[Any, list[Row]] = defaultdict(list)
        for row in rows.values():
            if row.status == "processing":
                running[row.session_id].append(row)
        for session_rows in running.values():
            if len(session_rows) > 1:
                self.db.seen[f"steps with {len(session_rows)} jobs of a session running"] += 1
            for k, row in enumerate(sorted(session_rows, key=lambda r: r.seq), start=1):
                job = self.model.by_id(row.id)
                assert k <= job.concurrency_at_claim, (
                    f"job {job.key} runs as number {k} of its session, started under "
                    f"max_concurrency {job.concurrency_at_claim}"
                )

    def check_users(self, seen: Observed) -> None:
        """I13: the k-th of a user's running jobs in the order they started was started
        while the user's limit was at least k; the limits are the model's."""
        model = self.model
        running: dict[int, list[Job]] = defaultdict(list)
        for row in seen.rows.values():
            job = model.by_id(row.id)
            user = model.user_of(job)
            if row.status == "processing" and user is not None:
                running[user].append(job)
        for user, jobs in running.items():
            if len(jobs) > 1:
                self.db.seen[f"steps with {len(jobs)} jobs of a user running"] += 1
            for k, job in enumerate(sorted(jobs, key=lambda j: j.start), start=1):
                limit = job.user_limit_at_claim
                assert limit is None or k <= limit, (
                    f"job {job.key} runs as number {k} of user {user}, started under limit {limit}"
                )
        assert seen.user_limits == (
            {self.user_ids[u]: n for u, n in model.user_limits.items()},
            model.user_max_concurrency,
        )

    def check_cancelled(self, rows: dict[Any, Row], sessions: dict[Any, Any]) -> None:
        """I10: a cancelled job never changes again (never claimed, retried by the queue,
        completed or failed) until an operator's retry; a step that cancelled a job left
        its session as it was, unless a job of that session was dead-lettered in it."""
        statuses = {j.key: j.status for j in self.model.jobs.values()}
        for job in self.model.jobs.values():
            row = rows[job.id]
            if job.key in self.frozen:
                assert job.status == "cancelled", f"job {job.key} left cancelled in the model"
                assert row == self.frozen[job.key], f"cancelled job {job.key} changed"
            elif job.status == "cancelled":
                self.frozen[job.key] = row
                if self.before is None:
                    continue
                sessions_before, statuses_before = self.before
                dead_lettered = any(
                    j.session == job.session and j.status == "failed"
                    for j in self.model.jobs.values()
                    if statuses_before.get(j.key) != "failed"
                )
                if not dead_lettered and row.session_id in sessions_before:
                    assert sessions[row.session_id] == sessions_before[row.session_id], (
                        f"cancelling job {job.key} changed its session"
                    )
        self.before = (sessions, statuses)

    def check_attempts(self, rows: dict[tuple[Any, int], AttemptTuple]) -> None:
        """I12: coding_job_attempts equals the attempts the model made: one row per claim
        (check_queue_invariants: numbered 1..attempt, open exactly while the job is
        processing under its latest attempt), each with its worker and start, and closed
        with the model's ended_at, end_reason and error_message however it ended."""
        expected = {
            (self.model.ids[key], n): (
                a.worker,
                a.started_at,
                a.ended_at,
                a.end_reason,
                a.error_message,
            )
            for (key, n), a in self.model.attempts.items()
        }
        for pair in set(rows) | set(expected):
            assert rows.get(pair) == expected.get(pair), f"attempt {pair[1]} of job {pair[0]}"

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
            job.cancel_requested_at,
            job.idempotency_key,
        )

    def expected_stats(self) -> tuple[Any, ...]:
        clock = self.model.clock
        jobs = list(self.model.jobs.values())
        counts = {s: sum(j.status == s for j in jobs) for s in STATUSES}
        pending = [j for j in jobs if j.status == "pending"]
        retries = [j.run_at for j in pending if j.run_at > clock and j.attempt > 0]
        ahead = [j.run_at for j in pending if j.run_at > clock]  # retries and delayed jobs
        due_since = min((j.run_at for j in pending if j.run_at <= clock), default=None)
        return (
            counts["pending"],
            counts["processing"],
            counts["completed"],
            counts["failed"],
            None if due_since is None else clock - due_since,
            len(retries),
            min(ahead, default=None),
            counts["cancelled"],
        )

    def check_next_run_at(self, answer: Any) -> None:
        """I3: queue_next_run_at() against what the model allows (model.next_run_at)."""
        due, future, early = self.model.next_run_at()
        now = answer is not None and answer <= self.model.clock
        if due:
            assert now, f"a job may start now; queue_next_run_at() says {answer}"
        elif not (early and now):
            assert answer == future, f"queue_next_run_at() says {answer}, expected {future}"
        elif not self.settled:
            self.db.seen["next_run_at early: a due job waits for its user"] += 1
        else:
            raise AssertionError(f"an idle worker would spin: {answer} after an empty claim")


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
    exercised = "".join(f"\n  {n:6d}  {what}" for what, n in sorted(db.seen.items()))
    with capsys.disabled():
        print(f"\n{summary}{exercised}")


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
        job_id = insert_job(op, new_session(op), run_at=T0, created_at=T0)
        token = claim(op, "w1")["lease_token"]
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
            job_id = insert_job(conn, session, max_retries=6, run_at=T0, created_at=T0)
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


@pytest.mark.parametrize("limit", [None, 2])
def test_a_new_users_first_prompt_placed_to_run_later_starts_when_due(
    stateful_url: str, limit: int | None
) -> None:
    """The machine's shrunk failure: a user's first prompt, placed to wait for its run_at,
    made no row of queue_users for the user, and at its run_at every claim passed over
    it: it never started."""
    conn = Clocked(stateful_url, "regression")
    try:
        op = conn.at(T0)
        reset(op)
        op.execute("UPDATE queue_config SET user_max_concurrency = %s", [limit])
        session = new_session(op, user_id=uuid.uuid4())
        job_id = insert_job(op, session, run_at=T0 + timedelta(seconds=1), created_at=T0)
        assert claim(op, "w1") is None
        got = claim(conn.at(T0 + timedelta(seconds=1)), "w1")
        assert got is not None and got["job_id"] == job_id
    finally:
        conn.close()
