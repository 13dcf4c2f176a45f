"""Forking a child process and telling how it ended."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from mobvibe import metrics

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


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
    def describe(self) -> str:
        if self.signal is not None:
            name = signal.Signals(self.signal).name
            hint = " (out of memory?)" if self.signal == signal.SIGKILL else ""
            return f"signal {self.signal} ({name}){hint}"
        return f"exit code {self.code}"


def fork(target: Callable[[], int], metrics_row: int, close_fds: tuple[int, ...] = ()) -> int:
    """Run `target` in a child process that writes metrics row `metrics_row`; return its pid.

    The child never returns here.
    """
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _child_setup(close_fds)
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
    _die_with_parent(signal.SIGUSR1)


def _die_with_parent(sig: int) -> None:
    """Ask the kernel to send `sig` when the parent dies, so no worker runs unsupervised."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass
