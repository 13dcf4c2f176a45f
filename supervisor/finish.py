"""Ending an attempt with its lease (and claiming the next in the same round trip)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum, auto
from typing import Any, Literal

import psycopg

from mobvibe import clock, metrics
from mobvibe.errors import DatabaseUnavailableError
from mobvibe.logs import event, iso_time
from mobvibe.sql import db, store
from mobvibe.sql.jobs import Job
from mobvibe.supervisor.attempt import Outcome
from mobvibe.vocabulary import EndReason, JobStatus

log = logging.getLogger(__name__)
Connect = Callable[[], psycopg.Connection[Any]]
FIRST_RETRY = 0.1


def finish_job(
    connect: Connect,
    worker_id: str,
    job: Job,
    outcome: Outcome,
    duration: float,
    chain: bool,
    retry_for: float,
    lease_key: uuid.UUID | None = None,
) -> Job | None:
    """Record how `job` ended; with `chain` (a completion) also claim the next job.

    A connection lost on the way is retried with the same fenced statement,
    which is safe to repeat, for up to `retry_for` seconds; after that the
    reaper gets the job back.
    """
    deadline = clock.monotonic() + retry_for
    delay = FIRST_RETRY
    while True:
        try:
            return _finish_once(connect(), worker_id, job, outcome, duration, chain, lease_key)
        except (psycopg.OperationalError, psycopg.InterfaceError, DatabaseUnavailableError) as exc:
            if delay == FIRST_RETRY:
                event(
                    log,
                    logging.WARNING,
                    "finish_retrying",
                    "database connection lost while finishing a job; retrying",
                    worker=worker_id,
                    job_id=str(job.id),
                    error=db.first_line(exc),
                )
            if clock.monotonic() + delay > deadline:
                raise
            clock.sleep(delay)
            delay = min(delay * 2, 2.0)


def _finish_once(
    conn: psycopg.Connection[Any],
    worker_id: str,
    job: Job,
    outcome: Outcome,
    duration: float,
    chain: bool,
    lease_key: uuid.UUID | None,
) -> Job | None:
    metrics.JOB_DURATION.observe(duration)
    fields = {
        "worker": worker_id,
        "job_id": str(job.id),
        "session_id": str(job.session_id),
        "attempt": job.attempt,
        "duration_ms": round(duration * 1000, 1),
    }
    if outcome.reason == EndReason.LEASE_LOST:
        record_end(None, outcome.reason, outcome.error, fields)
        return None
    reason = EndReason.COMPLETED if outcome.ok else outcome.reason
    error = None if outcome.ok else outcome.error
    if chain:
        ended = store.end_and_claim(
            conn, job.id, job.lease_token, reason, error, outcome.output, worker_id, lease_key
        )
        status, next_job = ended.status, ended.next_job
    else:
        status = store.end_attempt(conn, job.id, job.lease_token, reason, error, outcome.output)
        next_job = None
    note_retry(conn, status, reason, job.id, fields)
    record_end(status, reason, error, fields)
    return next_job


def note_retry(
    conn: psycopg.Connection[Any],
    status: JobStatus | None,
    reason: EndReason,
    job_id: uuid.UUID,
    fields: dict[str, Any],
) -> None:
    """Add when a retried job runs again (`retry_at`) to the fields of its log line.

    One read, on failures that will be retried only; the log line goes out without the
    time if the read fails (the attempt's end is already committed).
    """
    if status != JobStatus.PENDING or reason == EndReason.RELEASED:
        return
    try:
        at = store.retry_at(conn, job_id)
    except psycopg.Error:
        return
    if at is not None:
        fields["retry_at"] = iso_time(at.timestamp())


class Ending(StrEnum):
    """What became of an attempt whose end was recorded (or refused)."""

    COMPLETED = auto()
    CANCELLED = auto()
    RELEASED = auto()  # given back, not counted as a failure
    RETRIED = auto()  # a failed attempt; the job waits for its retry
    DEAD_LETTERED = auto()  # a failed attempt, the last one
    LEASE_LOST = auto()  # the database refused the holder's lease
    ALREADY_ENDED = auto()  # a dead worker's attempt had ended before the rescue


@dataclass(frozen=True)
class Report:
    """How one kind of end is counted and logged."""

    event: str
    level: int
    message: str  # may name {error} and {retry_at}
    counters: tuple[metrics.Counter, ...] = ()
    counted: bool = True  # in mobvibe_attempts_ended ...
    label: EndReason | None = None  # ... by this reason (None: the attempt's own, a failure's)
    fields: tuple[Literal["reason", "why"], ...] = ()  # the attempt's reason, a release's error


REPORTS = {
    Ending.COMPLETED: Report(
        event="job_completed",
        level=logging.INFO,
        message="job completed",
        counters=(metrics.JOBS_COMPLETED,),
        label=EndReason.COMPLETED,
    ),
    Ending.CANCELLED: Report(
        event="job_cancelled",
        level=logging.INFO,
        message="job cancelled as requested",
        label=EndReason.CANCELLED,
        fields=("reason",),
    ),
    Ending.RELEASED: Report(
        event="job_released",
        level=logging.INFO,
        message="job given back",
        label=EndReason.RELEASED,
        fields=("why",),
    ),
    Ending.RETRIED: Report(
        event="job_retry_scheduled",
        level=logging.WARNING,
        message="attempt failed, retry at {retry_at}: {error}",
        counters=(metrics.JOBS_FAILED, metrics.JOBS_RETRIED),
        fields=("reason",),
    ),
    Ending.DEAD_LETTERED: Report(
        event="job_dead_lettered",
        level=logging.ERROR,
        message="attempts exhausted: {error}",
        counters=(metrics.JOBS_FAILED, metrics.JOBS_DEAD_LETTERED),
        fields=("reason",),
    ),
    Ending.LEASE_LOST: Report(
        event="lease_lost",
        level=logging.WARNING,
        message="the job's lease was taken away; result dropped",
        counters=(metrics.LEASES_LOST,),
        label=EndReason.LEASE_LOST,
    ),
    Ending.ALREADY_ENDED: Report(
        event="rescue_not_needed",
        level=logging.INFO,
        message="the dead worker's attempt had already ended",
        counted=False,
    ),
}
# What became of an attempt whose job left processing, by the job's new status.
AFTER = {
    JobStatus.COMPLETED: Ending.COMPLETED,
    JobStatus.CANCELLED: Ending.CANCELLED,
    JobStatus.FAILED: Ending.DEAD_LETTERED,
}


def ending(status: JobStatus | None, reason: EndReason, *, by_holder: bool = True) -> Ending:
    """What became of an attempt, from the job's new status (None: nothing changed)."""
    if status is None:
        return Ending.LEASE_LOST if by_holder else Ending.ALREADY_ENDED
    if status == JobStatus.PENDING:
        return Ending.RELEASED if reason == EndReason.RELEASED else Ending.RETRIED
    return AFTER[status]


def record_end(
    status: JobStatus | None,
    reason: EndReason,
    error: str | None,
    fields: dict[str, Any],
    *,
    by_holder: bool = True,
) -> None:
    """Count and log how an attempt ended, from the job's new status (None: nothing changed).

    `by_holder` False: the supervisor ended a dead worker's attempt, which may
    have ended already (completed just before the death); that is no lost lease.
    """
    report = REPORTS[ending(status, reason, by_holder=by_holder)]
    for counter in report.counters:
        counter.inc()
    if report.counted:
        metrics.ENDED[report.label or reason].inc()
    extra = {"reason": reason, "why": error}
    message = report.message.format(error=error, retry_at=fields.get("retry_at", "its backoff"))
    event(
        log,
        report.level,
        report.event,
        message,
        **{name: extra[name] for name in report.fields},
        **fields,
    )
