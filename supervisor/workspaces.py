"""A session's workspace on this pod: `--workspaces DIR`, one directory per session, kept
between its prompts (docs/backend/JOB_QUEUE.md, "Workspaces: a session's work stays on
its pod").

A worker takes its job's session's workspace for the attempt (`take`): DIR/<session
uuid>, its path made from the uuid alone, created 0700 when missing (a cold start) or
found there (warm). The worker holds a shared lock (flock) on it while the attempt runs;
when the attempt has ended, and its processes with it, the worker sets the directory's
modification time (its last use, which the agent cannot move afterwards) and lets go.

The parent keeps DIR within its limits (eviction.py), and never touches a workspace
whose lock is held.
"""

from __future__ import annotations

import errno
import fcntl
import os
import uuid
from dataclasses import dataclass

from mobvibe import metrics
from mobvibe.errors import ConfigError
from mobvibe.supervisor import trees
from mobvibe.supervisor.sandbox import shows_system
from mobvibe.vocabulary import WorkspaceStart

WORKSPACE_MODE = 0o700
EVICTED_PREFIX = ".evicted-"  # an evicted workspace, renamed: never a session's name
TAKE_TRIES = 5  # evicted between our look and our lock this often in a row: give up
OPEN_ROOT = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def prepare_root(directory: str) -> str:
    """The workspaces' directory, absolute and made (0700) if missing; ConfigError if jobs
    could not keep workspaces there."""
    path = os.path.realpath(directory)
    if shows_system(path):
        raise ConfigError(
            f"--workspaces {directory}: it lies in /usr, /etc or a link to them, which every "
            "sandboxed job sees: every session would see every workspace"
        )
    try:
        os.makedirs(path, WORKSPACE_MODE, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--workspaces {directory}: {exc.strerror}") from None
    if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--workspaces {directory}: not a directory this user can write")
    return path


def is_session_name(name: str) -> bool:
    """True for a name that a session's workspace has: its uuid, as str() spells it."""
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False


@dataclass
class Taken:
    """A workspace an attempt holds: its path, whether it was there before, its lock."""

    path: str
    warm: bool
    fd: int  # the directory, shared-locked

    @property
    def start(self) -> WorkspaceStart:
        return WorkspaceStart.WARM if self.warm else WorkspaceStart.COLD

    def give_back(self) -> None:
        """The attempt has ended, its processes too: now is the workspace's last use."""
        try:
            os.utime(self.fd)
        finally:
            os.close(self.fd)  # and with it the lock


def take(root: str, session_id: uuid.UUID) -> Taken:
    """The workspace of `session_id` in `root`, made if missing and locked for an attempt;
    OSError if it cannot be had."""
    name = str(session_id)
    root_fd = os.open(root, OPEN_ROOT)
    try:
        for _ in range(TAKE_TRIES):
            found = _try_take(root_fd, name)
            if found is not None:
                taken = Taken(os.path.join(root, name), *found)
                metrics.WORKSPACE_STARTS.inc(label=taken.start)
                return taken
    finally:
        os.close(root_fd)
    raise OSError(errno.EAGAIN, f"workspace {name} was removed each time it was taken")


def _try_take(root_fd: int, name: str) -> tuple[bool, int] | None:
    """(whether it was there, the locked workspace); None if it went away meanwhile."""
    warm = _made_or_found(root_fd, name)
    try:
        fd = trees.open_dir(root_fd, name)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno not in trees.NOT_A_DIRECTORY:
            raise
        os.unlink(name, dir_fd=root_fd)  # a link or a file in its place: a fresh one
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # the parent holds it exclusively only to rename it
        if _still_there(root_fd, name, fd):
            os.fchmod(fd, WORKSPACE_MODE)
            return warm, fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)  # evicted while we waited for the lock
    return None


def _still_there(root_fd: int, name: str, fd: int) -> bool:
    """True if `name` is still the directory open as `fd` (not renamed away meanwhile)."""
    try:
        here = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return os.path.samestat(here, os.fstat(fd))


def _made_or_found(root_fd: int, name: str) -> bool:
    """Make the workspace; True if it was there already."""
    try:
        os.mkdir(name, WORKSPACE_MODE, dir_fd=root_fd)
    except FileExistsError:
        return True
    return False
