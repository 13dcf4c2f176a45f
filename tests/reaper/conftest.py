"""Fixtures of the reaper tests: a steered clock, claims on it, fresh databases, the CLIs,
reaper processes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from mobvibe.cli import admin
from mobvibe.reaper.sweep import ReaperSettings
from mobvibe.sql import store
from mobvibe.sql.jobs import Job
from tests.helpers import migrate_with_test_clock, set_clock, wait_for


class Clock:
    """The SQL clock of one connection, moved by hand: no test waits for real time."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        # a little ahead of the real clock, so that jobs inserted just now are due
        self.now = datetime.now(UTC) + timedelta(seconds=1)
        set_clock(conn, self.now)

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        set_clock(self.conn, self.now)
        return self.now

    def at(self, when: datetime) -> None:
        self.now = when
        set_clock(self.conn, when)


@pytest.fixture
def clock(conn: psycopg.Connection[Any]) -> Clock:
    return Clock(conn)


def claim(conn: psycopg.Connection[Any], worker: str = "worker-a") -> Job | None:
    """claim_next_job on `conn`, so that it reads that connection's clock."""
    return store.claim(conn, worker)


def job_row(conn: psycopg.Connection[Any], job_id: Any) -> dict[str, Any]:
    row = store.get_job(conn, job_id)
    assert row is not None, f"job {job_id} is gone"
    return row.as_dict()


@pytest.fixture
def settings() -> ReaperSettings:
    """The defaults, with small batches so that the batch loops are exercised."""
    return ReaperSettings(batch_size=50, prune_batch=50, name="test-reaper")


@pytest.fixture
def fresh_url(new_database: Callable[..., str]) -> str:
    """A database of its own, migrated: for tests that alter the schema."""
    url = new_database("mobvibe_reaper")
    with psycopg.connect(url, autocommit=True) as conn:
        migrate_with_test_clock(conn)
    return url


@pytest.fixture
def cli(db_url: str) -> Callable[..., Result]:
    """invoke(*args, input=, url=) runs mobvibe-queue in this process."""

    def invoke(*args: str, input: str | None = None, url: str | None = None) -> Result:
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            result = CliRunner().invoke(
                admin.main, ["--database-url", url or db_url, *args], input=input
            )
        finally:
            # the command points the root logger at the runner's stderr; give it back
            root.handlers[:] = handlers
            root.setLevel(level)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return invoke


BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def env_for(url: str) -> dict[str, str]:
    """The environment of a command run against `url`."""
    return {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)}


def reaper_once(
    url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`mobvibe-reaper --once` against `url` (and `env`), its output captured."""
    return subprocess.run(
        [str(BIN / "mobvibe-reaper"), "--once", *args],
        env={**env_for(url), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class Daemon:
    """A mobvibe-reaper daemon, its JSON log in a file."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc, self.log = proc, log

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == name:
                found.append(record)
        return found

    def wait_event(self, name: str, count: int = 1, timeout: float = 10) -> list[dict[str, Any]]:
        return wait_for(
            lambda: len(e := self.events(name)) >= count and e,
            timeout,
            message=f"{count} x {name} in the reaper log",
        )


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """start(url, *args) runs a mobvibe-reaper daemon; killed at the end if still running."""
    started: list[Daemon] = []

    def start(url: str, *args: str) -> Daemon:
        log = tmp_path / f"reaper-{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    str(BIN / "mobvibe-reaper"),
                    "--log-format",
                    "json",
                    "--log-level",
                    "debug",
                    *args,
                ],
                env=env_for(url),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started.append(Daemon(proc, log))
        return started[-1]

    yield start
    for running in started:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait(10)
