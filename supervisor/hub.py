"""The hub: the pod's one direct connection to PostgreSQL, in a child of the supervisor.

Many pods share one database, and one of them answers for new jobs: the
doorman, the hub that holds the doorman's advisory lock. It alone LISTENs
(new_job, job_cancel) and wakes exactly one idle worker per new job, its own,
or, when it has none left, it hands the lock to the first pod that waits for it
in the server (a pod with an idle worker waits there, not listening), which
polls and wakes one of its own. A pod whose workers are all busy neither
listens nor waits: it learns of a cancel at its next lease renewal. The hub
renews the leases of every running attempt it sees in the slots with one
statement per heartbeat interval; it tells a worker to stop a job whose cancel
was requested or whose lease was lost; the doorman polls, as the backstop for
lost notifications, and wakes a worker when a retry comes due; the embedded
reaper sweeps on the one pod that holds the leader's lock; with --drain, it
watches for an empty queue. The workers' own connections hold no session state
(no LISTEN, no lock), so they may go through PgBouncer in transaction mode;
this one may not (--listen-url names the server itself).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import uuid
from collections.abc import Callable
from enum import StrEnum, auto
from typing import Any

import psycopg

from mobvibe import clock, metrics
from mobvibe.errors import DatabaseUnavailableError
from mobvibe.logs import event
from mobvibe.sql import db, store
from mobvibe.sql.notify import listen, unlisten
from mobvibe.sql.store import Lease
from mobvibe.supervisor.settings import Settings
from mobvibe.supervisor.slots import Holding, Slots
from mobvibe.supervisor.wakeups import Wakeups
from mobvibe.vocabulary import Channel, EndReason

log = logging.getLogger(__name__)
Sweep = Callable[[psycopg.Connection[Any]], object]
DRAIN_CHECK = 0.5  # seconds between the --drain checks
# A lease found not renewed while the slot still shows it may belong to a job whose
# worker has just ended it and not yet written its slot: it is declared lost only if
# the slot still shows it this long after.
LOST_RECHECK = 0.5
RECONNECT_DELAY_MAX = 5.0
CHANNELS = (Channel.NEW_JOB, Channel.JOB_CANCEL)
# A pod in line for the doorman's lock polls too, every --poll-interval, and wakes a
# worker for a job due longer than this: the backstop for a doorman that holds the
# lock and does not answer (stopped, or any login's session: advisory locks are
# anyone's). A job the doorman serves is claimed well within it.
OVERDUE = 2.0


class Duty(StrEnum):
    """What the hub does when its time comes."""

    HEARTBEAT = auto()  # renew the leases of the pod's running attempts
    POLL = auto()  # the backstop for lost notifications
    NEXT_RUN = auto()  # a waiting job comes due: wake a worker
    SWEEP = auto()  # the embedded reaper's
    LOST = auto()  # look again at leases that were not renewed
    DRAIN = auto()  # --drain: is the queue empty?


class Hub:
    """One loop over the pod's connection; every duty has its next due time."""

    def __init__(
        self, settings: Settings, slots: Slots, wakeups: Wakeups, sweep: Sweep | None = None
    ) -> None:
        self.settings = settings
        self.slots = slots
        self.wakeups = wakeups
        self.sweep = sweep
        self.conn: psycopg.Connection[Any] | None = None
        self.stopping = False
        self.woken = [0] * slots.count  # per worker, the idle generation last woken
        self.last_woken = -1
        self.doorman = False  # holds the doorman's lock: LISTENs for the database
        self.leader = False  # holds the leader's lock: the embedded reaper sweeps
        self.in_line = False  # waiting in the server for the doorman's lock
        now = clock.monotonic()
        self.due = {
            Duty.HEARTBEAT: now,
            Duty.POLL: now,
            Duty.SWEEP: now if sweep is not None else float("inf"),
            Duty.DRAIN: now if settings.drain else float("inf"),
            Duty.NEXT_RUN: float("inf"),
            Duty.LOST: float("inf"),
        }
        self.unrenewed: dict[int, tuple[Holding, float]] = {}  # index: (holding, recheck at)
        self._signal_r, self._signal_w = os.pipe()

    # -- process life ------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM (the parent sends it once the workers are gone)."""
        os.set_blocking(self._signal_w, False)
        signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_term)
        delay = 0.1
        while not self.stopping:
            try:
                self._turn(self._connection())
                delay = 0.1
            except (
                psycopg.OperationalError,
                psycopg.InterfaceError,
                DatabaseUnavailableError,
            ) as exc:
                event(
                    log,
                    logging.WARNING,
                    "hub_connection_lost",
                    "the hub lost its database connection; reconnecting",
                    error=db.first_line(exc),
                    retry_in_s=delay,
                )
                self._close()
                self._sleep(delay)
                delay = min(2 * delay, RECONNECT_DELAY_MAX)
        self._close()
        return 0

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stopping = True
        if self.in_line and self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.cancel()  # the wait for the doorman's lock ends now

    def _connection(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            # A lost heartbeat only ages a lease: no need to wait for the disk.
            self.conn = db.connect(
                self.settings.listen_url or self.settings.database_url,
                application_name="mobvibe-hub",
                options="-c synchronous_commit=off",
            )
        return self.conn

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        # Its session's locks went with it: another pod is doorman and leader now.
        self.doorman = self.leader = False
        metrics.HUB_DOORMAN.set(0)
        metrics.REAPER_LEADER.set(0)

    def _sleep(self, seconds: float) -> None:
        ready, _, _ = select.select([self._signal_r], [], [], seconds)
        if ready:
            os.read(self._signal_r, 512)

    # -- the loop ------------------------------------------------------------------------

    def _turn(self, conn: psycopg.Connection[Any]) -> None:
        """Wait for a notification, the doorman's lock or the next due duty; do what is due."""
        wait = max(0.0, min(self.due.values()) - clock.monotonic())
        if not self.doorman and self.idle_count() and not self.stopping:
            self._wait_in_line(conn, wait)
            wait = 0.0
        fds = [conn.fileno(), self._signal_r, self.wakeups.hub_fd()]
        ready, _, _ = select.select(fds, [], [], wait)
        if self._signal_r in ready:
            os.read(self._signal_r, 512)
        if self.wakeups.hub_fd() in ready:
            self.wakeups.clear_hub()  # a worker went idle: the next turn stands in line
        if conn.fileno() in ready:
            conn.pgconn.consume_input()
            while (note := conn.pgconn.notifies()) is not None:
                self._notified(conn, note.relname.decode(), note.extra.decode(errors="replace"))
        now = clock.monotonic()
        # A sweep may take half an interval (its statement timeout): renewing first when
        # the heartbeat falls due meanwhile keeps every renewal on time, so that a lease
        # renewed after one passed over is never older than two intervals.
        early = self.settings.heartbeat_interval / 2 if now >= self.due[Duty.SWEEP] else 0.0
        if now >= self.due[Duty.HEARTBEAT] - early:
            self.due[Duty.HEARTBEAT] = now + self.settings.heartbeat_interval
            self._renew(conn)
        if now >= min(self.due[Duty.POLL], self.due[Duty.NEXT_RUN]):
            self.due[Duty.POLL] = now + self.settings.poll_interval
            self._poll(conn)
        if now >= self.due[Duty.SWEEP]:  # never without an embedded reaper
            self.due[Duty.SWEEP] = now + self.settings.reaper_interval
            if self.leader or self._lead(conn):
                self._sweep(conn)
        if now >= self.due[Duty.LOST]:
            self._recheck_unrenewed(now)
        if now >= self.due[Duty.DRAIN]:  # never without --drain
            self.due[Duty.DRAIN] = now + DRAIN_CHECK
            self._check_drain(conn)

    def _notified(self, conn: psycopg.Connection[Any], channel: str, payload: str) -> None:
        # A payload is never trusted: anyone may NOTIFY. new_job only makes a worker
        # look; a cancel is asked of the database before a worker is told.
        if channel == Channel.NEW_JOB:
            if self.doorman and not self.wake_one():
                self._offer(conn)  # no idle worker here: the next pod in line has it
        elif channel == Channel.JOB_CANCEL:
            job_id = _job_id(payload)
            held = [(i, h) for i, h in self.holdings() if h.job_id == job_id]
            if held:
                self._renew(conn, held)

    # -- many pods: the doorman and the leader -------------------------------------------

    def idle_count(self) -> int:
        """Idle workers not woken since they went idle."""
        count = 0
        for index in range(self.slots.count):
            generation = self.slots.idle_generation(index)
            count += bool(generation) and generation != self.woken[index]
        return count

    def _wait_in_line(self, conn: psycopg.Connection[Any], wait: float) -> None:
        """Wait in the server for the doorman's lock, until the next duty at most."""
        self.in_line = True
        try:
            taken = store.wait_doorman(conn, wait)
        except psycopg.errors.QueryCanceled:
            if not self.stopping:
                raise
            return
        finally:
            self.in_line = False
        if taken:
            listen(conn, CHANNELS)
            self.doorman = True
            metrics.HUB_DOORMAN.set(1)
            event(
                log,
                logging.INFO,
                "hub_doorman",
                "this pod now listens for new jobs",
                backend_pid=conn.info.backend_pid,
            )
            # A job handed over, or sent while no one listened: the poll finds it.
            self.due[Duty.POLL] = clock.monotonic()

    def _offer(self, conn: psycopg.Connection[Any]) -> None:
        """No idle worker here: hand the doorman's lock to the pod first in line, if any."""
        if store.offer_doorman(conn):
            return  # no pod waits: ours still, and a job waits for a worker to finish
        unlisten(conn)
        self.doorman = False
        metrics.HUB_DOORMAN.set(0)
        event(log, logging.DEBUG, "hub_doorman_handed_over", "another pod listens for new jobs")

    def _lead(self, conn: psycopg.Connection[Any]) -> bool:
        """Take the lead of the embedded reapers if no pod has it (its pod died, or none
        swept yet): a leader's sweeps alone run, once per interval for the cluster."""
        self.leader = store.lead_reaper(conn)
        if self.leader:
            metrics.REAPER_LEADER.set(1)
            event(
                log,
                logging.INFO,
                "reaper_leader",
                "this pod's embedded reaper now sweeps",
                backend_pid=conn.info.backend_pid,
            )
        return self.leader

    # -- duties --------------------------------------------------------------------------

    def holdings(self) -> list[tuple[int, Holding]]:
        """(worker index, holding) of every job a worker of this pod runs now."""
        found = [(i, self.slots.holding(i)) for i in range(self.slots.count)]
        return [(i, h) for i, h in found if h is not None]

    def _renew(
        self, conn: psycopg.Connection[Any], held: list[tuple[int, Holding]] | None = None
    ) -> None:
        """Renew the leases of the running attempts, one statement for all of them."""
        held = self.holdings() if held is None else held
        if not held:
            return
        sent = clock.monotonic()
        try:
            renewals = store.renew_leases(conn, [Lease(h.job_id, h.lease_token) for _, h in held])
        except psycopg.Error:
            metrics.HEARTBEAT_FAILURES.inc()
            raise
        by_job = {r.job_id: r for r in renewals}
        for index, holding in held:
            renewal = by_job.get(holding.job_id)
            if renewal is not None and renewal.renewed:
                self.slots.heartbeat_ok(index, sent)
                if renewal.cancel_requested:
                    self._stop(index, holding, EndReason.CANCELLED)
            elif renewal is not None and renewal.renewed is None:
                self._passed_over(holding)  # tried again next time
            elif self._still_held(index, holding) and index not in self.unrenewed:
                # Not renewed and still shown here: another attempt has the job now, or
                # its worker has just ended it (no longer processing either) and not
                # yet written its slot. Looked at again shortly.
                recheck = clock.monotonic() + LOST_RECHECK
                self.unrenewed[index] = (holding, recheck)
                self.due[Duty.LOST] = min(self.due[Duty.LOST], recheck)

    def _passed_over(self, holding: Holding) -> None:
        """Another transaction holds the job's row locked (a cancel left open): its lease
        ages by one interval; the worker's fence allows for one such renewal."""
        metrics.LEASES_PASSED_OVER.inc()
        event(
            log,
            logging.DEBUG,
            "lease_renewal_passed_over",
            "lease not renewed this time: another transaction holds the job's row",
            job_id=str(holding.job_id),
            worker_pid=holding.pid,
        )

    def _recheck_unrenewed(self, now: float) -> None:
        """A lease not renewed whose slot still shows it after LOST_RECHECK is lost."""
        for index, (holding, recheck) in list(self.unrenewed.items()):
            if now >= recheck:
                del self.unrenewed[index]
                if self._still_held(index, holding):
                    self._stop(index, holding, EndReason.LEASE_LOST)
        self.due[Duty.LOST] = min((at for _, at in self.unrenewed.values()), default=float("inf"))

    def _still_held(self, index: int, holding: Holding) -> bool:
        now = self.slots.holding(index)
        return now is not None and now.lease_token == holding.lease_token

    def _stop(self, index: int, holding: Holding, reason: EndReason) -> None:
        if self.slots.stop_requested(index, holding.lease_token) == reason:
            return  # asked already
        self.slots.stop(index, holding.lease_token, reason)
        event(
            log,
            logging.INFO if reason == EndReason.CANCELLED else logging.WARNING,
            "job_stop_requested",
            f"worker told to stop its job: {reason}",
            job_id=str(holding.job_id),
            worker_pid=holding.pid,
            reason=reason,
        )
        with contextlib.suppress(ProcessLookupError):  # gone: the parent ends its attempt
            os.kill(holding.pid, signal.SIGUSR2)

    def _sweep(self, conn: psycopg.Connection[Any]) -> None:
        """The embedded reaper's sweep, which the caller bounds by a statement timeout: a
        sweep that waits (for a session another transaction holds locked) is given up
        and tried again next time, so the pod's leases are still renewed meanwhile."""
        assert self.sweep is not None
        try:
            self.sweep(conn)
        except psycopg.errors.QueryCanceled as exc:
            event(
                log,
                logging.WARNING,
                "reaper_sweep_cancelled",
                "the embedded reaper's sweep took too long and was cancelled; it runs again "
                "at the next interval",
                error=db.first_line(exc),
            )

    def _poll(self, conn: psycopg.Connection[Any]) -> None:
        """The doorman's backstop: wake an idle worker per job due, plan the next due time.

        With no worker idle the doorman offers its lock to a pod with one. A pod in
        line polls as the backstop of a doorman that does not answer; a pod with
        every worker busy sends no statement: a busy worker claims on its own when
        its job ends, and an idle one before it waits.
        """
        idle = self.idle_count()
        self.due[Duty.NEXT_RUN] = float("inf")
        if not idle:
            if self.doorman:
                self._offer(conn)
            return
        if not self.doorman:
            due_in = store.next_run(conn).due_in
            if due_in is not None and due_in < -OVERDUE:
                self.wake_one()
            return
        plan = store.due_jobs(conn, idle + 1)
        for _ in range(min(plan.due, idle)):
            self.wake_one()
        if plan.due_in is not None and plan.due_in > 0:
            self.due[Duty.NEXT_RUN] = clock.monotonic() + plan.due_in
        if plan.due > idle:
            self._offer(conn)  # more are due than this pod can start

    def _check_drain(self, conn: psycopg.Connection[Any]) -> None:
        if not store.has_unfinished_jobs(conn):
            self.slots.drained()

    def wake_one(self) -> bool:
        """Wake one idle worker not woken since it went idle; False if there is none.

        The search starts after the worker woken last, so that the work spreads.
        """
        count = self.slots.count
        for step in range(1, count + 1):
            index = (self.last_woken + step) % count
            generation = self.slots.idle_generation(index)
            if generation and generation != self.woken[index]:
                self.woken[index], self.last_woken = generation, index
                self.wakeups.wake(index)
                return True
        return False


def _job_id(payload: str) -> uuid.UUID | None:
    try:
        value = json.loads(payload)
        return uuid.UUID(str(value["job_id"])) if isinstance(value, dict) else None
    except (ValueError, KeyError, TypeError):
        return None


def run_hub(settings: Settings, slots: Slots, wakeups: Wakeups, sweep: Sweep | None) -> int:
    """Entry point of the hub child."""
    return Hub(settings, slots, wakeups, sweep).run()
