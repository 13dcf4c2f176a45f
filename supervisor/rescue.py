"""The parent's own database work: the fast path for a dead worker's job, and drain checks.

The parent keeps no connection open: it connects when a worker dies holding a
job, so nothing it owns is ever inherited by a worker it forks later.
"""

from __future__ import annotations

import logging

import psycopg

from supervisor import clock, db
from supervisor.errors import DatabaseUnavailableError
from supervisor.finish import record_failure
from supervisor.logs import event
from supervisor.settings import Settings
from supervisor.slots import Holding
from supervisor.sqlfiles import query

log = logging.getLogger(__name__)
CONNECT_TIMEOUT = 2


class Rescuer:
    """Fails (or, at shutdown, releases) the job a dead worker held, with its lease."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def rescue(self, holding: Holding, reason: str, message: str) -> None:
        """Record the end of `holding`'s attempt now, instead of after the heartbeat timeout."""
        fields = {"job_id": str(holding.job_id), "attempt": holding.attempt,
                  "duration_ms": round((clock.monotonic() - holding.started) * 1000, 1)}
        try:
            with db.connect(self.settings.database_url, application_name="mobvibe-supervisor",
                            connect_timeout=CONNECT_TIMEOUT) as conn:
                if reason == "released":
                    self._release(conn, holding, fields)
                else:
                    event(log, logging.WARNING, "job_rescued",
                          f"failing the attempt of a dead worker: {message}", reason=reason,
                          **fields)
                    record_failure(conn, holding.job_id, holding.lease_token, message, reason,
                                   fields)
        except (DatabaseUnavailableError, psycopg.Error) as exc:
            event(log, logging.ERROR, "rescue_failed",
                  "cannot reach the database; the reaper will requeue the job", error=str(exc),
                  **fields)

    def _release(self, conn: psycopg.Connection[object], holding: Holding,
                 fields: dict[str, object]) -> None:
        from supervisor import metrics  # noqa: PLC0415

        row = conn.execute(query("release_job"), {"job_id": holding.job_id,
                                                  "lease_token": holding.lease_token,
                                                  "reason": "released at shutdown"}).fetchone()
        if row and row[0]:
            metrics.ENDED["released"].inc()
            event(log, logging.INFO, "job_released", "job given back at shutdown", **fields)

    def queue_is_empty(self) -> bool:
        """True when no job is pending or processing (for --drain)."""
        try:
            with db.connect(self.settings.database_url, application_name="mobvibe-supervisor",
                            connect_timeout=CONNECT_TIMEOUT) as conn:
                row = conn.execute(query("queue_stats")).fetchone()
        except (DatabaseUnavailableError, psycopg.Error):
            return False
        return row is not None and row[0] == 0 and row[1] == 0
