"""The SQL clock the tests steer: queue_now() reads mobvibe.now on a connection whose
database has its test clock on, so time-based queue logic is tested without waiting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from mobvibe.sql.migrate import migrate

# A fixed instant in the future of every test run: jobs inserted with the
# default run_at (the real now()) are due when the SQL clock is set to it.
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def migrate_with_test_clock(conn: psycopg.Connection[Any]) -> None:
    """Migrate, then let set_clock steer queue_now(): a switch only the owner can turn."""
    migrate(conn)
    conn.execute("UPDATE queue_config SET test_clock = true")


def migrated(url: str) -> str:
    """The database at `url`, migrated, its test clock on; its URL."""
    with psycopg.connect(url, autocommit=True) as conn:
        migrate_with_test_clock(conn)
    return url


def set_clock(conn: psycopg.Connection[Any], at: datetime | None) -> None:
    """Steer queue_now() on this connection (None: back to the real clock), in a database
    whose test clock is on (migrate_with_test_clock)."""
    conn.execute(
        "SELECT set_config('mobvibe.now', %s, false)", ["" if at is None else at.isoformat()]
    )


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
