"""What the status pages show, read from the database in a few indexed queries."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import psycopg

from mobvibe import clock
from mobvibe.columns import Holder, holders
from mobvibe.sql import store
from mobvibe.sql.store import JobSummary, MinuteCount, QueueStats, UserWaiting
from mobvibe.vocabulary import JobStatus

MINUTES = 15  # the throughput window
RECENT = 10  # dead letters and cancellations on the front page
RUNNING_SHOWN = 200
USERS_SHOWN = 50  # users with jobs waiting for their limit
# The ways a job ends that a MinuteCount counts: its fields after the minute.
ENDINGS = tuple(field.name for field in fields(MinuteCount))[1:]


@dataclass(frozen=True)
class Overview:
    """The front page: the queue's depth, what ended lately, what runs now."""

    at: datetime
    stats: QueueStats
    minutes: list[MinuteCount]
    running: list[Holder]
    heartbeat_timeout: float
    dead_letters: list[JobSummary]
    cancellations: list[JobSummary]
    last_sweep: datetime | None
    users_waiting: list[UserWaiting] = field(default_factory=list)

    def ended(self, field: str) -> int:
        """Jobs completed, dead_lettered or cancelled over the whole window."""
        return sum(int(getattr(minute, field)) for minute in self.minutes)

    def depth(self) -> dict[JobStatus, int]:
        """The jobs in each status, now."""
        return self.stats.by_status()

    def swept_ago(self) -> float | None:
        """Seconds since the last reaper sweep (None: never)."""
        return None if self.last_sweep is None else (self.at - self.last_sweep).total_seconds()


def read_overview(conn: psycopg.Connection[Any]) -> Overview:
    """Every number of the front page, read now."""
    sweep = store.last_reaper_sweep(conn)
    timeout = store.queue_settings(conn).heartbeat_timeout.total_seconds()
    return Overview(
        at=clock.now(),
        stats=store.stats(conn),
        minutes=store.ended_per_minute(conn, MINUTES),
        running=holders(store.running_jobs(conn, RUNNING_SHOWN), timeout),
        heartbeat_timeout=timeout,
        dead_letters=store.recently_ended(conn, JobStatus.FAILED, RECENT),
        cancellations=store.recently_ended(conn, JobStatus.CANCELLED, RECENT),
        last_sweep=None if sweep is None else datetime.fromtimestamp(sweep, UTC),
        users_waiting=store.users_waiting(conn, USERS_SHOWN),
    )


def overview_json(overview: Overview) -> dict[str, Any]:
    """/api/stats: the numbers of the front page (the lists have endpoints of their own)."""
    return {
        "time": overview.at,
        **overview.stats.as_dict(),
        "window_minutes": len(overview.minutes),
        **{f"{field}_in_window": overview.ended(field) for field in ENDINGS},
        "per_minute": [
            {"minute": m.minute, **{field: getattr(m, field) for field in ENDINGS}}
            for m in overview.minutes
        ],
        "running_count": len(overview.running),
        "heartbeat_timeout_seconds": overview.heartbeat_timeout,
        "last_reaper_sweep": overview.last_sweep,
        "users_waiting": [user.as_dict() for user in overview.users_waiting],
    }
