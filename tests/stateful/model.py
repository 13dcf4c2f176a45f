"""A pure-Python model of the queue: what the SQL functions should do, step by step.

Each method that changes state applies the transition and returns what the
matching SQL function should return, so a rule reads: ask the model, call the
database, compare.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from tests.stateful.support import LEASE, T0, backoff

ACTIVE = ("pending", "processing")
MAX_CONCURRENCY = 1  # the sessions' default: one prompt of a session at a time


@dataclass(frozen=True)
class Lease:
    """What a worker holds after a claim: the job (model key), the token, who claimed it."""

    job: int
    token: uuid.UUID
    worker: str


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
    seq: int  # submission order: the insert's, or an operator's requeue
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
    # the lease whose holder completed the job; None when an operator did
    completed_by: uuid.UUID | None = None


@dataclass
class Session:
    status: str = "active"
    error_message: str | None = None


@dataclass
class Model:
    """The queue: jobs by insertion key, sessions by index, one clock."""

    session_count: int
    clock: datetime = T0
    jobs: dict[int, Job] = field(default_factory=dict)
    ids: dict[int, uuid.UUID] = field(default_factory=dict)  # every job ever, pruned too
    keys: dict[uuid.UUID, int] = field(default_factory=dict)
    sessions: list[Session] = field(init=False)
    last_seq: int = 0  # the identity sequence of coding_jobs.seq

    def __post_init__(self) -> None:
        self.sessions = [Session() for _ in range(self.session_count)]

    # --- reading ---------------------------------------------------------------------------

    def job(self, key: int) -> Job | None:
        return self.jobs.get(key)

    def by_id(self, job_id: uuid.UUID) -> Job:
        return self.jobs[self.keys[job_id]]

    def live(self, lease: Lease) -> bool:
        """The lease is the one the job is processing under."""
        job = self.jobs.get(lease.job)
        return job is not None and job.status == "processing" and job.lease_token == lease.token

    def may_start(self, job: Job) -> bool:
        """The order rule: fewer than max_concurrency unfinished jobs of its session were
        submitted before it (its run_at aside)."""
        ahead = [
            j
            for j in self.jobs.values()
            if j.session == job.session and j.status in ACTIVE and j.seq < job.seq
        ]
        return len(ahead) < MAX_CONCURRENCY

    def next_due(self) -> Job | None:
        """The job a claim must return: among the due jobs that may start, the highest
        priority, then the first submitted."""
        due = [
            j
            for j in self.jobs.values()
            if j.status == "pending" and j.run_at <= self.clock and self.may_start(j)
        ]
        return min(due, key=lambda j: (-j.priority, j.seq), default=None)

    def next_run_at(self) -> datetime | None:
        """queue_next_run_at(): the earliest run_at of a pending job that may start once
        due; jobs waiting for their session are left out."""
        return min(
            (j.run_at for j in self.jobs.values() if j.status == "pending" and self.may_start(j)),
            default=None,
        )

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

    # --- transitions -----------------------------------------------------------------------

    def enqueue(
        self,
        job_id: uuid.UUID,
        session: int,
        priority: int,
        max_retries: int,
        created_at: datetime,
        run_at: datetime,
    ) -> int:
        key = len(self.ids)
        self.ids[key] = job_id
        self.keys[job_id] = key
        self.last_seq += 1
        self.jobs[key] = Job(
            key, job_id, session, priority, max_retries, created_at, run_at, self.last_seq
        )
        return key

    def claim(self, job: Job, token: uuid.UUID, worker: str) -> None:
        job.status = "processing"
        job.started_at = job.heartbeat_at = self.clock
        job.worker_id, job.lease_token = worker, token
        job.attempt += 1
        job.end_reason = None

    def heartbeat(self, lease: Lease) -> bool:
        """queue_heartbeat: renews a live lease only."""
        if not self.live(lease):
            return False
        self.jobs[lease.job].heartbeat_at = self.clock
        return True

    def complete(self, lease: Lease) -> bool:
        """complete_job with a lease: true when it completes the job now, or when this same
        lease completed it before (a retried commit); nothing else is ever accepted."""
        job = self.jobs.get(lease.job)
        if job is None:
            return False
        if self.live(lease):
            self._complete(job, by=lease.token)
            return True
        return job.status == "completed" and job.completed_by == lease.token

    def operator_complete(self, key: int) -> bool:
        """complete_job without a lease: any pending or processing job."""
        job = self.jobs.get(key)
        if job is None or job.status not in ACTIVE:
            return False
        self._complete(job, by=None)
        return True

    def fail(self, lease: Lease, message: str, reason: str) -> bool | None:
        """fail_job with a lease: None unless the lease is live."""
        if not self.live(lease):
            return None
        return self._fail(self.jobs[lease.job], message, reason)

    def operator_fail(self, key: int, message: str) -> bool | None:
        """fail_job without a lease: counts a failure of any pending or processing job."""
        job = self.jobs.get(key)
        if job is None or job.status not in ACTIVE:
            return None
        return self._fail(job, message, "error")

    def reaped(self, job: Job, message: str) -> bool:
        """queue_reap_expired's verdict on one expired job: a failed attempt."""
        return self._fail(job, message, "heartbeat_expired")

    def release(self, lease: Lease, reason: str) -> bool:
        """queue_release_job: a live attempt given back, due now, not counted as a failure."""
        if not self.live(lease):
            return False
        job = self.jobs[lease.job]
        job.status, job.run_at, job.heartbeat_at, job.end_reason = (
            "pending",
            self.clock,
            None,
            reason,
        )
        return True

    def requeue(self, key: int) -> bool:
        """queue_requeue_failed: a dead letter back to pending, submitted again (a new seq:
        the back of its session); its session active again once none of its jobs is
        failed."""
        job = self.jobs.get(key)
        if job is None or job.status != "failed":
            return False
        job.status, job.retry_count, job.run_at, job.completed_at = "pending", 0, self.clock, None
        job.end_reason = "requeued from dead letters"
        self.last_seq += 1
        job.seq = self.last_seq
        session = self.sessions[job.session]
        if session.status == "failed" and not any(
            j.session == job.session and j.status == "failed" for j in self.jobs.values()
        ):
            session.status, session.error_message = "active", None
        return True

    def prune(self, jobs: list[Job]) -> None:
        for job in jobs:
            del self.jobs[job.key]

    def _complete(self, job: Job, by: uuid.UUID | None) -> None:
        job.status, job.completed_at, job.heartbeat_at = "completed", self.clock, None
        job.end_reason, job.completed_by = "completed", by
        if by is None:  # an operator's completion leaves no lease on the row
            job.lease_token = None

    def _fail(self, job: Job, message: str, reason: str) -> bool:
        """One failed attempt: retry after the backoff, or dead-letter (and fail the session)."""
        job.retry_count += 1
        job.heartbeat_at = None
        job.error_message, job.end_reason = message, reason
        if job.retry_count >= job.max_retries:
            job.status, job.completed_at = "failed", self.clock
            self.sessions[job.session] = Session("failed", message)
            return False
        job.status, job.completed_at = "pending", None
        job.run_at = self.clock + backoff(job.retry_count)
        return True
