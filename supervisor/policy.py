"""The arbiter's decisions as plain functions: when to restart, whom to kill, why a worker left.

Nothing here forks, sleeps or reads the clock: the arbiter passes `now` in, so
every decision is tested with numbers.
"""

from __future__ import annotations

import uuid
from collections import defaultdict, deque
from enum import IntEnum

from mobvibe.supervisor.children import Exit
from mobvibe.supervisor.settings import Settings
from mobvibe.vocabulary import EndReason, ExitCause


class ExitCode(IntEnum):
    """Why a process left, as its exit code: a worker's for the parent, the supervisor's for
    its orchestrator (none is click's 1 or 2)."""

    OK = 0
    CRASH_LOOP = 3  # the supervisor gave up: its orchestrator should restart it
    LEASE_LOST = 70  # a Python handler's lease was taken away: the process was its only stop


CRASH_DELAY_FIRST = 0.1  # the second crash of a worker within the window
CRASH_DELAY_MAX = 10.0
# An --exec command is timed out by its worker, which TERMs it and KILLs it
# after attempt.KILL_GRACE (5 s); the arbiter's kill is the backstop after that.
EXEC_BACKSTOP_GRACE = 5.0 + 2.0
AUX_STEADY_AFTER = 60.0  # an aux child that ran this long was working, not failing at start
AUX_DELAY_START = 0.5  # doubled before use: the first quick failure waits 1 s
AUX_DELAY_MAX = 60.0


def _forget_older_than(times: deque[float], now: float, window: float) -> None:
    """Drop the times more than `window` seconds before `now`; one exactly at the edge stays."""
    while times and now - times[0] > window:
        times.popleft()


class CrashLoop:
    """Worker crashes within a sliding window; too many of them stop the supervisor.

    The crashes of one job count once: a poison job is the job's problem, and
    its max_retries ends it (the fast path fails each attempt), whereas workers
    that crash on every job they take are the pod's.
    """

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.crashes: deque[float] = deque()
        self.jobs: dict[uuid.UUID, float] = {}  # jobs whose crash already counted, and when

    @property
    def count(self) -> int:
        """Crashes counted within the window as of the last record."""
        return len(self.crashes)

    def record(self, now: float, job_id: uuid.UUID | None) -> bool:
        """Count a crash of a worker that held `job_id`; True when the supervisor must stop."""
        self.jobs = {j: t for j, t in self.jobs.items() if now - t <= self.window}
        if job_id is not None:
            if job_id in self.jobs:
                return False
            self.jobs[job_id] = now
        self.crashes.append(now)
        _forget_older_than(self.crashes, now, self.window)
        return len(self.crashes) >= self.limit


class RestartDelays:
    """How long each worker index waits before its replacement starts, after a crash."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.crashes: defaultdict[int, deque[float]] = defaultdict(deque)

    def after_crash(self, index: int, now: float) -> float:
        """Count a crash of worker `index` at `now`; return the seconds until its replacement."""
        recent = self.crashes[index]
        recent.append(now)
        _forget_older_than(recent, now, self.window)
        return crash_restart_delay(len(recent))


def crash_restart_delay(crashes: int) -> float:
    """The restart delay of a worker that crashed `crashes` times within the window."""
    # The first crash may be bad luck: replace it at once. Repeated ones are
    # not, so each waits twice as long, without starving the slot for long.
    if crashes <= 1:
        return 0.0
    return min(CRASH_DELAY_MAX, CRASH_DELAY_FIRST * 2.0 ** (crashes - 2))


def aux_restart_delay(ran_for: float, previous: float | None) -> float:
    """The restart delay of a reaper or HTTP child that ran `ran_for` s; `previous` was its last."""
    # One that ran for a while starts again at once; one that keeps failing at
    # start waits longer each time (up to a minute).
    if ran_for > AUX_STEADY_AFTER:
        return 0.0
    # After a run that reset it to 0, the doubling starts over.
    return min(AUX_DELAY_MAX, 2 * (previous or AUX_DELAY_START))


def kill_reason(
    *, started: float, heartbeat_ok: float, now: float, settings: Settings
) -> EndReason | None:
    """Why a worker holding a job since `started` must be killed at `now`, or None."""
    grace = EXEC_BACKSTOP_GRACE if settings.exec_cmd else 0.0
    timeout = settings.job_timeout  # 0: no deadline
    if timeout and now - started > timeout + grace:
        return EndReason.DEADLINE_EXCEEDED
    # The worker fences itself after fence_after; past kill_after it is hung.
    if now - heartbeat_ok > settings.kill_after:
        return EndReason.HEARTBEAT_EXPIRED
    return None


def is_crash(cause: ExitCause) -> bool:
    """Whether an exit cause counts toward restart backoff and the crash loop."""
    return cause in (ExitCause.SIGNAL, ExitCause.ERROR)


def exit_cause(
    how: Exit, killed_for: EndReason | None, *, stopping: bool, retiring: bool
) -> ExitCause:
    """Why a worker left."""
    if killed_for == EndReason.DEADLINE_EXCEEDED:
        return ExitCause.DEADLINE
    if killed_for == EndReason.CANCELLED:
        return ExitCause.CANCELLED
    if how.code in (ExitCode.OK, ExitCode.LEASE_LOST):
        # Exit 0 unasked is a worker that did its --max-jobs-per-worker.
        return ExitCause.CLEAN if stopping or retiring or how.code else ExitCause.RECYCLED
    return ExitCause.SIGNAL if how.signal is not None else ExitCause.ERROR


def rescue_reason(how: Exit, killed_for: EndReason | None) -> EndReason | None:
    """The reason to rescue the job a dead worker held; None when it is not the worker's to end."""
    # The database refused the worker's lease: the attempt was already ended
    # (or handed on) by someone else, and its lease token no longer ends it.
    if how.code == ExitCode.LEASE_LOST:
        return None
    return killed_for or EndReason.WORKER_EXITED


# The error recorded on the attempt of a worker the arbiter killed, by why it did.
KILLED_FOR = {
    EndReason.HEARTBEAT_EXPIRED: "worker stopped renewing the lease",
    EndReason.RELEASED: "released at shutdown",
    EndReason.CANCELLED: "cancelled by request (the job did not stop in its grace period)",
}


def rescue_message(how: Exit, killed_for: EndReason | None, job_timeout: float) -> str:
    """The error recorded on the attempt of a dead worker's job."""
    if killed_for == EndReason.DEADLINE_EXCEEDED:
        return f"job exceeded --job-timeout ({job_timeout:g} s)"
    if killed_for in KILLED_FOR:
        return KILLED_FOR[killed_for]
    return f"worker exited ({describe_exit(how, killed_for)})"


def describe_exit(how: Exit, killed_for: EndReason | None) -> str:
    """How a worker ended, saying who killed it when the supervisor did."""
    if killed_for and how.signal is not None:
        return f"{how.describe_signal}, sent by the supervisor ({killed_for})"
    return how.describe
