"""Fixtures of the reaper tests: a steered clock, fresh databases, the command line in this
process, reaper processes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import Result

from mobvibe.reaper.sweep import ReaperSettings
from tests.support.commands import BIN, JsonLog, command_env, invoke_queue
from tests.support.sqlclock import Clock, migrated


@pytest.fixture
def clock(conn: psycopg.Connection[Any]) -> Clock:
    return Clock(conn)


@pytest.fixture
def settings() -> ReaperSettings:
    """The defaults, with small batches so that the batch loops are exercised."""
    return ReaperSettings(batch_size=50, prune_batch=50, name="test-reaper")


@pytest.fixture
def fresh_url(new_database: Callable[..., str]) -> str:
    """A database of its own, migrated: for tests that alter the schema."""
    return migrated(new_database("mobvibe_reaper"))


@pytest.fixture
def cli(db_url: str) -> Callable[..., Result]:
    """invoke(*args, input=, url=) runs mobvibe-queue in this process."""

    def invoke(*args: str, input: str | None = None, url: str | None = None) -> Result:
        return invoke_queue(url or db_url, *args, input=input)

    return invoke


class Daemon(JsonLog):
    """A mobvibe-reaper daemon, its JSON log in a file."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        super().__init__(log, "reaper")
        self.proc, self.log = proc, log


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """start(url, *args) runs a mobvibe-reaper daemon; killed at the end if still running."""
    started: list[Daemon] = []

    def start(url: str, *args: str) -> Daemon:
        log = tmp_path / f"reaper-{len(started)}.log"
        command = [str(BIN / "mobvibe-reaper"), "--log-format", "json", "--log-level", "debug"]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*command, *args], env=command_env(url), stdout=out, stderr=subprocess.STDOUT
            )
        started.append(Daemon(proc, log))
        return started[-1]

    yield start
    for running in started:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait(10)
