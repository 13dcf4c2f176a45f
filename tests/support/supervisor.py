"""A real `mobvibe-supervisor` started for a test: its options for quick tests, its log."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg

from tests.support.commands import JsonLog
from tests.support.waiting import wait_for

FAST = [
    "--poll-interval",
    "0.5",
    "--heartbeat-interval",
    "0.2",
    "--reaper-interval",
    "0.2",
    "--shutdown-timeout",
    "5",
]
FAST_HEARTBEAT_TIMEOUT = 1.5


def set_heartbeat_timeout(url: str, seconds: float) -> None:
    """The heartbeat timeout of the queue in database `url` (as its owner)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE queue_config SET heartbeat_timeout = make_interval(secs => %s)", [seconds]
        )


class Running(JsonLog):
    """A supervisor started as a subprocess, its log in a file."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, port: int) -> None:
        super().__init__(log_path, "supervisor")
        self.proc = proc
        self.log_path = log_path
        self.port = port

    @property
    def pid(self) -> int:
        return self.proc.pid

    def worker_pids(self) -> set[int]:
        spawned = {e["worker_pid"] for e in self.events("worker_spawned")}
        exited = {e["worker_pid"] for e in self.events("worker_exited")}
        return spawned - exited

    def wait_workers(self, n: int, timeout: float = 15.0) -> set[int]:
        return wait_for(
            lambda: (p := self.worker_pids()) and len(p) == n and p,
            timeout,
            message=f"{n} workers running",
        )

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
