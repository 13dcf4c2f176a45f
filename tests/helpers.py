"""Helpers shared by the test suites: waiting on conditions, steering the SQL clock."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar

import psycopg

from mobvibe.sql.migrate import migrate

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Poll `predicate` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def migrate_with_test_clock(conn: psycopg.Connection[Any]) -> None:
    """Migrate, then let set_clock steer queue_now(): a switch only the owner can turn."""
    migrate(conn)
    conn.execute("UPDATE queue_config SET test_clock = true")


@contextlib.contextmanager
def triggers_off(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """The owner's connection with its triggers off (session_replication_role = replica), to
    make rows that an INSERT may not (finished jobs, impossible states); CHECKs still hold."""
    conn.execute("SET session_replication_role = replica")
    try:
        yield conn
    finally:
        conn.execute("RESET session_replication_role")


def set_clock(conn: psycopg.Connection[Any], at: datetime | None) -> None:
    """Steer queue_now() on this connection (None: back to the real clock), in a database
    whose test clock is on (migrate_with_test_clock)."""
    conn.execute(
        "SELECT set_config('mobvibe.now', %s, false)", ["" if at is None else at.isoformat()]
    )


def count(conn: psycopg.Connection[Any], status: str) -> int:
    row = conn.execute("SELECT count(*) FROM coding_jobs WHERE status = %s", [status]).fetchone()
    assert row is not None
    return int(row[0])


def command_processes(job_id: object) -> list[int]:
    """Live processes of a job's command, found by JOB_ID in their environment (a sandboxed
    command's own pids are those of its namespace, so it cannot tell them)."""
    marker = f"JOB_ID={job_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if marker not in environ.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat", "rb") as stat:
                if stat.read().rpartition(b")")[2].split()[0] == b"Z":
                    continue
        except OSError:
            continue
        found.append(int(entry))
    return found
