"""The parent's own database work: the fast path for a dead worker's job, and drain checks.

The parent keeps no connection open: it connects when a worker dies holding a
job, so nothing it owns is ever inherited by a worker it forks later.
"""

from __future__ import annotations

import logging
import uuid

import psycopg

from mobvibe import clock, metrics
from mobvibe.errors import DatabaseUnavailableError
from mobvibe.logs import event
from mobvibe.sql import db, store
from mobvibe.supervisor.finish import record_failure
from mobvibe.supervisor.settings import Settings
from mobvibe.supervisor.slots import Holding

log = logging.getLogger(__name__)
CONNECT_TIMEOUT = 2
UNSTARTED = "worker exited before starting the job"


class Rescuer:
    """Fails (or, at shutdown, releases) the job a dead worker held, with its lease."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def rescue(self, holding: Holding, reason: str, message: str) -> None:
        """Record the end of `holding`'s attempt now, instead of after the heartbeat timeout."""
        fields = {
            "job_id": str(holding.job_id),
            "attempt": holding.attempt,
            "duration_ms": round((clock.monotonic() - holding.started) * 1000, 1),
        }
        try:
            with db.connect(
                self.settings.database_url,
                application_name="mobvibe-supervisor",
                connect_timeout=CONNECT_TIMEOUT,
            ) as conn:
                if reason == "released":
                    self._release(conn, holding.job_id, holding.lease_token, fields)
                else:
                    event(
                        log,
                        logging.WARNING,
                        "job_rescued",
                        f"failing the attempt of a dead worker: {message}",
                        reason=reason,
                        **fields,
                    )
                    record_failure(
                        conn,
                        holding.job_id,
                        holding.lease_token,
                        message,
                        reason,
                        fields,
                        by_holder=False,
                    )
        except (DatabaseUnavailableError, psycopg.Error) as exc:
            event(
                log,
                logging.ERROR,
                "rescue_failed",
                "cannot reach the database; the reaper will requeue the job",
                error=str(exc),
                **fields,
            )

    def release_unstarted(self, worker_id: str, holding: Holding | None) -> None:
        """Give back, not counted as a failure, the jobs a dead worker claimed but never started.

        A claim commits before its worker hears of it: a worker killed while
        its claim (or complete-and-claim) commit was in flight leaves a job
        `processing` under its worker_id that its slot never showed, so no
        handler ever ran it. Left alone, it would wait for the heartbeat
        timeout and then count as a failed attempt (and a job with
        max_retries 1 would be dead-lettered without ever running).
        """
        started = holding.job_id if holding is not None else None
        try:
            with db.connect(
                self.settings.database_url,
                application_name="mobvibe-supervisor",
                connect_timeout=CONNECT_TIMEOUT,
            ) as conn:
                for claim in store.claims_of_worker(conn, worker_id):
                    if claim.job_id != started:
                        self._release(
                            conn,
                            claim.job_id,
                            claim.lease_token,
                            {"job_id": str(claim.job_id), "worker": worker_id},
                            reason=UNSTARTED,
                            name="unstarted_job_released",
                            message="job given back: its worker died before starting it",
                        )
        except (DatabaseUnavailableError, psycopg.Error) as exc:
            event(
                log,
                logging.ERROR,
                "rescue_failed",
                "cannot reach the database; the reaper will requeue the worker's claims",
                error=str(exc),
                worker=worker_id,
            )

    def _release(
        self,
        conn: psycopg.Connection[object],
        job_id: uuid.UUID,
        lease_token: uuid.UUID,
        fields: dict[str, object],
        reason: str = "released at shutdown",
        name: str = "job_released",
        message: str = "job given back at shutdown",
    ) -> None:
        if store.release(conn, job_id, lease_token, reason):
            metrics.ENDED["released"].inc()
            event(log, logging.INFO, name, message, **fields)

    def queue_is_empty(self) -> bool:
        """True when no job is pending or processing (for --drain)."""
        try:
            with db.connect(
                self.settings.database_url,
                application_name="mobvibe-supervisor",
                connect_timeout=CONNECT_TIMEOUT,
            ) as conn:
                stats = store.stats(conn)
        except (DatabaseUnavailableError, psycopg.Error):
            return False
        return stats.pending_count == 0 and stats.processing_count == 0
