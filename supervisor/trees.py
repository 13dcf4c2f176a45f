"""Directory trees that a job wrote: their size and their removal, never through a link.

A session's workspace is written by code the queue does not trust: an agent can plant
symbolic links to `/` or to another session's workspace, and a process still running
could swap a directory for a link while the tree is walked. So every directory is opened
relative to its parent's descriptor with O_NOFOLLOW | O_DIRECTORY: a link (planted, or
swapped in after the listing) is never entered, only unlinked itself, and nothing outside
the tree is reached by a name. O_NONBLOCK too, so that a FIFO swapped in never blocks the
open. (shutil.rmtree's descriptor mode opens what it listed without O_NOFOLLOW and checks
afterwards: a FIFO swapped in would block it.)

A tree too deep for the descriptors this process may hold is left where the walk stops:
the caller logs what could not be removed and goes on. A measure and a removal can go a
step at a time (`measuring`, `removal`), so that the supervisor's parent works through a
large tree in slices between the turns of its loop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
OWNER_ALL = 0o700
BLOCK = 512  # st_blocks counts these
NOT_A_DIRECTORY = (errno.ELOOP, errno.ENOTDIR)  # a link, or anything but a directory


def open_dir(parent_fd: int, name: str) -> int:
    """Directory `name` of `parent_fd`, opened without following a link (OSError with ELOOP
    or ENOTDIR if it is not a directory); one its owner made unreadable is made rwx for the
    owner first, through a descriptor of that very directory."""
    try:
        return os.open(name, OPEN_DIR, dir_fd=parent_fd)
    except PermissionError:
        pinned = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
        try:
            os.chmod(f"/proc/self/fd/{pinned}", OWNER_ALL)
        finally:
            os.close(pinned)
        return os.open(name, OPEN_DIR, dir_fd=parent_fd)


def entries(fd: int) -> list[os.DirEntry[str]]:
    """What directory `fd` holds, listed at once (the listing's own descriptor closed)."""
    with os.scandir(fd) as listing:
        return list(listing)


def tree_bytes(parent_fd: int, name: str) -> int:
    """Disk bytes of directory `name` of `parent_fd` and all under it: links counted as
    themselves and never followed, a file with several hard links once. What cannot be
    read is not counted."""
    total = 0
    for total in measuring(parent_fd, name):  # noqa: B007 - the last one is the total
        pass
    return total


def measuring(parent_fd: int, name: str) -> Generator[int, None, None]:
    """tree_bytes() a step at a time: the bytes counted so far, after each entry; the last
    is the total."""
    seen: set[tuple[int, int]] = set()
    try:
        total = _charge(os.stat(name, dir_fd=parent_fd, follow_symlinks=False), seen)
    except OSError:
        yield 0
        return
    yield total
    for entry in _walk(parent_fd, name):
        with contextlib.suppress(OSError):
            total += _charge(entry.stat(follow_symlinks=False), seen)
        yield total


def _charge(st: os.stat_result, seen: set[tuple[int, int]]) -> int:
    if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
        if (st.st_dev, st.st_ino) in seen:
            return 0
        seen.add((st.st_dev, st.st_ino))
    return int(st.st_blocks) * BLOCK


def _walk(parent_fd: int, name: str) -> Iterator[os.DirEntry[str]]:
    """Everything under directory `name` of `parent_fd`, depth first; directories entered
    by descriptor, never through a link; unreadable ones skipped. One descriptor per level
    is open at a time."""
    stack: list[tuple[int, list[os.DirEntry[str]]]] = []
    try:
        _push(stack, parent_fd, name)
    except OSError:
        return
    try:
        while stack:
            fd, pending = stack[-1]
            if not pending:
                os.close(stack.pop()[0])
                continue
            entry = pending.pop()
            yield entry  # its directory's descriptor is still open: entry.stat() works
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    _push(stack, fd, entry.name)
    finally:
        for fd, _ in stack:
            os.close(fd)


def _push(stack: list[tuple[int, list[os.DirEntry[str]]]], parent_fd: int, name: str) -> None:
    fd = open_dir(parent_fd, name)
    try:
        stack.append((fd, entries(fd)))
    except OSError:
        os.close(fd)
        raise


@dataclass
class _Frame:
    """A directory being emptied: its descriptor, its name in its parent, the
    subdirectories left to empty."""

    fd: int
    name: str
    subdirectories: list[str] = field(default_factory=list)


def remove_tree(parent_fd: int, name: str) -> list[str]:
    """Remove `name` of directory `parent_fd` and everything under it, never following a
    link (a link is removed itself). What could not be removed, one line each (empty: all
    gone); a failure never stops the rest."""
    problems: list[str] = []
    for _ in removal(parent_fd, name, problems):
        pass
    return problems


def removal(parent_fd: int, name: str, problems: list[str]) -> Iterator[None]:
    """remove_tree() a step at a time: it yields after each entry (a few microseconds), so
    that a large tree is removed in slices between other work; what could not be removed
    is added to `problems`. Its descriptors close when it ends or is closed."""
    try:
        stack = [_Frame(open_dir(parent_fd, name), name)]
    except OSError as exc:
        if exc.errno in NOT_A_DIRECTORY:
            _unlink(parent_fd, name, name, problems)
        else:
            problems.append(f"{name}: {exc.strerror}")
        return
    try:
        yield from _empty_files(stack[0], name, problems)
        while stack:
            frame = stack[-1]
            if frame.subdirectories:
                child = _enter(frame, frame.subdirectories.pop(), problems)
                if child is not None:
                    stack.append(child)
                    yield from _empty_files(child, child.name, problems)
                continue
            os.close(stack.pop().fd)
            _rmdir(stack[-1].fd if stack else parent_fd, frame.name, problems)
    finally:
        for left in stack:
            os.close(left.fd)


def _enter(frame: _Frame, name: str, problems: list[str]) -> _Frame | None:
    """The subdirectory `name` of `frame`; None if it is gone, or was a link (swapped in
    after the listing: removed itself), or cannot be opened."""
    try:
        return _Frame(open_dir(frame.fd, name), name)
    except OSError as exc:
        if exc.errno in NOT_A_DIRECTORY:
            _unlink(frame.fd, name, name, problems)
        elif exc.errno != errno.ENOENT:
            problems.append(f"{name}: {exc.strerror}")
        return None


def _empty_files(frame: _Frame, where: str, problems: list[str]) -> Iterator[None]:
    """Unlink every entry of `frame` that is not a directory (links included, never their
    targets), yielding after each; note its subdirectories. Made writable by its owner
    first (a read-only directory of a Go module cache, say)."""
    with contextlib.suppress(OSError):
        os.fchmod(frame.fd, OWNER_ALL)
    try:
        listed = entries(frame.fd)
    except OSError as exc:
        problems.append(f"{where}: {exc.strerror}")
        return
    for entry in listed:
        if _is_dir(entry):
            frame.subdirectories.append(entry.name)
        else:
            _unlink(frame.fd, entry.name, where, problems)
        yield


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False  # unlinked as it is: a directory refuses, and is reported


def _unlink(fd: int, name: str, where: str, problems: list[str]) -> None:
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        problems.append(f"{where}/{name}: became a directory while being removed")
    except OSError as exc:
        problems.append(f"{where}/{name}: {exc.strerror}")


def _rmdir(fd: int, name: str, problems: list[str]) -> None:
    try:
        os.rmdir(name, dir_fd=fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        problems.append(f"{name}: {exc.strerror}")
