"""The parent's own database work: the fast path for a dead worker's job.

The parent keeps no connection open: it connects when a worker dies holding a
job (after killing what ran of it), so nothing it owns is ever inherited by a
worker it forks later.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import psycopg

from mobvibe import clock
from mobvibe.errors import DatabaseUnavailableError
from mobvibe.logs import event
from mobvibe.sql import db, store
from mobvibe.sql.jobs import lease_token
from mobvibe.supervisor.finish import note_retry, record_end
from mobvibe.supervisor.settings import Settings
from mobvibe.supervisor.slots import Holding
from mobvibe.vocabulary import EndReason

log = logging.getLogger(__name__)
CONNECT_TIMEOUT = 2
# The parent's loop waits for a rescue: a statement that waits for a row another
# transaction holds locked (a cancel left open) is given up, and the reaper ends
# the attempt once its lease has expired.
STATEMENT_TIMEOUT_MS = 2000
UNSTARTED = "worker exited before starting the job"


class Rescuer:
    """Ends, with its lease, the attempt of a job a dead worker held."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[object]]:
        """A connection in a transaction whose statements give up after a while."""
        conn = db.connect(
            self.settings.database_url,
            application_name="mobvibe-supervisor",
            pooled=self.settings.pooled,
            connect_timeout=CONNECT_TIMEOUT,
        )
        with conn, conn.transaction():
            store.local_statement_timeout(conn, STATEMENT_TIMEOUT_MS)
            yield conn

    def rescue(self, holding: Holding, reason: EndReason, message: str) -> None:
        """Record the end of `holding`'s attempt now, instead of after the heartbeat timeout.

        `reason` RELEASED gives the job back uncounted; CANCELLED records the
        cancel its worker did not finish; any other is a failed attempt (which
        ends cancelled too when a cancel was requested).
        """
        fields = {
            "job_id": str(holding.job_id),
            "attempt": holding.attempt,
            "duration_ms": round((clock.monotonic() - holding.started) * 1000, 1),
        }
        if reason not in (EndReason.RELEASED, EndReason.CANCELLED):
            event(
                log,
                logging.WARNING,
                "job_rescued",
                f"ending the attempt of a dead worker: {message}",
                reason=reason,
                **fields,
            )
        try:
            with self._transaction() as conn:
                status = store.end_attempt(
                    conn, holding.job_id, holding.lease_token, reason, message
                )
                note_retry(conn, status, reason, holding.job_id, fields)
        except (DatabaseUnavailableError, psycopg.Error) as exc:
            event(
                log,
                logging.ERROR,
                "rescue_failed",
                "cannot end the attempt here; the reaper will requeue the job",
                error=db.first_line(exc),
                **fields,
            )
            return
        record_end(status, reason, message, fields, by_holder=False)

    def release_unstarted(self, worker_id: str, holding: Holding | None) -> None:
        """Give back, not counted as a failure, the jobs a dead worker claimed but never started.

        A claim commits before its worker hears of it: a worker killed while
        its claim (or end-and-claim) commit was in flight leaves a job
        `processing` under its worker_id that its slot never showed, so no
        handler ever ran it. Left alone, it would wait for the heartbeat
        timeout and then count as a failed attempt (and a job with
        max_retries 1 would be dead-lettered without ever running).
        """
        started = holding.job_id if holding is not None else None
        try:
            with self._transaction() as conn:
                for claim in store.claims_of_worker(conn, worker_id):
                    if claim.job_id == started:
                        continue
                    token = lease_token(self.settings.lease_key, claim.job_id, claim.attempt)
                    status = store.end_attempt(
                        conn, claim.job_id, token, EndReason.RELEASED, UNSTARTED
                    )
                    if status is not None:
                        event(
                            log,
                            logging.INFO,
                            "unstarted_job_released",
                            "job given back: its worker died before starting it",
                            job_id=str(claim.job_id),
                            worker=worker_id,
                        )
        except (DatabaseUnavailableError, psycopg.Error) as exc:
            event(
                log,
                logging.ERROR,
                "rescue_failed",
                "cannot give the claims back here; the reaper will requeue them",
                error=db.first_line(exc),
                worker=worker_id,
            )
