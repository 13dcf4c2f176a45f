"""Helpers shared by the test suites: waiting on conditions, steering the SQL clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import psycopg

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


def set_clock(conn: psycopg.Connection[Any], at: datetime | None) -> None:
    """Steer queue_now() on this connection (None: back to the real clock)."""
    conn.execute(
        "SELECT set_config('mobvibe.now', %s, false)", ["" if at is None else at.isoformat()]
    )


def count(conn: psycopg.Connection[Any], status: str) -> int:
    row = conn.execute("SELECT count(*) FROM coding_jobs WHERE status = %s", [status]).fetchone()
    assert row is not None
    return int(row[0])
