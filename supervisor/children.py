"""Forking a child process and telling how it ended."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from mobvibe import metrics
from mobvibe.supervisor import contain

log = logging.getLogger(__name__)


class ChildKind(StrEnum):
    """What a child of the supervisor is (its process is named mobvibe-<kind>)."""

    WORKER = "worker"
    HUB = "hub"  # the pod's connection: LISTEN, heartbeats, the embedded reaper
    HTTP = "http"  # /metrics, the probes and the status pages


@dataclass(frozen=True)
class Exit:
    """How a child ended, decoded from its wait status."""

    code: int | None
    signal: int | None

    @classmethod
    def from_status(cls, status: int) -> Exit:
        if os.WIFSIGNALED(status):
            return cls(None, os.WTERMSIG(status))
        return cls(os.WEXITSTATUS(status), None)

    @property
    def describe_signal(self) -> str:
        """`signal 9 (SIGKILL)`; empty for an exit code."""
        if self.signal is None:
            return ""
        return f"signal {self.signal} ({signal.Signals(self.signal).name})"

    @property
    def describe(self) -> str:
        """How the child ended, for a log line; a KILL nobody here sent hints at the OOM killer."""
        if self.signal is not None:
            hint = " (out of memory?)" if self.signal == signal.SIGKILL else ""
            return f"{self.describe_signal}{hint}"
        return f"exit code {self.code}"


def fork(
    target: Callable[[], int], metrics_row: int, close_fds: tuple[int, ...] = (), name: str = ""
) -> int:
    """Run `target` in a child process that writes metrics row `metrics_row`, named `name`
    in `ps`; return its pid.

    The child never returns here.
    """
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _child_setup(close_fds)
        if name:
            contain.name_process(name)
        metrics.bind(metrics_row)
        code = target()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - report any crash, then leave without cleanup
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # os._exit: the parent's atexit handlers (and its embedded PostgreSQL)
        # are not ours to run.
        os._exit(code)


def _child_setup(close_fds: tuple[int, ...]) -> None:
    signal.set_wakeup_fd(-1)
    for sig in (
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGHUP,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGCHLD,
        signal.SIGQUIT,
    ):
        signal.signal(sig, signal.SIG_DFL)
    for fd in close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    # No worker runs unsupervised: the parent's death tells it to release its job now.
    contain.die_with_parent(signal.SIGUSR1)
