"""A worker process: wait for work, claim one job, run it, finish it with its lease; again."""

from __future__ import annotations

import logging
import os
import random
import select
import signal
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from mobvibe import clock, metrics
from mobvibe.errors import DatabaseUnavailableError
from mobvibe.logs import event
from mobvibe.sql import db, store
from mobvibe.sql.jobs import Job
from mobvibe.sql.notify import listen
from mobvibe.supervisor import contain, finish
from mobvibe.supervisor.handlers import Aborted, Handler, Outcome
from mobvibe.supervisor.heartbeat import Heartbeat
from mobvibe.supervisor.policy import EXIT_FENCED, EXIT_LEASE_LOST, EXIT_OK
from mobvibe.supervisor.settings import Settings
from mobvibe.supervisor.slots import Holding, Slots

log = logging.getLogger(__name__)
RELEASED = Outcome(False, "released at shutdown", "released")
LEASE_LOST = Outcome(False, "the job's lease was taken away", "lease_lost")

RECONNECT_DELAY_MAX = 5.0
IDLE_RECHECK = 0.1  # a due job that another transaction holds: look again soon


class Worker:
    """The loop of one worker process. Signals: TERM stop after this job, USR1 release now."""

    def __init__(self, settings: Settings, index: int, slots: Slots, handler: Handler) -> None:
        self.settings = settings
        self.index = index
        self.slots = slots
        self.handler = handler
        self.pid = os.getpid()
        self.worker_id = settings.worker_id(index, self.pid)
        self.conn: psycopg.Connection[Any] | None = None
        self.connections = 0  # made so far: the first is not a reconnection
        self.stopping = False
        self.releasing = False
        self.wake_pending = True  # poll once at start
        self.jobs_done = 0
        self.current: Job | None = None
        self.in_handler = False
        self.lost_reason: str | None = None
        self.holding: Holding | None = None
        self._wakeup_r, self._wakeup_w = os.pipe()
        self.heartbeat = Heartbeat(
            settings.database_url,
            settings.heartbeat_interval,
            settings.fence_after,
            self._on_lost,
            self._on_renewed,
        )

    # -- process life ----------------------------------------------------------

    def run(self) -> int:
        """Work until told to stop; return the process exit code."""
        self._install_signals()
        # Processes a job leaves behind come back to us, not to init: the end of
        # each attempt kills them (contain.py).
        contain.become_subreaper()
        self.heartbeat.start()
        event(log, logging.INFO, "worker_started", "worker ready", worker=self.worker_id)
        job: Job | None = None
        while not self.stopping:
            try:
                job = job or self._next_job()
                if job is not None:
                    job = self._process(job)
            except (
                psycopg.OperationalError,
                psycopg.InterfaceError,
                DatabaseUnavailableError,
            ) as exc:
                # A database outage is waited out here, not by exiting: a worker that
                # exits is restarted at once and fails again, and a few of those in a
                # row look like a crash loop that stops the whole supervisor.
                job = None
                self._connection_lost(exc)
        if job is not None:
            self._give_back(job)
        self.heartbeat.stop()
        event(
            log,
            logging.INFO,
            "worker_stopped",
            "worker stopped",
            worker=self.worker_id,
            jobs=self.jobs_done,
        )
        return EXIT_OK

    def _give_back(self, job: Job) -> None:
        """Release a job claimed with the last completion but not started: we are stopping."""
        try:
            store.release(self._db(), job.id, job.lease_token, "released at shutdown")
        except (psycopg.OperationalError, psycopg.InterfaceError, DatabaseUnavailableError):
            return  # its heartbeat stops with us: the reaper requeues it
        event(
            log,
            logging.INFO,
            "job_released",
            "claimed job given back unstarted",
            worker=self.worker_id,
            job_id=str(job.id),
            attempt=job.attempt,
        )

    def _install_signals(self) -> None:
        os.set_blocking(self._wakeup_w, False)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGUSR1, self._on_release)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C means
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def _on_release(self, signum: int, frame: Any) -> None:
        self.stopping = self.releasing = True
        if self.current is not None and not self.handler.abort(RELEASED) and self.in_handler:
            raise Aborted("released at shutdown")

    def _on_lost(self, reason: str) -> None:
        """From the heartbeat thread: the running job is no longer ours."""
        self.lost_reason = reason
        # At once, not after a grace: the next attempt may start elsewhere soon.
        if not self.handler.abort(LEASE_LOST, grace=0.0):
            # A Python handler cannot be stopped from another thread: end the
            # process; the parent starts a fresh worker.
            os._exit(EXIT_LEASE_LOST if reason == "lease_lost" else EXIT_FENCED)

    def _on_renewed(self, now: float) -> None:
        self.slots.heartbeat_ok(self.index, now)

    # -- database --------------------------------------------------------------

    def _db(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            options = [str(conninfo_to_dict(self.settings.database_url).get("options", ""))]
            if not self.settings.durable_completions:
                options.append("-c synchronous_commit=off")
            if not self.settings.status_notifications:
                options.append("-c mobvibe.status_notify=off")  # read by the trigger's WHEN
            extra: dict[str, Any] = {"options": " ".join(options).strip()} if any(options) else {}
            self.conn = db.connect(
                self.settings.database_url, application_name="mobvibe-worker", **extra
            )
            self.conn.add_notify_handler(self._on_notify)
            listen(self.conn, ["new_job"])
            self.wake_pending = True  # notifications may have been missed: poll now
            if self.connections:
                event(
                    log,
                    logging.INFO,
                    "db_reconnected",
                    "database connection re-established",
                    worker=self.worker_id,
                    connections=self.connections + 1,
                )
            self.connections += 1
        return self.conn

    def _on_notify(self, notify: Any) -> None:
        self.wake_pending = True

    def _connection_lost(self, exc: BaseException) -> None:
        event(
            log,
            logging.WARNING,
            "db_connection_lost",
            "database connection lost; reconnecting",
            worker=self.worker_id,
            error=db.first_line(exc),
        )
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        delay = 0.1
        while not self.stopping:
            try:
                self._db()
                return
            except Exception:  # noqa: BLE001 - keep trying until the database is back
                self._sleep(delay)
                delay = min(2 * delay, RECONNECT_DELAY_MAX)

    # -- the loop --------------------------------------------------------------

    def _next_job(self) -> Job | None:
        """Claim a job, or wait for a notification, the poll interval, or the next due retry."""
        conn = self._db()
        self.wake_pending = False
        job = store.claim(conn, self.worker_id)
        if job is not None:
            return job
        if not self.wake_pending:
            self._wait(conn)
        return None

    def _wait(self, conn: psycopg.Connection[Any]) -> None:
        due_in = store.next_run(conn).due_in
        poll = self.settings.poll_interval * random.uniform(0.8, 1.0)  # noqa: S311 - jitter
        if due_in is not None:
            poll = min(poll, due_in if due_in > 0 else IDLE_RECHECK)
        ready = self._sleep(poll, conn)
        if conn.fileno() in ready:
            conn.pgconn.consume_input()
            while conn.pgconn.notifies() is not None:
                self.wake_pending = True

    def _sleep(self, seconds: float, conn: psycopg.Connection[Any] | None = None) -> list[int]:
        """Sleep up to `seconds`; a signal or (with conn) database input ends it early."""
        fds = [self._wakeup_r] + ([conn.fileno()] if conn is not None else [])
        try:
            ready, _, _ = select.select(fds, [], [], max(0.0, seconds))
        except InterruptedError:
            return []
        if self._wakeup_r in ready:
            os.read(self._wakeup_r, 512)
        return ready

    def _process(self, job: Job) -> Job | None:
        """Run `job` and finish it; return the next job when the finish claimed one."""
        self.current, self.lost_reason = job, None
        self.holding = self.slots.hold(
            self.index, self.pid, job.id, job.lease_token, job.attempt, clock.monotonic()
        )
        self.heartbeat.track(job.id, job.lease_token)
        started = clock.monotonic()
        outcome = self._run_handler(job, started)
        self.heartbeat.untrack()
        try:
            return self._finish(job, outcome, clock.monotonic() - started)
        finally:
            self.current = None
            self.slots.release(self.index, self.pid)
            self.jobs_done += 1
            limit = self.settings.max_jobs_per_worker
            if limit and self.jobs_done >= limit:
                self.stopping = True

    def _run_handler(self, job: Job, started: float) -> Outcome:
        metrics.JOBS_CLAIMED.inc()
        timeout = self.settings.job_timeout
        event(
            log,
            logging.DEBUG,
            "job_claimed",
            "job claimed",
            worker=self.worker_id,
            job_id=str(job.id),
            session_id=str(job.session_id),
            attempt=job.attempt,
        )
        self.in_handler = True
        try:
            return self.handler.run(job, started + timeout if timeout else None, self._on_group)
        except Aborted:
            return RELEASED
        finally:
            self.in_handler = False

    def _on_group(self, pgid: int) -> None:
        """The job's command started in process group `pgid`: the parent kills it if we die."""
        if self.holding is not None:
            self.slots.group_started(self.index, self.pid, self.holding, pgid)

    def _finish(self, job: Job, outcome: Outcome, duration: float) -> Job | None:
        if self.releasing and not outcome.ok:
            outcome = RELEASED
        if self.lost_reason is not None:
            outcome = LEASE_LOST
        chain = outcome.ok and not self.stopping and not self._recycle_due()
        return finish.finish_job(
            self._db,
            self.worker_id,
            job,
            outcome,
            duration,
            chain,
            retry_for=self.settings.heartbeat_timeout,
        )

    def _recycle_due(self) -> bool:
        limit = self.settings.max_jobs_per_worker
        return bool(limit) and self.jobs_done + 1 >= limit


def run_worker(settings: Settings, index: int, slots: Slots, handler: Handler) -> int:
    """Entry point of a forked worker process."""
    return Worker(settings, index, slots, handler).run()
