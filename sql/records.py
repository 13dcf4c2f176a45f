"""What the store's functions return: one frozen dataclass per kind of row.

Plain data, no queries (those are the store's alone); `mobvibe.sql.store`
re-exports every name, so callers import them from the store.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from mobvibe.sql.jobs import Job
from mobvibe.vocabulary import JobStatus, LimitSource, WaitingFor


@dataclass(frozen=True, slots=True)
class Ended:
    """end_and_claim: the ended job's new status (None: the lease was stale, nothing
    changed), and the job claimed with it."""

    status: JobStatus | None
    next_job: Job | None


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What an enqueue did with one job: the job's id and session; added False when the
    session had a job with its idempotency key already (whose id this is), and then
    prompt_ignored True when that job's prompt differs from the one given."""

    job_id: uuid.UUID
    session_id: uuid.UUID
    added: bool = True
    prompt_ignored: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": str(self.job_id),
            "session_id": str(self.session_id),
            "added": self.added,
            "prompt_ignored": self.prompt_ignored,
        }


@dataclass(frozen=True, slots=True)
class Lease:
    """A claim held by a worker: the job and the token that fences its writes."""

    job_id: uuid.UUID
    lease_token: uuid.UUID


@dataclass(frozen=True, slots=True)
class Renewal:
    """One lease of a pod's heartbeat: renewed False means it is lost (stop the attempt),
    None that another transaction holds the job's row locked (not renewed this time, not
    lost either); cancel_requested True means stop it and end it CANCELLED."""

    job_id: uuid.UUID
    renewed: bool | None
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class Reaped:
    """One expired attempt a sweep looked at: will_retry and status None when it passed it
    over (busy, or ended or renewed meanwhile); else status is the job's new one (pending,
    failed, or cancelled when a cancel had been asked)."""

    job_id: uuid.UUID
    session_id: uuid.UUID
    will_retry: bool | None
    status: JobStatus | None = None


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One claim of a job, as coding_job_attempts records it (ended_at None: running)."""

    job_id: uuid.UUID
    attempt: int
    worker_id: str | None
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    error_message: str | None
    events: int = 0  # progress events recorded
    events_dropped: int = 0  # past the attempt's caps (queue_config)

    @property
    def seconds(self) -> float | None:
        """How long the attempt took; None while it runs."""
        return None if self.ended_at is None else (self.ended_at - self.started_at).total_seconds()


@dataclass(frozen=True, slots=True)
class Event:
    """One progress event of an attempt, as the phone reads it."""

    id: int
    job_id: uuid.UUID
    session_id: uuid.UUID
    attempt: int
    kind: str
    payload: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class WaitingRetries:
    """Pending jobs waiting for their run_at, and the earliest run_at."""

    count: int
    next_at: datetime | None


@dataclass(frozen=True, slots=True)
class NextRun:
    """When the next pending job comes due (None: none waits), on the database's clock."""

    next_run_at: datetime | None
    now: datetime

    @property
    def due_in(self) -> float | None:
        """Seconds until the next job is due (<= 0: due now); None when none waits."""
        return None if self.next_run_at is None else (self.next_run_at - self.now).total_seconds()


@dataclass(frozen=True)
class QueueStats:
    """The plan's queue statistics, then the pending jobs whose run_at is ahead: retries
    waiting for their backoff, and jobs enqueued with a delay (never attempted).
    oldest_pending_age: how long the job due longest has waited since it came due."""

    pending_count: int
    processing_count: int
    completed_count: int
    failed_count: int
    oldest_pending_age: timedelta | None
    waiting_retry_count: int = 0
    next_run_at: datetime | None = None
    cancelled_count: int = 0
    # What the database's caps turned away since the queue was made.
    events_dropped: int = 0
    event_bytes_dropped: int = 0
    releases_counted: int = 0  # releases past max_releases_per_job, counted as failures
    delayed_count: int = 0  # never attempted, scheduled for later: not late, not a retry
    next_retry_at: datetime | None = None  # when the first retry waiting is due

    def by_status(self) -> dict[JobStatus, int]:
        """The jobs in each status."""
        return {
            JobStatus.PENDING: self.pending_count,
            JobStatus.PROCESSING: self.processing_count,
            JobStatus.COMPLETED: self.completed_count,
            JobStatus.FAILED: self.failed_count,
            JobStatus.CANCELLED: self.cancelled_count,
        }

    def as_dict(self) -> dict[str, Any]:
        age = self.oldest_pending_age
        return {
            "pending_count": self.pending_count,
            "processing_count": self.processing_count,
            "completed_count": self.completed_count,
            "failed_count": self.failed_count,
            "oldest_pending_age_seconds": None if age is None else age.total_seconds(),
            "waiting_retry_count": self.waiting_retry_count,
            "next_run_at": _iso(self.next_run_at),
            "delayed_count": self.delayed_count,
            "next_retry_at": _iso(self.next_retry_at),
            "cancelled_count": self.cancelled_count,
            "events_dropped": self.events_dropped,
            "event_bytes_dropped": self.event_bytes_dropped,
            "releases_counted": self.releases_counted,
        }


@dataclass(frozen=True)
class JobRow:
    """Every column of a job's row that the tools show."""

    id: uuid.UUID
    session_id: uuid.UUID
    prompt: str
    priority: int
    status: JobStatus
    retry_count: int
    max_retries: int
    error_message: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    run_at: datetime
    heartbeat_at: datetime | None
    worker_id: str | None
    lease_token: uuid.UUID | None
    attempt: int
    end_reason: str | None
    idempotency_key: str | None = None
    cancel_requested_at: datetime | None = None
    output: str | None = None
    waiting_for: WaitingFor | None = None

    def __post_init__(self) -> None:
        _words(self)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class JobDetail:
    """A job with every attempt and its first progress events, as a job's page shows it."""

    job: JobRow
    attempts: list[AttemptRow]
    events: list[Event]
    events_truncated: bool  # more events than were read

    def as_dict(self) -> dict[str, Any]:
        """The whole as one JSON-ready object of plain values, without the lease token (the
        attempt's fence, which no reader needs)."""
        job = self.job.as_dict()
        del job["lease_token"]
        return {
            "job": job,
            "attempts": [_fields(a) for a in self.attempts],
            "events": [_fields(e) for e in self.events],
            "events_truncated": self.events_truncated,
        }


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def _fields(record: AttemptRow | Event) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered job, as the dead-letter list shows it."""

    id: uuid.UUID
    session_id: uuid.UUID
    priority: int
    retry_count: int
    max_retries: int
    error_message: str | None
    end_reason: str | None
    completed_at: datetime | None
    prompt_head: str

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class JobSummary:
    """A job as the job lists show it: its state, and the heads of its prompt and error."""

    id: uuid.UUID
    session_id: uuid.UUID
    status: JobStatus
    priority: int
    attempt: int
    retry_count: int
    max_retries: int
    created_at: datetime
    updated_at: datetime
    run_at: datetime
    completed_at: datetime | None
    worker_id: str | None
    end_reason: str | None
    error_head: str | None
    waiting_for: WaitingFor | None
    cancel_requested_at: datetime | None
    prompt_head: str

    def __post_init__(self) -> None:
        _words(self)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def state_note(self, when: Callable[[datetime], str], none: str = "-") -> str:
        """What the job is doing or waiting for, or how it ended; `when` writes a time."""
        if self.status == JobStatus.PROCESSING:
            cancel = ", cancel requested" if self.cancel_requested_at else ""
            return f"attempt {self.attempt} on {self.worker_id or none}{cancel}"
        if self.status == JobStatus.PENDING:
            if self.waiting_for == WaitingFor.SESSION:
                return "waits for its session"
            if self.waiting_for == WaitingFor.USER:
                return "waits for its user's limit"
            if self.waiting_for == WaitingFor.RUN_AT:
                return f"due at {when(self.run_at)}"
            return "ready"
        return self.end_reason or none


def _words(row: JobRow | JobSummary) -> None:
    """Read a row's status and waiting_for as the words they are (the database's CHECKs
    hold them to these sets), so that what compares them is typed."""
    object.__setattr__(row, "status", JobStatus(row.status))
    if row.waiting_for is not None:
        object.__setattr__(row, "waiting_for", WaitingFor(row.waiting_for))


@dataclass(frozen=True)
class RunningJobRow:
    """A processing job and the worker that holds it (idle workers hold none)."""

    worker_id: str | None
    job_id: uuid.UUID
    session_id: uuid.UUID
    attempt: int
    started_at: datetime | None
    heartbeat_at: datetime | None
    heartbeat_age_seconds: float | None
    cancel_requested_at: datetime | None
    prompt_head: str

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class MinuteCount:
    """The jobs that ended in one minute (starting at `minute`), by how they ended."""

    minute: datetime
    completed: int
    dead_lettered: int
    cancelled: int


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """The queue's configuration as every role may read it, and the schema version.

    A retention of None keeps those jobs forever.
    """

    schema_version: int | None
    heartbeat_timeout: timedelta
    retain_completed: timedelta | None
    retain_failed: timedelta | None
    backoff_base: timedelta
    backoff_cap: timedelta
    backoff_jitter: float
    # of the repeatable files applied (files.repeatables_checksum); None before they were
    functions_checksum: str | None
    # the caps (None before migration 0010)
    max_events_per_attempt: int | None = None
    max_event_bytes_per_attempt: int | None = None
    max_releases_per_job: int | None = None
    # users without a limit of their own (None: no limit; before migration 0012 too)
    user_max_concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """The settings an operator changes, in seconds; None leaves one unchanged.

    A retention of 0 keeps those jobs forever; a user_max_concurrency of 0 is no limit.
    """

    backoff_base: float | None = None
    backoff_cap: float | None = None
    backoff_jitter: float | None = None
    heartbeat_timeout: float | None = None
    retain_completed: float | None = None
    retain_failed: float | None = None
    max_events_per_attempt: int | None = None
    max_event_bytes_per_attempt: int | None = None
    max_releases_per_job: int | None = None
    user_max_concurrency: int | None = None  # 0: no limit

    @property
    def empty(self) -> bool:
        return all(getattr(self, name) is None for name in self.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class LockHolder:
    """A session holding a lock that another waits for."""

    pid: int
    user_name: str | None
    application_name: str | None


@dataclass(frozen=True, slots=True)
class PlantedObject:
    """An object of schema public that a role other than the migrating one could have
    planted: its kind (function, operator, table), its name and its owner."""

    kind: str
    name: str
    owner: str


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    """A migration the database has applied, as recorded."""

    version: int
    name: str
    checksum: str


@dataclass(frozen=True)
class SqlFunction:
    """A function of the queue's schema, as the catalog names it."""

    oid: int
    signature: str


@dataclass(frozen=True)
class DoctorRow:
    """One row a doctor check found; `total` is how many rows the check found in all."""

    total: int
    job_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None
    worker_id: str | None = None
    silent_seconds: float | None = None
    retry_count: int | None = None
    max_retries: int | None = None
    function: str | None = None


@dataclass(frozen=True)
class SweepBatch:
    """One call of queue_sweep: the expired attempts it looked at, what it pruned, the
    limits it applied and the retries waiting; `more` when a batch was full."""

    reaped: list[Reaped]
    pruned: dict[JobStatus, int]
    more: bool
    waiting_retries: int
    next_retry_at: datetime | None
    heartbeat_timeout: timedelta
    retain_completed: timedelta | None
    retain_failed: timedelta | None


@dataclass(frozen=True, slots=True)
class UserRow:
    """A user the queue knows (queue_user_list()); user_id None: the sessions with no user."""

    user_id: uuid.UUID | None
    max_concurrency: int | None  # the limit in force; None: none
    limit_source: LimitSource | None  # whose the limit is; None: no limit

    def __post_init__(self) -> None:
        if self.limit_source is not None:
            object.__setattr__(self, "limit_source", LimitSource(self.limit_source))

    running: int
    ready: int  # pending jobs that may start
    waiting: int  # pending jobs that wait for the user's limit
    last_started_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class UserWaiting:
    """A user with jobs waiting for its limit, as the status page shows it."""

    user_id: uuid.UUID
    waiting: int
    running: int

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}
