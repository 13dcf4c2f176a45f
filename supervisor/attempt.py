"""One run of a job, as a handler sees it, and how that run ended."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mobvibe.sql.jobs import Job
from mobvibe.vocabulary import EndReason

# After SIGTERM, how long a command may take to stop before SIGKILL (a release
# at shutdown, a cancel, the deadline); the leftovers of a command that exited
# get END_GRACE. A process that outlives SIGKILL by END_DEADLINE is stuck in
# the kernel, and the attempt's end is recorded without waiting longer.
KILL_GRACE = 5.0
END_GRACE = 1.0
END_DEADLINE = 10.0


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: ok, or an error with its reason, and what it said (the end of
    a command's stdout, a Python handler's returned value)."""

    ok: bool
    error: str = ""
    reason: EndReason = EndReason.COMPLETED
    output: str | None = None


class Aborted(Exception):  # noqa: N818 - it is a signal to stop, not an error of the job
    """Raised in a Python handler's thread when its job must stop (shutdown)."""


@dataclass
class Attempt:
    """What a handler is given for one run of a job, wired to its worker."""

    job: Job
    deadline: float | None  # monotonic; None: no --job-timeout
    on_group: Callable[[int], None]  # the command's process group started
    progress: Callable[[str | bytes | dict[str, Any]], None]  # one progress line
    progress_due: Callable[[], bool]  # events wait to be written
    flush: Callable[..., None]  # write them (force=True: all of them, now)
    fenced: Callable[[], bool]  # the lease could not be renewed for too long: stop now
    cancelled: Callable[[], bool]  # a cancel of the job was requested
    show_output: Callable[[str], None]  # keep the output so far with the job
    workspace: str | None = None  # the session's workspace on this pod (--workspaces)


class Handler:
    """Runs one job at a time; abort() stops the running one from a signal handler."""

    def run(self, attempt: Attempt) -> Outcome:
        """Run the attempt's job to its end."""
        raise NotImplementedError

    def abort(self, outcome: Outcome, grace: float = KILL_GRACE) -> bool:
        """Stop the running job with `outcome` if it can be stopped from outside; else False."""
        return False


@dataclass(frozen=True, slots=True)
class RunningJob(Job):
    """What a Python handler gets: the job, and its attempt's progress and cancel flag."""

    attempt_context: Attempt

    def progress(self, message: str | dict[str, Any]) -> None:
        """Report progress: a JSON object (its "kind" names it) or a line of text."""
        self.attempt_context.progress(message)
        if self.attempt_context.progress_due():
            self.attempt_context.flush()

    @property
    def workspace(self) -> str | None:
        """The session's workspace on this pod, kept between its prompts (None without
        --workspaces): MOBVIBE_WORKSPACE of an --exec command."""
        return self.attempt_context.workspace

    @property
    def cancelled(self) -> bool:
        """True once a cancel of this job was requested: return (or raise) soon."""
        return self.attempt_context.cancelled()
