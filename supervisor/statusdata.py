"""What the status pages show, read from the database in a few indexed queries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from mobvibe.sql import store
from mobvibe.sql.store import JobSummary, MinuteCount, QueueStats, RunningJob

MINUTES = 15  # the throughput window
RECENT = 10  # dead letters and cancellations on the front page
RUNNING_SHOWN = 200


@dataclass(frozen=True)
class Overview:
    """The front page: the queue's depth, what ended lately, what runs now."""

    at: datetime
    stats: QueueStats
    minutes: list[MinuteCount]
    running: list[RunningJob]
    heartbeat_timeout: float
    dead_letters: list[JobSummary]
    cancellations: list[JobSummary]
    last_sweep: datetime | None

    def ended(self, field: str) -> int:
        """Jobs completed, dead_lettered or cancelled over the whole window."""
        return sum(int(getattr(minute, field)) for minute in self.minutes)

    def silent(self, job: RunningJob) -> bool:
        return is_silent(job, self.heartbeat_timeout)


def is_silent(job: RunningJob, heartbeat_timeout: float) -> bool:
    """The attempt's heartbeat is older than the timeout: the reaper requeues it."""
    age = job.heartbeat_age_seconds
    return age is None or age > heartbeat_timeout


def read_overview(conn: psycopg.Connection[Any]) -> Overview:
    """Every number of the front page, read now."""
    sweep = store.last_reaper_sweep(conn)
    return Overview(
        at=datetime.now(UTC),
        stats=store.stats(conn),
        minutes=store.ended_per_minute(conn, MINUTES),
        running=store.running_jobs(conn, RUNNING_SHOWN),
        heartbeat_timeout=store.queue_settings(conn).heartbeat_timeout.total_seconds(),
        dead_letters=store.recently_ended(conn, "failed", RECENT),
        cancellations=store.recently_ended(conn, "cancelled", RECENT),
        last_sweep=None if sweep is None else datetime.fromtimestamp(sweep, UTC),
    )


def overview_json(overview: Overview) -> dict[str, Any]:
    """/api/stats: the numbers of the front page (the lists have endpoints of their own)."""
    return {
        "time": overview.at,
        **overview.stats.as_dict(),
        "window_minutes": len(overview.minutes),
        "completed_in_window": overview.ended("completed"),
        "dead_lettered_in_window": overview.ended("dead_lettered"),
        "cancelled_in_window": overview.ended("cancelled"),
        "per_minute": [
            {
                "minute": m.minute,
                "completed": m.completed,
                "dead_lettered": m.dead_lettered,
                "cancelled": m.cancelled,
            }
            for m in overview.minutes
        ],
        "running_count": len(overview.running),
        "heartbeat_timeout_seconds": overview.heartbeat_timeout,
        "last_reaper_sweep": overview.last_sweep,
    }


def running_json(job: RunningJob, heartbeat_timeout: float) -> dict[str, Any]:
    """/api/workers, `mobvibe-queue workers --json`: a running job, and whether its heartbeat
    is overdue."""
    return {**job.as_dict(), "silent": is_silent(job, heartbeat_timeout)}
