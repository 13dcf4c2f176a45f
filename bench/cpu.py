"""Where the CPU goes: the workers, the PostgreSQL server, everything else on the machine.

Read from /proc between two moments of a run. CPU seconds per job do not
depend on how loaded the machine is the way jobs per second do, so they say
what a change saves even on a noisy machine; the "other" share says how much
of the machine someone else was using meanwhile.

The server's CPU is its postmaster's own, plus what its exited children used
(cutime, cstime), plus what its live children used so far: backends that come
and go between two snapshots are counted too. Only for a server on this
machine; for another, the server's share is left out.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of `pid` so far (None when it is gone or unreadable)."""
    fields = _stat(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / _TICK


def children(pid: int) -> list[int]:
    """Pids of the live children of `pid` (from every process's stat: some kernels have no
    /proc/PID/task/TID/children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """Pids of every live process below `pid`."""
    below, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        below += kids
        todo += kids
    return below


def tree_cpu(pid: int) -> float | None:
    """CPU seconds of `pid`, of its waited-for children, and of its live children."""
    fields = _stat(pid)
    if fields is None:
        return None
    own = sum(int(v) for v in fields[11:15]) / _TICK  # utime, stime, cutime, cstime
    return own + sum(process_cpu(child) or 0.0 for child in children(pid))


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / _TICK, sum(values[:8]) / _TICK


def postmaster_of(backend_pid: int) -> int | None:
    """The postmaster's pid, given one of its backends' (None if it is not on this machine)."""
    with contextlib.suppress(OSError, ValueError):
        if Path(f"/proc/{backend_pid}/comm").read_text().strip() != "postgres":
            return None
        for line in Path(f"/proc/{backend_pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    return None


@dataclass(frozen=True)
class Snapshot:
    """CPU seconds used so far by each group, and by the machine, after `jobs` jobs."""

    jobs: int
    groups: dict[str, float]
    busy: float
    total: float


class Meter:
    """Snapshots of named groups: "server" (a postmaster's tree) and sets of processes."""

    def __init__(
        self, postmaster: int | None, processes: dict[str, list[int]] | None = None
    ) -> None:
        self.postmaster = postmaster
        self.processes = processes or {}

    def snapshot(self, jobs: int) -> Snapshot:
        groups = {
            name: sum(process_cpu(p) or 0.0 for p in pids) for name, pids in self.processes.items()
        }
        if self.postmaster is not None:
            groups["postgres"] = tree_cpu(self.postmaster) or 0.0
        busy, total = machine_cpu()
        return Snapshot(jobs, groups, busy, total)


def per_job(
    before: Snapshot, after: Snapshot, extra: dict[str, float] | None = None
) -> dict[str, float]:
    """CPU microseconds per job of each group, of the rest of the machine, and the load."""
    jobs = after.jobs - before.jobs
    if jobs <= 0:
        return {}
    spent = {name: after.groups[name] - before.groups[name] for name in after.groups}
    spent.update(extra or {})
    busy = after.busy - before.busy
    result = {name: round(seconds / jobs * 1e6, 1) for name, seconds in spent.items()}
    result["other"] = round(max(0.0, busy - sum(spent.values())) / jobs * 1e6, 1)
    result["machine_busy_share"] = round(busy / max(after.total - before.total, 1e-9), 3)
    return result
