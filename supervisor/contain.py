"""Every process of an attempt ends with the attempt.

A job's command runs in a process group of its own, and dies with the worker
that started it (its death signal). In its sandbox (sandbox.py), that group is
the one of the sandbox's first process, and killing that process ends every
process of the sandbox's PID namespace, wherever they went.

Without a sandbox (--unsandboxed, and what a Python handler starts), processes
that leave the group (`setsid`) or outlive their parent are reparented to the
nearest "child subreaper" ancestor instead of init: the worker, or when the
worker is gone, the supervisor. Both are subreapers, so an attempt's leftovers
come back to one of them, which kills whatever child it does not know; only a
kill -9 of both at once (of the supervisor's whole process group) lets them go,
which the sandbox's namespace does not.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
from collections.abc import Collection
from dataclasses import dataclass

from mobvibe import clock

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)
POLL = 0.01


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def name_process(name: str) -> None:
    """What `ps` and /proc/PID/comm call this process (15 bytes at most)."""
    _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def become_subreaper() -> None:
    """Orphaned descendants of this process are reparented to it, not to init."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def become_undumpable() -> None:
    """No core dump, and /proc/PID of this process and of its forks (until they exec)
    readable by root only: its environment holds the database's credentials."""
    _prctl(_PR_SET_DUMPABLE, 0)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies."""
    _prctl(_PR_SET_PDEATHSIG, int(sig))


@dataclass(frozen=True)
class Proc:
    """One process as /proc shows it."""

    pid: int
    ppid: int
    pgid: int
    zombie: bool


def processes() -> list[Proc]:
    """Every process this one can see."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                text = stat.read()
        except OSError:
            continue  # gone meanwhile
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses
        fields = text[text.rindex(b")") + 2 :].split()
        found.append(Proc(int(entry), int(fields[1]), int(fields[2]), fields[0] == b"Z"))
    return found


def signal_quietly(pid: int, sig: int, *, group: bool = False) -> None:
    """Send `sig` to a process (or its group); one that is already gone is no error."""
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except OSError as exc:
        if exc.errno not in (errno.ESRCH, errno.EPERM):
            raise


def group_alive(pgid: int, procs: list[Proc] | None = None) -> bool:
    """True while a process of group `pgid` is still running (zombies do not count)."""
    return any(p.pgid == pgid and not p.zombie for p in procs or processes())


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def kill_strays(keep: Collection[int]) -> int:
    """SIGKILL every child of this process not in `keep`, and reap those that died.

    Returns how many were running. The children a subreaper does not know are
    the leftovers of attempts that have ended.
    """
    me, running = os.getpid(), 0
    for proc in processes():
        if proc.ppid != me or proc.pid in keep:
            continue
        if not proc.zombie:
            signal_quietly(proc.pid, signal.SIGKILL)
            running += 1
        _reap(proc.pid)
    return running


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _has_children() -> bool:
    """True if this process has a child (reaping one that has exited: a stray)."""
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return False
    return True


def end_attempt(pgid: int, keep: Collection[int], grace: float, deadline: float) -> bool:
    """End an attempt's processes: TERM its group (0: none), KILL after `grace`, then strays.

    `keep` are this process's children that are not the attempt's (none in a
    worker, whose only child is the command, already reaped). Returns True
    once nothing of the attempt runs, False if something still did at
    `deadline` (monotonic).
    """
    if pgid > 0 and not _group_exists(pgid):
        pgid = 0
    if pgid == 0 and not keep and not _has_children():
        return True  # the common case, without a look at /proc
    if pgid > 0:
        signal_quietly(pgid, signal.SIGTERM if grace > 0 else signal.SIGKILL, group=True)
    kill_at = clock.monotonic() + grace
    while True:
        late = clock.monotonic() >= kill_at
        if pgid > 0 and late:
            signal_quietly(pgid, signal.SIGKILL, group=True)
        running = pgid > 0 and group_alive(pgid)
        # Strays (the group's children that left it) get the same grace as the group.
        strays = kill_strays(keep) if late or not running else 0
        if not running and strays == 0:
            return True
        if clock.monotonic() >= deadline:
            return False
        clock.sleep(POLL)
