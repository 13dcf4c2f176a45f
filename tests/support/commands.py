"""The installed commands (mobvibe-queue, mobvibe-reaper, mobvibe-supervisor) as a test runs
them: as subprocesses against a database, or mobvibe-queue in this process; their JSON logs."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from mobvibe.cli import admin
from tests.support.waiting import wait_for

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
QUEUE_CLI = str(BIN / "mobvibe-queue")


def command_env(url: str | None, **extra: str) -> dict[str, str]:
    """The environment of a command run against `url` (None: no DATABASE_URL): this one's,
    without its MOBVIBE_* settings, with the checkout on PYTHONPATH (for the handlers of
    tests), then `extra`."""
    env = {
        k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("MOBVIBE_")
    }
    env["PYTHONPATH"] = str(ROOT)
    if url is not None:
        env["DATABASE_URL"] = url
    return {**env, **extra}


def run_command(
    command: str,
    *args: str,
    url: str | None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run the installed `command` against `url` (with `env` added), its output captured."""
    return subprocess.run(
        [str(BIN / command), *args],
        env=command_env(url, **(env or {})),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_command(
    command: str, *args: str, url: str | None, env: dict[str, str] | None = None, **popen: Any
) -> subprocess.Popen[str]:
    """Start the installed `command` against `url` (text; its output in pipes unless `popen`
    says where)."""
    return subprocess.Popen(
        [str(BIN / command), *args],
        env=command_env(url, **(env or {})),
        text=True,
        **{"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen},
    )


def run_queue_cli(
    *args: str, database_url: str | None, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the installed `mobvibe-queue` with DATABASE_URL set (None: unset)."""
    return run_command("mobvibe-queue", *args, url=database_url, stdin=stdin, timeout=timeout)


def queue_output(url: str, *args: str) -> str:
    """mobvibe-queue against `url`; its output (it must succeed)."""
    done = run_queue_cli(*args, database_url=url)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def invoke_queue(url: str, *args: str, input: str | None = None) -> Result:
    """mobvibe-queue against `url` in this process (click's runner); our bugs are raised."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        result = CliRunner().invoke(admin.main, ["--database-url", url, *args], input=input)
    finally:
        # the command points the root logger at the runner's stderr; give it back
        root.handlers[:] = handlers
        root.setLevel(level)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def assert_one_error_line(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    """The command failed with `exit_code`, one `Error:` line and no traceback; that line."""
    output = result.stdout + result.stderr
    assert result.returncode == exit_code, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    return errors[0]


def free_port() -> int:
    """A TCP port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class JsonLog:
    """The JSON log of a process, in a file: its events as they are written."""

    def __init__(self, path: Path, who: str) -> None:
        self.path, self.who = path, who

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The records of event `name` (None: every record), in order."""
        found = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (name is None or record.get("event") == name):
                found.append(record)
        return found

    def wait_event(self, name: str, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The records of event `name` once there are `count` of them."""
        return wait_for(
            lambda: (e := self.events(name)) and len(e) >= count and e,
            timeout,
            message=f"{count} x {name} in the {self.who} log",
        )
