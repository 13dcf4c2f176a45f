"""Real supervisor processes for the tests: start, read their JSON log, signal them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers import wait_for

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running:
    """A supervisor started as a subprocess, its log in a file."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, port: int) -> None:
        self.proc = proc
        self.log_path = log_path
        self.port = port

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (name is None or record.get("event") == name):
                found.append(record)
        return found

    def wait_event(self, name: str, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        return wait_for(
            lambda: (e := self.events(name)) and len(e) >= count and e,
            timeout,
            message=f"{count} x {name} in the supervisor log",
        )

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


@pytest.fixture
def supervisor(db_url: str, tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """start(*args) runs mobvibe-supervisor against the test database."""
    started: list[Running] = []

    def start(
        *args: str,
        metrics: bool = False,
        env: dict[str, str] | None = None,
        url: str | None = None,
        heartbeat_timeout: float | None = FAST_HEARTBEAT_TIMEOUT,
    ) -> Running:
        # The heartbeat timeout is the database's, for the supervisor and the reaper
        # alike (None: the test has set it, as the owner).
        if heartbeat_timeout is not None:
            set_heartbeat_timeout(url or db_url, heartbeat_timeout)
        port = free_port() if metrics else 0
        log_path = tmp_path / f"supervisor-{len(started)}.log"
        full_env = {
            **os.environ,
            "DATABASE_URL": url or db_url,
            "PYTHONPATH": str(ROOT),
            **(env or {}),
        }
        command = [
            str(BIN / "mobvibe-supervisor"),
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--metrics-port",
            str(port),
            *args,
        ]
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                command,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                start_new_session=True,
            )
        running = Running(proc, log_path, port)
        started.append(running)
        running.wait_event("supervisor_started")
        return running

    yield start
    for running in started:
        if running.proc.poll() is None:
            os.killpg(running.proc.pid, signal.SIGKILL)
            running.proc.wait(10)
