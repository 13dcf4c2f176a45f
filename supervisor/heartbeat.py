"""The worker's heartbeat thread: renews the lease of the running job on a connection of its own."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from mobvibe import clock, metrics
from mobvibe.errors import DatabaseUnavailableError
from mobvibe.logs import event
from mobvibe.sql import db, store

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """One persistent thread per worker; track() and untrack() say which job to renew.

    on_lost(reason) is called from this thread when the job is no longer ours:
    "lease_lost" when the database refused the lease, "self_fenced" when the
    lease could not be renewed for `fence_after` seconds.
    """

    def __init__(
        self,
        url: str,
        interval: float,
        fence_after: float,
        on_lost: Callable[[str], None],
        on_renewed: Callable[[float], None],
    ) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.url = url
        self.interval = interval
        self.fence_after = fence_after
        self.on_lost = on_lost
        self.on_renewed = on_renewed
        self._job: tuple[uuid.UUID, uuid.UUID] | None = None
        self._last_ok = clock.monotonic()
        self._stopped = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None

    def track(self, job_id: uuid.UUID, lease_token: uuid.UUID) -> None:
        """Renew this job's lease from now on (its claim just renewed it)."""
        self._last_ok = clock.monotonic()
        self._job = (job_id, lease_token)

    def untrack(self) -> None:
        """The job is finished: stop renewing it."""
        self._job = None

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            job = self._job
            if job is not None:
                self._beat(job)
        if self._conn is not None:
            self._conn.close()

    def _beat(self, job: tuple[uuid.UUID, uuid.UUID]) -> None:
        renewed = self._renew(job)
        if self._job != job:
            return  # finished while we were renewing: nothing to decide
        now = clock.monotonic()
        if renewed:
            self._last_ok = now
            self.on_renewed(now)
        elif renewed is False:
            event(
                log,
                logging.WARNING,
                "lease_lost",
                "the job's lease was taken away",
                job_id=str(job[0]),
            )
            self.on_lost("lease_lost")
        elif now - self._last_ok > self.fence_after:
            event(
                log,
                logging.ERROR,
                "self_fenced",
                "cannot renew the lease: stopping the job before another worker gets it",
                job_id=str(job[0]),
                seconds_without_lease=round(now - self._last_ok, 1),
            )
            self.on_lost("self_fenced")

    def _renew(self, job: tuple[uuid.UUID, uuid.UUID]) -> bool | None:
        """True renewed, False lease lost, None the database could not be reached."""
        try:
            if self._conn is None or self._conn.closed:
                # A lost heartbeat only ages the lease: no need to wait for the disk.
                self._conn = db.connect(
                    self.url,
                    application_name="mobvibe-heartbeat",
                    connect_timeout=max(1, int(self.interval)),
                    options="-c synchronous_commit=off",
                )
            return store.heartbeat(self._conn, job[0], job[1])
        except (psycopg.Error, OSError, DatabaseUnavailableError) as exc:
            metrics.HEARTBEAT_FAILURES.inc()
            event(
                log,
                logging.WARNING,
                "heartbeat_failed",
                "cannot renew the lease",
                job_id=str(job[0]),
                error=str(exc).splitlines()[0] if str(exc) else "",
            )
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            return None
