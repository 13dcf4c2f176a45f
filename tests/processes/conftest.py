"""The supervisor fixture: real mobvibe-supervisor processes against the test database."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.commands import BIN, command_env, free_port
from tests.support.supervisor import FAST_HEARTBEAT_TIMEOUT, Running, set_heartbeat_timeout


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
                env=command_env(url or db_url, **(env or {})),
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
