"""The processes of a job's command, as the host sees them."""

from __future__ import annotations

import os


def processes_with(variable: str) -> list[tuple[int, list[bytes]]]:
    """(pid, argv) of every live process whose environment holds `variable` (NAME=value);
    zombies are left out."""
    marker = variable.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if marker not in environ.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                argv = cmdline.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as stat:
                if stat.read().rpartition(b")")[2].split()[0] == b"Z":
                    continue
        except OSError:
            continue
        found.append((int(entry), argv))
    return found


def command_processes(job_id: object) -> list[int]:
    """Live processes of a job's command, found by JOB_ID in their environment (a sandboxed
    command's own pids are those of its namespace, so it cannot tell them)."""
    return [pid for pid, _ in processes_with(f"JOB_ID={job_id}")]
