"""Ending an attempt with its lease (and claiming the next in the same round trip)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from mobvibe import clock, metrics
from mobvibe.errors import DatabaseUnavailableError
from mobvibe.logs import event, iso_time
from mobvibe.sql import db, store
from mobvibe.sql.jobs import Job
from mobvibe.supervisor.attempt import Outcome

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
            return _finish_once(connect(), worker_id, job, outcome, duration, chain)
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
) -> Job | None:
    metrics.JOB_DURATION.observe(duration)
    fields = {
        "worker": worker_id,
        "job_id": str(job.id),
        "session_id": str(job.session_id),
        "attempt": job.attempt,
        "duration_ms": round(duration * 1000, 1),
    }
    if outcome.reason == "lease_lost":
        record_end(None, outcome.reason, outcome.error, fields)
        return None
    reason = "completed" if outcome.ok else outcome.reason
    error = None if outcome.ok else outcome.error
    if chain:
        ended = store.end_and_claim(
            conn, job.id, job.lease_token, reason, error, outcome.output, worker_id
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
    status: str | None,
    reason: str,
    job_id: uuid.UUID,
    fields: dict[str, Any],
) -> None:
    """Add when a retried job runs again (`retry_at`) to the fields of its log line.

    One read, on failures that will be retried only; the log line goes out without the
    time if the read fails (the attempt's end is already committed).
    """
    if status != "pending" or reason == "released":
        return
    try:
        at = store.retry_at(conn, job_id)
    except psycopg.Error:
        return
    if at is not None:
        fields["retry_at"] = iso_time(at.timestamp())


def record_end(
    status: str | None,
    reason: str,
    error: str | None,
    fields: dict[str, Any],
    *,
    by_holder: bool = True,
) -> None:
    """Count and log how an attempt ended, from the job's new status (None: nothing changed).

    `by_holder` False: the supervisor ended a dead worker's attempt, which may
    have ended already (completed just before the death); that is no lost lease.
    """
    if status is None:
        if by_holder:
            metrics.LEASES_LOST.inc()
            metrics.ENDED["lease_lost"].inc()
            event(
                log,
                logging.WARNING,
                "lease_lost",
                "the job's lease was taken away; result dropped",
                **fields,
            )
        else:
            event(
                log,
                logging.INFO,
                "rescue_not_needed",
                "the dead worker's attempt had already ended",
                **fields,
            )
        return
    if status == "completed":
        metrics.JOBS_COMPLETED.inc()
        metrics.ENDED["completed"].inc()
        event(log, logging.INFO, "job_completed", "job completed", **fields)
    elif status == "cancelled":
        metrics.ENDED["cancelled"].inc()
        event(
            log,
            logging.INFO,
            "job_cancelled",
            "job cancelled as requested",
            reason=reason,
            **fields,
        )
    elif status == "pending" and reason == "released":
        metrics.ENDED["released"].inc()
        event(log, logging.INFO, "job_released", "job given back", why=error, **fields)
    else:
        metrics.JOBS_FAILED.inc()
        metrics.ATTEMPTS_ENDED.inc(label=reason)
        if status == "pending":
            metrics.JOBS_RETRIED.inc()
            event(
                log,
                logging.WARNING,
                "job_retry_scheduled",
                f"attempt failed, retry at {fields.get('retry_at', 'its backoff')}: {error}",
                reason=reason,
                **fields,
            )
        else:
            metrics.JOBS_DEAD_LETTERED.inc()
            event(
                log,
                logging.ERROR,
                "job_dead_lettered",
                f"attempts exhausted: {error}",
                reason=reason,
                **fields,
            )
