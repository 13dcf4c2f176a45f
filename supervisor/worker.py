"""A worker process: wait to be woken, claim one job, run it, end it with its lease; again.

A worker's connection holds no session state (the hub LISTENs for the pod and
renews the leases), so it may go through PgBouncer in transaction mode.
"""

from __future__ import annotations

import logging
import os
import random
import select
import signal
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from mobvibe import clock, metrics
from mobvibe.errors import DatabaseUnavailableError
from mobvibe.logs import event
from mobvibe.sql import db, store
from mobvibe.sql.jobs import Job
from mobvibe.supervisor import contain, finish, workspaces
from mobvibe.supervisor.attempt import KILL_GRACE, Aborted, Attempt, Handler, Outcome
from mobvibe.supervisor.policy import ExitCode
from mobvibe.supervisor.progress import Progress
from mobvibe.supervisor.settings import Settings
from mobvibe.supervisor.slots import Holding, Slots
from mobvibe.supervisor.wakeups import Wakeups
from mobvibe.vocabulary import EndReason

log = logging.getLogger(__name__)
RELEASED = Outcome(False, "released at shutdown", EndReason.RELEASED)
LEASE_LOST = Outcome(False, "the job's lease was taken away", EndReason.LEASE_LOST)
CANCELLED = Outcome(False, "cancelled by request", EndReason.CANCELLED)
RECONNECT_DELAY_MAX = 5.0
# Without a wake-up, a worker looks for work this often anyway: the hub is the
# pod's poller (and the parent restarts a hub that dies), this only covers a hub
# that is stuck. Rare, so that an idle pod's statements do not grow with its
# workers: 32 idle workers send about one claim every 10 s.
BACKSTOP = 300.0
DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, DatabaseUnavailableError)


class Worker:
    """The loop of one worker process. Signals: TERM stop after this job, USR1 release now,
    USR2 look at the stop request the hub (or the parent) left in the slot."""

    def __init__(
        self, settings: Settings, index: int, slots: Slots, wakeups: Wakeups, handler: Handler
    ) -> None:
        self.settings = settings
        self.index = index
        self.slots = slots
        self.wakeups = wakeups
        self.handler = handler
        self.pid = os.getpid()
        self.worker_id = settings.worker_id(index, self.pid)
        self.conn: psycopg.Connection[Any] | None = None
        self.connections = 0  # made so far: the first is not a reconnection
        self.stopping = False
        self.releasing = False
        self.jobs_done = 0
        # Idle generations: the hub wakes each wait once. They start from the pid, so
        # that a worker started again in the slot is never taken for one woken already.
        self.waits = self.pid << 32
        # The end of the last job claimed the next and found none, idle already: the
        # worker waits at once rather than look again.
        self.looked = False
        self.current: Job | None = None
        self.holding: Holding | None = None
        self.progress = Progress()
        self.in_handler = False
        self.lost = False
        self._signal_r, self._signal_w = os.pipe()

    # -- process life ----------------------------------------------------------------------

    def run(self) -> int:
        """Work until told to stop; return the process exit code."""
        self._install_signals()
        # Processes a job leaves behind come back to us, not to init: the end of
        # each attempt kills them (contain.py).
        contain.become_subreaper()
        event(log, logging.INFO, "worker_started", "worker ready", worker=self.worker_id)
        job: Job | None = None
        while not self.stopping:
            try:
                job = job or self._next_job()
                if job is not None:
                    job = self._process(job)
            except DB_ERRORS as exc:
                # A database outage is waited out here, not by exiting: a worker that
                # exits is restarted at once and fails again, and a few of those in a
                # row look like a crash loop that stops the whole supervisor.
                job = None
                self._connection_lost(exc)
        if job is not None:
            self._give_back(job)
        event(
            log,
            logging.INFO,
            "worker_stopped",
            "worker stopped",
            worker=self.worker_id,
            jobs=self.jobs_done,
        )
        return ExitCode.OK

    def _give_back(self, job: Job) -> None:
        """Release a job claimed with the last end but not started: we are stopping."""
        try:
            store.end_attempt(self._db(), job.id, job.lease_token, RELEASED.reason, RELEASED.error)
        except DB_ERRORS:
            return  # its lease is renewed no more: the reaper requeues it
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
        os.set_blocking(self._signal_w, False)
        signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGUSR1, self._on_release)
        signal.signal(signal.SIGUSR2, self._on_stop_request)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C means
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def _on_release(self, signum: int, frame: Any) -> None:
        self.stopping = self.releasing = True
        if self.current is not None and not self.handler.abort(RELEASED) and self.in_handler:
            raise Aborted("released at shutdown")

    def _on_stop_request(self, signum: int, frame: Any) -> None:
        """The hub (or the parent) asked us to stop the running job: cancelled or lease lost."""
        job = self.current
        if job is None or not self.in_handler:
            return  # the job has ended already: its end is being recorded, lease or not
        reason = self.slots.stop_requested(self.index, job.lease_token)
        if reason == EndReason.CANCELLED:
            # A Python handler sees attempt.cancelled(); one that ignores it is killed
            # by the parent after the grace, like a command that ignores SIGTERM.
            self.handler.abort(CANCELLED, KILL_GRACE)
        elif reason == EndReason.LEASE_LOST:
            self.lost = True
            # At once, not after a grace: the next attempt may start elsewhere soon.
            if not self.handler.abort(LEASE_LOST, 0.0):
                # A Python handler cannot be stopped from outside: end the process;
                # the parent starts a fresh worker.
                os._exit(ExitCode.LEASE_LOST)

    # -- database --------------------------------------------------------------------------

    def _db(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = self._connect()
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

    def _connect(self) -> psycopg.Connection[Any]:
        options = [str(conninfo_to_dict(self.settings.database_url).get("options", ""))]
        if not self.settings.durable_completions:
            options.append("-c synchronous_commit=off")
        if not self.settings.status_notifications:
            options.append("-c mobvibe.status_notify=off")  # read by the trigger's WHEN
        extra: dict[str, Any] = {"options": " ".join(options).strip()} if any(options) else {}
        return db.connect(
            self.settings.database_url,
            application_name="mobvibe-worker",
            pooled=self.settings.pooled,
            **extra,
        )

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
                self._wait(delay, woken_by_hub=False)
                delay = min(2 * delay, RECONNECT_DELAY_MAX)

    # -- the loop --------------------------------------------------------------------------

    def _next_job(self) -> Job | None:
        """Say we are idle, claim a job; if none is due, wait to be woken (or the backstop)."""
        # Idle before the claim: a job that comes after the claim's look still gets
        # us woken (the wake-up waits in the pipe), never lost in between.
        job = None
        if not self.looked:
            self._idle()
            job = store.claim(self._db(), self.worker_id, self.settings.lease_key)
        self.looked = False
        if job is None and not self.stopping:
            self.wakeups.idle_to_hub()
            self._wait(BACKSTOP * random.uniform(0.8, 1.0))  # noqa: S311 - jitter
        self.slots.idle(self.index, 0)
        return job

    def _idle(self) -> None:
        """From now on the hub may wake us: a new idle generation."""
        self.waits += 1
        self.slots.idle(self.index, self.waits)

    def _wait(self, seconds: float, *, woken_by_hub: bool = True) -> None:
        """Sleep up to `seconds`; a wake-up from the hub or a signal ends it early."""
        fds = [self._signal_r] + ([self.wakeups.fd(self.index)] if woken_by_hub else [])
        try:
            ready, _, _ = select.select(fds, [], [], max(0.0, seconds))
        except InterruptedError:
            return
        if self._signal_r in ready:
            os.read(self._signal_r, 512)
        if woken_by_hub:
            self.wakeups.clear(self.index)

    def _process(self, job: Job) -> Job | None:
        """Run `job` and end its attempt; return the next job when the end claimed one."""
        self.current, self.lost, self.progress = job, False, Progress()
        now = clock.monotonic()
        self.holding = self.slots.hold(
            self.index, self.pid, job.id, job.lease_token, job.attempt, now
        )
        metrics.JOBS_CLAIMED.inc()
        outcome = self._run_in_workspace(job, now)
        try:
            return self._finish(job, outcome, clock.monotonic() - now)
        finally:
            self.current = None
            self.slots.release(self.index, self.pid)
            self.slots.attempt_ended(self.index)
            self.jobs_done += 1
            limit = self.settings.max_jobs_per_worker
            if limit and self.jobs_done >= limit:
                self.stopping = True

    def _run_in_workspace(self, job: Job, started: float) -> Outcome:
        """Run `job` in its session's workspace (--workspaces), given back when it ends."""
        if self.settings.workspaces is None:
            return self._run_handler(job, started, None)
        try:
            taken = workspaces.take(self.settings.workspaces, job.session_id)
        except OSError as exc:
            error = f"the session's workspace cannot be had: {exc.strerror or exc}"
            event(log, logging.ERROR, "workspace_unavailable", error, job_id=str(job.id))
            return Outcome(False, error, EndReason.ERROR)
        event(
            log,
            logging.DEBUG,
            "workspace_taken",
            "attempt runs in its session's workspace",
            job_id=str(job.id),
            session_id=str(job.session_id),
            start=taken.start,
        )
        try:
            return self._run_handler(job, started, taken.path)
        finally:
            taken.give_back()

    def _run_handler(self, job: Job, started: float, workspace: str | None) -> Outcome:
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
        attempt = Attempt(
            job=job,
            deadline=started + timeout if timeout else None,
            on_group=self._on_group,
            progress=self.progress.add,
            progress_due=self.progress.due,
            flush=self._flush,
            fenced=self._fenced,
            cancelled=lambda: (
                self.slots.stop_requested(self.index, job.lease_token) == EndReason.CANCELLED
            ),
            show_output=self._show_output,
            workspace=workspace,
        )
        self.in_handler = True
        try:
            return self.handler.run(attempt)
        except Aborted:
            return RELEASED
        finally:
            self.in_handler = False

    def _on_group(self, pgid: int) -> None:
        """The job's command started in process group `pgid`: the parent kills it if we die."""
        if self.holding is not None:
            self.slots.group_started(self.index, self.pid, self.holding, pgid)

    def _fenced(self) -> bool:
        """The hub could not renew the lease for too long: the job must stop before the
        reaper may hand it to another worker."""
        return clock.monotonic() - self.slots.heartbeat_at(self.index) > self.settings.fence_after

    def _flush(self, *, force: bool = False) -> None:
        """Write the progress events waiting (all of them with `force`), under the lease."""
        if self.current is None or not (force or self.progress.due()):
            return
        events = self.progress.take()
        if events:
            self._under_lease(
                lambda conn, job: store.add_events(conn, job.id, job.lease_token, events),
                "progress_lost",
                "progress events could not be written",
                events=len(events),
            )

    def _show_output(self, text: str) -> None:
        """Keep the running attempt's output so far with its job, under the lease (a stale
        one writes nothing; the attempt's end writes the final output all the same)."""
        self._under_lease(
            lambda conn, job: store.set_output(conn, job.id, job.lease_token, text),
            "output_not_kept",
            "the output so far could not be written",
        )

    def _under_lease(
        self,
        write: Callable[[psycopg.Connection[Any], Job], object],
        lost: str,
        message: str,
        **fields: Any,
    ) -> None:
        """A write of the running attempt's: a database error loses it (logged as `lost`),
        and the attempt goes on; its end is what must be recorded."""
        job = self.current
        if job is None:
            return
        try:
            write(self._db(), job)
        except DB_ERRORS as exc:
            event(
                log,
                logging.WARNING,
                lost,
                message,
                job_id=str(job.id),
                error=db.first_line(exc),
                **fields,
            )

    def _finish(self, job: Job, outcome: Outcome, duration: float) -> Job | None:
        if self.releasing and not outcome.ok and outcome.reason != EndReason.CANCELLED:
            outcome = replace(RELEASED, output=outcome.output)
        if self.lost or outcome.reason == EndReason.LEASE_LOST:
            outcome = replace(LEASE_LOST, output=outcome.output)
        chain = not self.stopping and not self._recycle_due()
        # The end claims the next job: idle from before its look, as before a claim, so
        # that a job it does not see still wakes us, and none is looked for twice.
        looks = chain and outcome.reason != EndReason.LEASE_LOST
        if looks:
            self._idle()
        next_job = finish.finish_job(
            self._db,
            self.worker_id,
            job,
            outcome,
            duration,
            chain,
            retry_for=self.settings.heartbeat_timeout,
            lease_key=self.settings.lease_key,
        )
        self.looked = looks and next_job is None
        if next_job is not None:
            self.slots.idle(self.index, 0)
        return next_job

    def _recycle_due(self) -> bool:
        limit = self.settings.max_jobs_per_worker
        return bool(limit) and self.jobs_done + 1 >= limit


def run_worker(
    settings: Settings, index: int, slots: Slots, wakeups: Wakeups, handler: Handler
) -> int:
    """Entry point of a forked worker process."""
    return Worker(settings, index, slots, wakeups, handler).run()
