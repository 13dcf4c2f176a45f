"""The parent's side of the workspaces: DIR kept within --workspaces-max-bytes and
--workspaces-max-count (docs/backend/JOB_QUEUE.md, "Workspaces: a session's work stays on
its pod").

`Keeper.sweep`, at start and after an attempt ends: the least recently used first (the
directory's modification time, which a worker sets when its attempt has ended), never one
that an attempt holds (an exclusive lock is tried, never waited for). An evicted
workspace is first renamed out of the sessions' names under that lock, so its session's
next attempt starts cold rather than in a half-removed tree, then removed without
following a link (trees.py). Sizes are measured, and evicted trees removed, a slice at
each turn of the parent's loop (`Keeper.step`), which a large tree must not hold up. What
cannot be removed is logged and left; nothing here stops the supervisor.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import stat
from collections.abc import Generator, Iterator
from dataclasses import dataclass

from mobvibe import clock, metrics
from mobvibe.logs import event
from mobvibe.supervisor import trees
from mobvibe.supervisor.workspaces import EVICTED_PREFIX, OPEN_ROOT, is_session_name
from mobvibe.vocabulary import WorkspaceLimit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kept:
    """A workspace on disk: its session's name, its last use (ns), its size."""

    name: str
    used_ns: int
    size: int


class Keeper:
    """The parent's side: measures the workspaces and evicts beyond the limits (0: none)."""

    def __init__(self, root: str, max_bytes: int = 0, max_count: int = 0) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_count = max_count
        self.sizes: dict[str, tuple[int, int, int]] = {}  # name -> (inode, mtime, bytes)
        self.reported: set[str] = set()  # leftovers already logged as not removable
        # Opened at the first sweep and kept: removals go on from it between sweeps.
        self.root_fd: int | None = None
        # Evicted workspaces being removed, a slice at a time (step()), with their problems.
        self.removing: dict[str, tuple[Iterator[None], list[str]]] = {}
        # Workspaces being measured, a slice at a time; until done, what is counted so far
        # stands for their size (never more than it: no eviction too many).
        self.measuring: dict[str, _Measure] = {}
        self.resweep = False  # a measure ended: look at the limits again

    @property
    def busy(self) -> bool:
        """Work is left for step()."""
        return bool(self.measuring or self.removing)

    def sweep(self) -> list[Kept]:
        """Evict beyond the limits, and have what earlier evictions left removed too (by
        step()); the workspaces kept."""
        if self.root_fd is None:
            self.root_fd = os.open(self.root, OPEN_ROOT)
        self.resweep = False
        self._remove_leftovers(self.root_fd)
        kept = self._evict(self.root_fd, self._survey(self.root_fd))
        metrics.WORKSPACES.set(len(kept))
        metrics.WORKSPACE_BYTES.set(sum(k.size for k in kept))
        return kept

    def step(self, budget: float) -> None:
        """Go on measuring, then removing evicted workspaces, for about `budget` seconds."""
        deadline = clock.monotonic() + budget
        if self._measure_some(deadline):
            self._remove_some(deadline)

    def _measure_some(self, deadline: float) -> bool:
        """Measure until `deadline`; True if every measure is done."""
        for name, measure in list(self.measuring.items()):
            for counted in measure.steps:
                measure.counted = counted
                if clock.monotonic() >= deadline:
                    return False
            del self.measuring[name]
            self.sizes[name] = (*measure.key, measure.counted)
            self.resweep = True
        return True

    def _remove_some(self, deadline: float) -> None:
        for name, (steps, problems) in list(self.removing.items()):
            for _ in steps:
                if clock.monotonic() >= deadline:
                    return
            del self.removing[name]
            self._removed(name, problems)

    def over(self, kept: list[Kept]) -> WorkspaceLimit | None:
        """Which limit `kept` exceeds, or None."""
        if self.max_count and len(kept) > self.max_count:
            return WorkspaceLimit.COUNT
        if self.max_bytes and sum(k.size for k in kept) > self.max_bytes:
            return WorkspaceLimit.BYTES
        return None

    def _survey(self, root_fd: int) -> list[Kept]:
        found = []
        for entry in trees.entries(root_fd):
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if is_session_name(entry.name) and stat.S_ISDIR(st.st_mode):
                    found.append(Kept(entry.name, st.st_mtime_ns, self._size(root_fd, st, entry)))
        names = {k.name for k in found}  # forget the gone
        self.sizes = {n: size for n, size in self.sizes.items() if n in names}
        for name in set(self.measuring) - names:
            self.measuring.pop(name).steps.close()
        return found

    def _size(self, root_fd: int, st: os.stat_result, entry: os.DirEntry[str]) -> int:
        """Its size as last measured, measured again (by step()) when it was used since (its
        modification time moved), unless an attempt holds it now: after its end."""
        key = (st.st_ino, st.st_mtime_ns)
        cached = self.sizes.get(entry.name)
        if cached is not None and (cached[:2] == key or _held(root_fd, entry.name)):
            return cached[2]
        measure = self.measuring.get(entry.name)
        if measure is None or measure.key != key:
            if measure is not None:
                measure.steps.close()
            measure = _Measure(key, trees.measuring(root_fd, entry.name))
            self.measuring[entry.name] = measure
        return measure.counted

    def _evict(self, root_fd: int, kept: list[Kept]) -> list[Kept]:
        """Evict the least recently used while a limit is exceeded; the ones kept."""
        left = sorted(kept, key=lambda k: k.used_ns)
        for oldest in list(left):
            over = self.over(left)
            if over is None:
                break
            if self._evict_one(root_fd, oldest, over):
                left.remove(oldest)
        if self.over(left):
            event(
                log,
                logging.WARNING,
                "workspaces_over_limit",
                "workspaces beyond their limits are in use or could not be removed",
                workspaces=len(left),
                bytes=sum(k.size for k in left),
            )
        return left

    def _evict_one(self, root_fd: int, kept: Kept, over: WorkspaceLimit) -> bool:
        """Rename `kept` out of the sessions' names unless an attempt holds it, then remove
        it; True if its session will start cold."""
        trash = f"{EVICTED_PREFIX}{kept.name}-{secrets.token_hex(4)}"
        try:
            if not _rename_unless_held(root_fd, kept.name, trash):
                event(
                    log,
                    logging.DEBUG,
                    "workspace_in_use",
                    "a workspace to evict is held by a running attempt: kept",
                    session_id=kept.name,
                )
                return False
        except OSError as exc:
            _skipped(kept, exc)
            return False
        self.sizes.pop(kept.name, None)
        metrics.WORKSPACE_EVICTIONS.inc()
        event(
            log,
            logging.INFO,
            "workspace_evicted",
            f"workspace evicted: {over} over the limit",
            session_id=kept.name,
            bytes=kept.size,
            idle_seconds=round(max(0.0, clock.wall() - kept.used_ns / 1e9), 1),
            over=over,
        )
        self._remove(root_fd, trash)
        return True

    def _remove_leftovers(self, root_fd: int) -> None:
        for entry in trees.entries(root_fd):
            if entry.name.startswith(EVICTED_PREFIX):
                self._remove(root_fd, entry.name)

    def _remove(self, root_fd: int, name: str) -> None:
        """Have evicted workspace `name` removed, unless it is being removed already."""
        if name not in self.removing:
            problems: list[str] = []
            self.removing[name] = (trees.removal(root_fd, name, problems), problems)

    def _removed(self, name: str, problems: list[str]) -> None:
        """A removal went through the whole tree: log once what it left."""
        if problems and name not in self.reported:
            self.reported.add(name)
            event(
                log,
                logging.WARNING,
                "workspace_not_removed",
                "an evicted workspace could not be removed entirely; tried again at each sweep",
                path=os.path.join(self.root, name),
                problem=problems[0],
                problems=len(problems),
            )
        elif not problems:
            self.reported.discard(name)


@dataclass
class _Measure:
    """A workspace being measured: its (inode, modification time), the walk, the bytes
    counted so far."""

    key: tuple[int, int]
    steps: Generator[int, None, None]
    counted: int = 0


def _held(root_fd: int, name: str) -> bool:
    """True if an attempt holds workspace `name` now (its lock is shared-held)."""
    try:
        fd = trees.open_dir(root_fd, name)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # and with it our lock, if we got it
    return False


def _rename_unless_held(root_fd: int, name: str, trash: str) -> bool:
    """Rename workspace `name` to `trash` under an exclusive lock; False if an attempt holds
    it (the lock is not waited for)."""
    fd = trees.open_dir(root_fd, name)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        os.rename(name, trash, src_dir_fd=root_fd, dst_dir_fd=root_fd)
        return True
    finally:
        os.close(fd)


def _skipped(kept: Kept, exc: OSError) -> None:
    event(
        log,
        logging.WARNING,
        "workspace_eviction_skipped",
        "a workspace to evict could not be removed; skipped",
        session_id=kept.name,
        error=exc.strerror or str(exc),
    )
