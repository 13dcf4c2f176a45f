"""A pure-Python model of the queue: what the SQL functions should do, step by step.

Each method that changes state applies the transition and returns what the
matching SQL function should return, so a rule reads: ask the model, call the
database, compare.

The session order rule (MISSION.md, "What a coding job is"): a job may start only
when fewer than its session's max_concurrency unfinished (pending or processing)
jobs of the session were submitted (seq) before it; among the jobs that may start,
priority, then seq. A retry keeps its seq (its place); an operator's requeue or
retry draws a new one (the back of its session).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from tests.stateful.support import LEASE, T0, backoff

ACTIVE = ("pending", "processing")  # unfinished: they hold their place in the session


@dataclass(frozen=True)
class Lease:
    """What a worker holds after a claim: the job (model key), the token, who claimed it."""

    job: int
    token: uuid.UUID
    worker: str


@dataclass
class Attempt:
    """One row of coding_job_attempts: written by the claim, closed by the attempt's end."""

    worker: str
    started_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None
    error_message: str | None = None


@dataclass
class Job:
    """One job as the model sees it; the fields mirror coding_jobs columns."""

    key: int  # insertion order
    id: uuid.UUID
    session: int
    priority: int
    max_retries: int
    created_at: datetime
    run_at: datetime
    seq: int  # submission order: the insert's, or an operator's requeue/retry
    idempotency_key: str | None = None
    status: str = "pending"
    retry_count: int = 0
    attempt: int = 0
    lease_token: uuid.UUID | None = None
    worker_id: str | None = None
    heartbeat_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    end_reason: str | None = None
    error_message: str | None = None
    cancel_requested_at: datetime | None = None
    # the lease whose holder completed the job; None when an operator did
    completed_by: uuid.UUID | None = None
    # the session's max_concurrency when the job's latest attempt was claimed
    concurrency_at_claim: int = 0
    # the user's limit when the job's latest attempt was claimed (None: no limit), and
    # the number of that start among all starts
    user_limit_at_claim: int | None = None
    start: int = 0


@dataclass
class Session:
    max_concurrency: int = 1
    status: str = "active"
    error_message: str | None = None
    lowered: bool = False  # max_concurrency was lowered at some point
    user: int | None = None  # the owner (coding_sessions.user_id), by index; None: no user


@dataclass
class Model:
    """The queue: jobs by insertion key, sessions by index, attempts, one clock."""

    sessions: list[Session] = field(default_factory=list)
    clock: datetime = T0
    jobs: dict[int, Job] = field(default_factory=dict)
    ids: dict[int, uuid.UUID] = field(default_factory=dict)  # every job ever, pruned too
    keys: dict[uuid.UUID, int] = field(default_factory=dict)
    attempts: dict[tuple[int, int], Attempt] = field(default_factory=dict)  # (job key, attempt)
    last_seq: int = 0  # the identity sequence of coding_jobs.seq
    user_limits: dict[int, int] = field(default_factory=dict)  # queue_user_limits
    user_max_concurrency: int | None = None  # queue_config's, for users without a row
    starts: int = 0  # claims so far: the order of starts
    last_start: dict[int | None, int] = field(default_factory=dict)  # by user: its number
    lowered_users: set[int] = field(default_factory=set)  # whose limit was ever lowered

    # --- reading ---------------------------------------------------------------------------

    def job(self, key: int) -> Job | None:
        return self.jobs.get(key)

    def by_id(self, job_id: uuid.UUID) -> Job:
        return self.jobs[self.keys[job_id]]

    def live(self, lease: Lease) -> bool:
        """The lease is the one the job is processing under."""
        job = self.jobs.get(lease.job)
        return job is not None and job.status == "processing" and job.lease_token == lease.token

    def keyed(self, session: int, key: str) -> Job | None:
        """The session's job with this idempotency key (pruned jobs free their key)."""
        return next(
            (j for j in self.jobs.values() if j.session == session and j.idempotency_key == key),
            None,
        )

    def session_allows(self, job: Job) -> bool:
        """The order rule: fewer than max_concurrency unfinished jobs of its session were
        submitted before it (its run_at aside)."""
        ahead = sum(
            1
            for j in self.jobs.values()
            if j.session == job.session and j.status in ACTIVE and j.seq < job.seq
        )
        return ahead < self.sessions[job.session].max_concurrency

    def user_of(self, job: Job) -> int | None:
        return self.sessions[job.session].user

    def user_limit(self, user: int | None) -> int | None:
        """The limit in force for `user`: its row, else the default; None: no limit."""
        if user is None:
            return None
        return self.user_limits.get(user, self.user_max_concurrency)

    def user_running(self, user: int | None) -> int:
        return sum(
            1 for j in self.jobs.values() if j.status == "processing" and self.user_of(j) == user
        )

    def user_allows(self, job: Job) -> bool:
        """The user rule: fewer than the user's limit of its jobs are processing."""
        user = self.user_of(job)
        limit = self.user_limit(user)
        return limit is None or self.user_running(user) < limit

    def may_start(self, job: Job) -> bool:
        """Both rules: its session's and its user's (its run_at aside)."""
        return self.session_allows(job) and self.user_allows(job)

    def turn(self, job: Job) -> int:
        """Its user's place in turns: the number of the user's most recent start, 0 for a
        user with no start yet (so first)."""
        return self.last_start.get(self.user_of(job), 0)

    def order(self, job: Job) -> tuple[int, int, int]:
        """The claim's order among jobs that may start: priority, turn, seq."""
        return (-job.priority, self.turn(job), job.seq)

    def startable(self) -> list[Job]:
        """The due jobs that may start now."""
        return [
            j
            for j in self.jobs.values()
            if j.status == "pending" and j.run_at <= self.clock and self.may_start(j)
        ]

    def next_due(self) -> Job | None:
        """The job a claim must return: among the due jobs that may start, the highest
        priority, then the user whose most recent start is the oldest, then the first
        submitted."""
        return min(self.startable(), key=self.order, default=None)

    def next_run_at(self) -> tuple[bool, datetime | None, bool]:
        """What queue_next_run_at() may answer: (due, future, early). due: a job may start
        now (the answer must not be in the future); else the earliest run_at of a pending
        job that its session lets start once due, None when there is none (the answer must
        be that), unless early: a due job that its session lets start waits only for its
        user, and the answer may then also be any time not in the future (a job whose
        run_at passed counts until a claim meets it and sees its user at its limit; one
        wake of an idle worker, never a spin). Jobs waiting for their session are left
        out."""
        pending = [j for j in self.jobs.values() if j.status == "pending"]
        allowed = [j for j in pending if self.session_allows(j)]
        due = [j for j in allowed if j.run_at <= self.clock]
        future = min((j.run_at for j in allowed if j.run_at > self.clock), default=None)
        return any(map(self.user_allows, due)), future, bool(due)

    def expired(self) -> list[Job]:
        """Processing jobs whose heartbeat is older than the reaper's timeout."""
        return [
            j
            for j in self.jobs.values()
            if j.status == "processing"
            and j.heartbeat_at is not None
            and j.heartbeat_at < self.clock - LEASE
        ]

    def prunable(self, status: str, older_than: timedelta) -> list[Job]:
        return [
            j
            for j in self.jobs.values()
            if j.status == status
            and j.completed_at is not None
            and j.completed_at < self.clock - older_than
        ]

    # --- submitting ------------------------------------------------------------------------

    def draw_seq(self) -> int:
        """nextval of coding_jobs.seq: drawn by every INSERT, also one that conflicts (a
        sequence is not transactional) and an operator's requeue."""
        self.last_seq += 1
        return self.last_seq

    def enqueue(
        self,
        job_id: uuid.UUID,
        session: int,
        priority: int,
        max_retries: int,
        created_at: datetime,
        run_at: datetime,
        idempotency_key: str | None = None,
    ) -> int:
        key = len(self.ids)
        self.ids[key] = job_id
        self.keys[job_id] = key
        self.jobs[key] = Job(
            key,
            job_id,
            session,
            priority,
            max_retries,
            created_at,
            run_at,
            self.draw_seq(),
            idempotency_key,
        )
        return key

    def set_max_concurrency(self, session: int, value: int) -> None:
        """An operator's UPDATE of coding_sessions.max_concurrency: the order rule reads it
        from now on; running jobs are never stopped."""
        state = self.sessions[session]
        state.lowered |= value < state.max_concurrency
        state.max_concurrency = value

    def set_user_limit(self, user: int, value: int | None) -> None:
        """An operator's row of queue_user_limits for `user` set (or deleted: None); the
        user rule reads it from now on; running jobs are never stopped."""
        before = self.user_limit(user)
        if value is None:
            self.user_limits.pop(user, None)
        else:
            self.user_limits[user] = value
        if _lower(self.user_limit(user), before):
            self.lowered_users.add(user)

    def set_user_max_concurrency(self, value: int | None) -> None:
        """An operator's UPDATE of queue_config.user_max_concurrency (None: no limit)."""
        users = {s.user for s in self.sessions if s.user is not None}
        before = {u: self.user_limit(u) for u in users}
        self.user_max_concurrency = value
        self.lowered_users |= {u for u in users if _lower(self.user_limit(u), before[u])}

    # --- attempts --------------------------------------------------------------------------

    def claim(self, job: Job, token: uuid.UUID, worker: str) -> None:
        job.status = "processing"
        job.started_at = job.heartbeat_at = self.clock
        job.worker_id, job.lease_token = worker, token
        job.attempt += 1
        job.end_reason = None
        job.concurrency_at_claim = self.sessions[job.session].max_concurrency
        job.user_limit_at_claim = self.user_limit(self.user_of(job))
        self.starts += 1
        job.start = self.last_start[self.user_of(job)] = self.starts
        self.attempts[(job.key, job.attempt)] = Attempt(worker, self.clock)

    def heartbeat(self, lease: Lease) -> bool:
        """queue_heartbeat: renews a live lease only (a cancel-requested one too)."""
        if not self.live(lease):
            return False
        self.jobs[lease.job].heartbeat_at = self.clock
        return True

    def complete(self, lease: Lease) -> bool:
        """complete_job with a lease: true when it completes the job now, or when this same
        lease completed it before (a retried commit); nothing else is ever accepted. A
        cancel-requested attempt that completes is completed: the work was done."""
        job = self.jobs.get(lease.job)
        if job is None:
            return False
        if self.live(lease):
            self._finish(job, "complete", "completed", None, lease=lease.token)
            return True
        return job.status == "completed" and job.completed_by == lease.token

    def operator_complete(self, key: int) -> bool:
        """complete_job without a lease: any pending or processing job."""
        job = self.jobs.get(key)
        if job is None or job.status not in ACTIVE:
            return False
        self._finish(job, "complete", "completed", None, lease=None)
        return True

    def fail(self, lease: Lease, message: str, reason: str) -> bool | None:
        """fail_job with a lease: None unless the lease is live; false when not retried
        (dead-lettered, or cancelled because a cancel was requested)."""
        if not self.live(lease):
            return None
        return self._finish(self.jobs[lease.job], "fail", reason, message, lease.token) == "pending"

    def operator_fail(self, key: int, message: str) -> bool | None:
        """fail_job without a lease: counts a failure of any pending or processing job (a
        cancel-requested one ends cancelled, not counted)."""
        job = self.jobs.get(key)
        if job is None or job.status not in ACTIVE:
            return None
        return self._finish(job, "fail", "error", message, lease=None) == "pending"

    def reaped(self, job: Job, message: str) -> bool:
        """queue_reap_expired's verdict on one expired job: a failed attempt (cancelled when a
        cancel was requested); will_retry."""
        return self._finish(job, "fail", "heartbeat_expired", message, job.lease_token) == "pending"

    def release(self, lease: Lease, reason: str) -> bool:
        """queue_release_job: a live attempt given back, due now, not counted as a failure
        (cancelled when a cancel was requested)."""
        if not self.live(lease):
            return False
        self._finish(self.jobs[lease.job], "release", "released", reason, lease.token)
        return True

    def end_attempt(self, lease: Lease, end_reason: str, error: str | None) -> str | None:
        """queue_end_attempt: the job's new status, None unless the lease is live."""
        if not self.live(lease):
            return None
        kind = {"completed": "complete", "released": "release", "cancelled": "cancel"}.get(
            end_reason, "fail"
        )
        return self._finish(self.jobs[lease.job], kind, end_reason, error, lease.token)

    # --- cancel ----------------------------------------------------------------------------

    def cancel(self, key: int) -> bool:
        """cancel_job: a pending job is cancelled at once (its place freed); a processing job
        is marked (it keeps its place until its attempt ends); anything else: false."""
        job = self.jobs.get(key)
        if job is None:
            return False
        if job.status == "pending":
            job.status, job.completed_at, job.end_reason = "cancelled", self.clock, "cancelled"
            return True
        if job.status == "processing" and job.cancel_requested_at is None:
            job.cancel_requested_at = self.clock
            return True
        return False

    def cancel_session(self, session: int) -> int:
        """queue_cancel_session: cancel_job on every unfinished job of the session."""
        jobs = [j for j in self.jobs.values() if j.session == session]
        return sum(self.cancel(j.key) for j in sorted(jobs, key=lambda j: j.seq))

    # --- the operator ----------------------------------------------------------------------

    def requeue(self, key: int, statuses: tuple[str, ...], reason: str) -> bool:
        """queue_requeue_failed (failed) and queue_retry_job (failed or cancelled): the job
        back to pending, submitted again (a new seq: the back of its session), any cancel
        forgotten; its session active again once none of its jobs is failed."""
        job = self.jobs.get(key)
        if job is None or job.status not in statuses:
            return False
        job.status, job.retry_count, job.run_at, job.completed_at = "pending", 0, self.clock, None
        job.cancel_requested_at = job.heartbeat_at = None
        job.end_reason = reason
        job.seq = self.draw_seq()
        session = self.sessions[job.session]
        if session.status == "failed" and not any(
            j.session == job.session and j.status == "failed" for j in self.jobs.values()
        ):
            session.status, session.error_message = "active", None
        return True

    def prune(self, jobs: list[Job]) -> None:
        gone = {job.key for job in jobs}
        for job in jobs:
            del self.jobs[job.key]
        for pair in [pair for pair in self.attempts if pair[0] in gone]:
            del self.attempts[pair]

    # --- the one end of an attempt ---------------------------------------------------------

    def _finish(
        self, job: Job, kind: str, reason: str, error: str | None, lease: uuid.UUID | None
    ) -> str:
        """End the job's current state: kind 'complete', 'release', 'cancel' or 'fail'
        (reason: which failure, or the release's 'released'); error: the attempt's message
        (a release's: its human reason); lease None: an operator's token-less call.

        Returns the new status: completed; cancelled (asked for, or any other end once a
        cancel was requested); pending (a release, or a failure with retries left, after
        the backoff); failed (the last failure: the session fails with it).
        """
        was_processing = job.status == "processing"
        new = self._outcome(job, kind)
        counted = kind == "fail" and new != "cancelled"
        if counted:
            job.retry_count += 1
            job.error_message = error or reason
        elif new == "cancelled" and error is not None:
            job.error_message = error
        job.status, job.heartbeat_at = new, None
        if new == "pending":
            job.completed_at = None
            job.run_at = self.clock if kind == "release" else self.clock + backoff(job.retry_count)
        else:
            job.completed_at = self.clock
        if new == "completed":
            job.completed_by = lease
            if lease is None:  # an operator's completion leaves no lease on the row
                job.lease_token = None
        job.end_reason = {
            "cancelled": "cancelled",
            "completed": "completed",
        }.get(new, (error or "released") if kind == "release" else reason)
        if was_processing:
            self._close_attempt(job, kind, reason, error, operator=lease is None)
        if new == "failed":
            session = self.sessions[job.session]
            session.status, session.error_message = "failed", job.error_message
        return new

    @staticmethod
    def _outcome(job: Job, kind: str) -> str:
        """The status an end of `kind` gives the job."""
        if kind == "complete":
            return "completed"
        if kind == "cancel" or job.cancel_requested_at is not None:
            return "cancelled"
        if kind == "release" or job.retry_count + 1 < job.max_retries:
            return "pending"
        return "failed"

    def _close_attempt(
        self, job: Job, kind: str, reason: str, error: str | None, *, operator: bool
    ) -> None:
        """The attempt's row: its end_reason is what happened to the attempt (a failure's
        reason also when the job ended cancelled); its error_message the attempt's own."""
        attempt = self.attempts[(job.key, job.attempt)]
        attempt.ended_at = self.clock
        attempt.end_reason = {
            "complete": "completed",
            "release": "released",
            "cancel": "cancelled",
        }.get(kind, reason)
        if kind == "complete" and operator:
            attempt.error_message = "completed by an operator"
        elif kind == "fail":
            attempt.error_message = error or reason
        else:
            attempt.error_message = error


def _lower(limit: int | None, before: int | None) -> bool:
    """A change of limit from `before` to `limit` lowered it (None: no limit)."""
    return limit is not None and (before is None or limit < before)
