"""Finishing an attempt: complete (and claim the next), fail, or release, with its lease."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psycopg

from mobvibe import clock, metrics
from mobvibe.errors import DatabaseUnavailableError
from mobvibe.logs import event
from mobvibe.sql import db, store
from mobvibe.sql.jobs import Job
from mobvibe.supervisor.handlers import Outcome

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
        _lease_lost(fields)
        return None
    if outcome.ok:
        return _complete(conn, worker_id, job, chain, fields)
    if outcome.reason == "released":
        if store.release(conn, job.id, job.lease_token, "released at shutdown"):
            metrics.ENDED["released"].inc()
            event(log, logging.INFO, "job_released", "job given back at shutdown", **fields)
        else:
            _lease_lost(fields)
        return None
    record_failure(conn, job.id, job.lease_token, outcome.error, outcome.reason, fields)
    return None


def _complete(
    conn: psycopg.Connection[Any], worker_id: str, job: Job, chain: bool, fields: dict[str, Any]
) -> Job | None:
    if chain:
        chained = store.complete_and_claim(conn, job.id, job.lease_token, worker_id)
        completed, next_job = chained.completed, chained.next_job
    else:
        completed, next_job = store.complete(conn, job.id, job.lease_token), None
    if completed:
        metrics.JOBS_COMPLETED.inc()
        metrics.ENDED["completed"].inc()
        event(log, logging.INFO, "job_completed", "job completed", **fields)
    else:
        _lease_lost(fields)
    return next_job


def record_failure(
    conn: psycopg.Connection[Any],
    job_id: Any,
    lease_token: Any,
    error: str,
    reason: str,
    fields: dict[str, Any],
    *,
    by_holder: bool = True,
) -> bool | None:
    """fail_job with the lease; counts and logs the retry or dead letter. None: lease lost.

    `by_holder` False: the supervisor fails a dead worker's attempt, which may
    have ended already (completed just before the death); that is no lost lease.
    """
    will_retry = store.fail(conn, job_id, error, lease_token, reason)
    if will_retry is None:
        if by_holder:
            _lease_lost(fields)
        else:
            event(
                log,
                logging.INFO,
                "rescue_not_needed",
                "the dead worker's attempt had already ended",
                **fields,
            )
        return None
    metrics.JOBS_FAILED.inc()
    metrics.ATTEMPTS_ENDED.inc(label=reason)
    if will_retry:
        metrics.JOBS_RETRIED.inc()
        event(
            log,
            logging.WARNING,
            "job_retry_scheduled",
            f"attempt failed: {error}",
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
    return bool(will_retry)


def _lease_lost(fields: dict[str, Any]) -> None:
    metrics.LEASES_LOST.inc()
    metrics.ENDED["lease_lost"].inc()
    event(
        log,
        logging.WARNING,
        "lease_lost",
        "the job's lease was taken away; result dropped",
        **fields,
    )
