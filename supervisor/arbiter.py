"""The supervisor's parent process: spawn workers, reap them, replace them, stop them.

One loop, one thread. Signal handlers do nothing but wake the loop (the
signal number arrives on a pipe); every decision is taken in the loop.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mobvibe import clock, metrics
from mobvibe.logs import event
from mobvibe.supervisor import children, contain, policy
from mobvibe.supervisor.attempt import KILL_GRACE
from mobvibe.supervisor.children import ChildKind, Exit
from mobvibe.supervisor.eviction import Keeper
from mobvibe.supervisor.policy import CrashLoop, ExitCode, RestartDelays
from mobvibe.supervisor.rescue import Rescuer
from mobvibe.supervisor.settings import Settings
from mobvibe.supervisor.slots import Holding, Slots
from mobvibe.supervisor.wakeups import Wakeups
from mobvibe.vocabulary import EndReason, ExitCause

log = logging.getLogger(__name__)
TICK = 0.25
# While workspaces are being measured or evicted ones removed: the slice of each loop turn
# spent on it, and the shorter wait between turns (the loop still turns every
# REMOVAL_TICK + REMOVAL_SLICE).
REMOVAL_SLICE = 0.05
REMOVAL_TICK = 0.01
RELEASE_GRACE = 3.0  # after USR1 ("release now"), how long before KILL
# How long the processes of a dead worker's job may take to die after SIGKILL
# before its rescue goes ahead anyway (only a process stuck in the kernel lasts).
END_ATTEMPT_DEADLINE = 5.0
# A worker stops a cancelled command itself (TERM, KILL after KILL_GRACE); the
# parent kills a worker whose job still runs this much later (a Python handler
# that ignores attempt.cancelled).
CANCEL_BACKSTOP = 2.0


@dataclass
class Child:
    """A child process the arbiter watches."""

    pid: int
    kind: ChildKind
    index: int = -1
    started: float = field(default_factory=clock.monotonic)
    retiring: bool = False
    killed_for: EndReason | None = None  # the reason when the arbiter killed it


@dataclass(frozen=True)
class Shared:
    """What the parent makes before forking, for every child: the slots and the wake-ups."""

    slots: Slots
    wakeups: Wakeups


class Arbiter:
    """Keeps `settings.workers` workers (and the hub and HTTP children) running."""

    def __init__(
        self,
        settings: Settings,
        worker_main: Callable[[int, Shared], int],
        aux: dict[ChildKind, Callable[[Shared], int]],
    ) -> None:
        self.settings = settings
        self.worker_main = worker_main
        self.aux = aux
        self.slots = Slots(settings.workers)
        self.shared = Shared(self.slots, Wakeups(settings.workers))
        # metrics rows: the parent's, one per worker index, one per other child
        metrics.init(1 + settings.workers + len(aux))
        self.aux_rows = {name: 1 + settings.workers + i for i, name in enumerate(aux)}
        self.rescuer = Rescuer(settings)
        self.children: dict[int, Child] = {}
        self.restart_at: dict[int, float] = {}
        self.aux_restart_at: dict[ChildKind, float] = {}
        self.aux_delay: dict[ChildKind, float] = {}
        self.restart_delays = RestartDelays(settings.crash_loop_window)
        self.crash_loop = CrashLoop(settings.crash_loop_limit, settings.crash_loop_window)
        self.stopping = False
        self.release_at: float | None = None
        self.kill_at: float | None = None
        self.exit_code = 0
        self.retire_queue: deque[int] = deque()
        # per worker index: (lease token, when) of a cancel the parent saw requested
        self.cancels_seen: dict[int, tuple[uuid.UUID, float]] = {}
        self.keeper = (
            Keeper(
                settings.workspaces, settings.workspaces_max_bytes, settings.workspaces_max_count
            )
            if settings.workspaces is not None
            else None
        )
        self.attempts_ended = -1  # as last swept: -1 sweeps at start
        self._pipe_r, self._pipe_w = os.pipe()

    # -- the loop --------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; return the exit code of the supervisor."""
        self._install_signals()
        # The orphans of every job's processes come back here when their worker
        # is gone (contain.py): the loop kills the children it does not know.
        contain.become_subreaper()
        self.keep_workspaces()
        for name in self.aux:
            self.spawn_aux(name)
        event(
            log,
            logging.INFO,
            "supervisor_started",
            "supervisor started",
            workers=self.settings.workers,
        )
        while True:
            self.manage_workers()
            self.slots.tick(clock.monotonic(), self.workers_alive())
            self.wait(REMOVAL_TICK if self.keeper and self.keeper.busy else TICK)
            self.reap()
            contain.kill_strays(self.children)
            self.murder()
            self.roll()
            self.check_drain()
            self.keep_workspaces()
            self.stop_aux()
            if self.stopping and not self.children:
                break
        contain.kill_strays(())
        event(
            log, logging.INFO, "supervisor_stopped", "supervisor stopped", exit_code=self.exit_code
        )
        return self.exit_code

    def _install_signals(self) -> None:
        os.set_blocking(self._pipe_w, False)
        signal.set_wakeup_fd(self._pipe_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT):
            signal.signal(sig, lambda signum, frame: None)  # the pipe carries the signal number

    def wait(self, tick: float = TICK) -> None:
        """Sleep until a signal or the next tick; handle the signals that arrived."""
        try:
            ready, _, _ = select.select([self._pipe_r], [], [], tick)
        except InterruptedError:
            return
        if ready:
            for signum in os.read(self._pipe_r, 512):
                self.handle_signal(signum)

    def handle_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stop(graceful=not self.stopping, reason=signal.Signals(signum).name)
        elif signum == signal.SIGQUIT:
            self.stop(graceful=False, reason="SIGQUIT")
        elif signum == signal.SIGHUP and not self.stopping:
            event(log, logging.INFO, "rolling_restart", "replacing the workers one by one")
            self.retire_queue.extend(c.pid for c in self.workers())

    # -- workers ---------------------------------------------------------------

    def workers(self) -> list[Child]:
        return [c for c in self.children.values() if c.kind == ChildKind.WORKER]

    def workers_alive(self) -> int:
        return len(self.workers())

    def manage_workers(self) -> None:
        """Start a worker in every empty slot whose restart delay has passed."""
        if self.stopping:
            return
        taken = {c.index for c in self.workers()}
        now = clock.monotonic()
        for name, at in list(self.aux_restart_at.items()):
            if at <= now:
                del self.aux_restart_at[name]
                self.spawn_aux(name)
        for index in range(self.settings.workers):
            if index not in taken and self.restart_at.get(index, 0.0) <= now:
                self.spawn_worker(index)
        metrics.WORKERS_ALIVE.set(self.workers_alive())

    def spawn_worker(self, index: int) -> None:
        pid = children.fork(
            lambda: self.worker_main(index, self.shared),
            1 + index,
            (self._pipe_r, self._pipe_w),
            "mobvibe-worker",
        )
        self.children[pid] = Child(pid, ChildKind.WORKER, index)
        event(
            log,
            logging.INFO,
            "worker_spawned",
            "worker started",
            worker_index=index,
            worker_pid=pid,
        )

    def spawn_aux(self, name: ChildKind) -> None:
        target = self.aux[name]
        pid = children.fork(
            lambda: target(self.shared),
            self.aux_rows[name],
            (self._pipe_r, self._pipe_w),
            f"mobvibe-{name}",
        )
        self.children[pid] = Child(pid, name)

    def reap(self) -> None:
        """Collect every exited child, ours or an orphan handed to us as PID 1."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is not None:
                self.child_exited(child, Exit.from_status(status))

    def child_exited(self, child: Child, how: Exit) -> None:
        if child.kind != ChildKind.WORKER:
            self._aux_exited(child, how)
            return
        cause = policy.exit_cause(
            how, child.killed_for, stopping=self.stopping, retiring=child.retiring
        )
        metrics.WORKER_EXITS.labels(cause).inc()
        holding = self.slots.holding(child.index)
        self.slots.clear(child.index)
        event(
            log,
            logging.INFO if cause in (ExitCause.CLEAN, ExitCause.RECYCLED) else logging.WARNING,
            "worker_exited",
            f"worker exited: {policy.describe_exit(how, child.killed_for)}",
            worker_index=child.index,
            worker_pid=child.pid,
            cause=cause,
            holding=str(holding.job_id) if holding else None,
        )
        if holding is not None:
            self._end_attempt(holding)
            self.attempts_ended = -1  # its workspace is free: sweep
        reason = policy.rescue_reason(how, child.killed_for)
        if holding is not None and reason is not None:
            message = policy.rescue_message(how, child.killed_for, self.settings.job_timeout)
            self.rescuer.rescue(holding, reason, message)
        if policy.is_crash(cause):
            self.rescuer.release_unstarted(self.settings.worker_id(child.index, child.pid), holding)
        self._schedule_restart(child, cause, holding.job_id if holding else None)

    def _end_attempt(self, holding: Holding) -> None:
        """Kill what runs of a dead worker's job before the job can run anywhere again."""
        deadline = clock.monotonic() + END_ATTEMPT_DEADLINE
        if not contain.end_attempt(holding.pgid, self.children, 0.0, deadline):
            event(
                log,
                logging.ERROR,
                "attempt_processes_survived",
                "processes of a dead worker's job outlived SIGKILL; rescuing the job anyway",
                job_id=str(holding.job_id),
                pgid=holding.pgid,
            )

    def _schedule_restart(self, child: Child, cause: ExitCause, job_id: uuid.UUID | None) -> None:
        if self.stopping:
            return
        now = clock.monotonic()
        delay = 0.0
        if policy.is_crash(cause):
            delay = self.restart_delays.after_crash(child.index, now)
            if self.crash_loop.record(now, job_id):
                self._stop_for_crash_loop()
        self.restart_at[child.index] = now + delay
        metrics.WORKER_RESTARTS.inc()

    def _stop_for_crash_loop(self) -> None:
        event(
            log,
            logging.CRITICAL,
            "crash_loop",
            f"{self.crash_loop.count} worker crashes within "
            f"{self.settings.crash_loop_window:g} s: stopping the supervisor so that "
            "its orchestrator restarts it",
        )
        self.exit_code = ExitCode.CRASH_LOOP
        self.stop(graceful=False, reason="crash loop")

    def _aux_exited(self, child: Child, how: Exit) -> None:
        if self.stopping:
            return
        now = clock.monotonic()
        delay = policy.aux_restart_delay(now - child.started, self.aux_delay.get(child.kind))
        self.aux_delay[child.kind] = delay
        event(
            log,
            logging.WARNING,
            "child_exited",
            f"{child.kind} exited: {how.describe}; starting it again in {delay:g} s",
            child=child.kind,
        )
        self.aux_restart_at[child.kind] = now + delay

    # -- workspaces --------------------------------------------------------------

    def keep_workspaces(self) -> None:
        """At start, after attempts ended and when a measure ended: evict workspaces beyond
        the limits; at every turn, a slice of the measures and removals. Here, in the
        parent, off the workers' claims; a failure is logged, never fatal."""
        if self.keeper is None:
            return
        ended = self.slots.attempts_ended()
        try:
            if ended != self.attempts_ended or self.keeper.resweep:
                self.attempts_ended = ended
                self.keeper.sweep()
            self.keeper.step(REMOVAL_SLICE)
        except Exception as exc:  # noqa: BLE001 - the supervisor runs on without it
            event(
                log,
                logging.ERROR,
                "workspace_sweep_failed",
                f"the workspaces could not be swept: {type(exc).__name__}: {exc}",
            )

    # -- deadlines and fencing ---------------------------------------------------

    def murder(self) -> None:
        """Kill workers past --job-timeout or silent past the fence; stop at shutdown deadlines."""
        now = clock.monotonic()
        for child in self.workers():
            holding = self.slots.holding(child.index)
            if holding is None or child.killed_for:
                continue
            reason = policy.kill_reason(
                started=holding.started,
                heartbeat_ok=holding.heartbeat_ok,
                now=now,
                settings=self.settings,
            )
            reason = reason or self._cancel_ignored(child.index, holding.lease_token, now)
            if reason is not None:
                self.kill(child, reason)
        if self.release_at is not None and now >= self.release_at:
            self.release_at = None
            self.kill_at = now + RELEASE_GRACE
            for child in self.workers():
                self.signal(child, signal.SIGUSR1)
        if self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            for child in self.workers():
                self.kill(child, EndReason.RELEASED)

    def _cancel_ignored(self, index: int, lease_token: uuid.UUID, now: float) -> EndReason | None:
        """CANCELLED when a cancel of worker `index`'s job was asked longer ago than the
        worker's own grace (KILL_GRACE) and then some: a handler that ignores it."""
        if self.slots.stop_requested(index, lease_token) != EndReason.CANCELLED:
            return None
        token, since = self.cancels_seen.setdefault(index, (lease_token, now))
        if token != lease_token:
            self.cancels_seen[index] = (lease_token, now)
            return None
        return EndReason.CANCELLED if now - since > KILL_GRACE + CANCEL_BACKSTOP else None

    def kill(self, child: Child, reason: EndReason) -> None:
        child.killed_for = reason
        event(
            log,
            logging.WARNING,
            "worker_killed",
            f"killing worker: {reason}",
            worker_index=child.index,
            worker_pid=child.pid,
        )
        self.signal(child, signal.SIGKILL)

    def signal(self, child: Child, sig: int) -> None:
        try:
            os.kill(child.pid, sig)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise

    # -- rolling restart, drain, stop -------------------------------------------

    def roll(self) -> None:
        """SIGHUP: retire one worker at a time; the next goes once its replacement runs."""
        if self.stopping or not self.retire_queue:
            return
        if any(c.retiring for c in self.workers()):
            return
        if self.workers_alive() < self.settings.workers:
            return  # wait until the last replacement is up
        pid = self.retire_queue.popleft()
        child = self.children.get(pid)
        if child is not None:
            child.retiring = True
            self.signal(child, signal.SIGTERM)

    def check_drain(self) -> None:
        """--drain: stop once the hub saw nothing pending or processing."""
        if self.settings.drain and not self.stopping and self.slots.is_drained():
            self.stop(graceful=True, reason="queue drained")

    def stop_aux(self) -> None:
        """Once the workers are gone, the hub (which renewed their leases) and the rest go."""
        if self.stopping and not self.workers():
            for child in self.children.values():
                if not child.retiring:
                    child.retiring = True
                    self.signal(child, signal.SIGTERM)

    def stop(self, graceful: bool, reason: str) -> None:
        """Graceful: stop claiming, finish running jobs, release what is left at the timeout.

        Not graceful (a second signal): release the running jobs now.
        """
        now = clock.monotonic()
        if not self.stopping:
            event(
                log,
                logging.INFO,
                "shutdown_started",
                f"stopping ({reason})",
                graceful=graceful,
                timeout=self.settings.shutdown_timeout,
            )
            self.stopping = True
            for child in self.workers():
                self.signal(child, signal.SIGTERM)
            self.release_at = now + self.settings.shutdown_timeout
        if not graceful:
            self.release_at = now
