"""One sweep of the reaper: requeue expired attempts, prune old finished jobs, report.

Every statement runs on its own in autocommit, one bounded batch at a time, so
a sweep never holds a lock for long and several reapers can sweep at once:
queue_reap_expired locks with SKIP LOCKED and re-checks each row under its
lock, so an attempt is counted by exactly one of them. The limits (heartbeat
timeout, retention) are the database's (queue_config): the reaper only says
when and how much per statement.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from mobvibe import clock, metrics
from mobvibe.errors import ConfigError
from mobvibe.logs import event
from mobvibe.sql import store
from mobvibe.sql.store import Reaped

log = logging.getLogger(__name__)
INTERVAL_DEFAULT = 5.0
BATCH_SIZE_DEFAULT = 500
PRUNE_BATCH_DEFAULT = 1000
LIMITS = ("heartbeat_timeout_s", "retain_completed_s", "retain_failed_s")  # reported, not set
BATCH_MAX = 100_000


def _default_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class ReaperSettings:
    """When one reaper sweeps and how much per statement (the limits are the database's)."""

    interval: float = INTERVAL_DEFAULT  # seconds between the daemon's sweeps
    batch_size: int = BATCH_SIZE_DEFAULT
    prune_batch: int = PRUNE_BATCH_DEFAULT
    # the reaper's row in queue_reaper_runs; built in the process that sweeps
    name: str = field(default_factory=_default_name)

    def validate(self) -> ReaperSettings:
        """Return self, or raise ConfigError naming the first setting that cannot work."""
        if self.interval <= 0:
            raise ConfigError("--interval must be greater than 0")
        for name in ("batch_size", "prune_batch"):
            if not 1 <= getattr(self, name) <= BATCH_MAX:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be from 1 to {BATCH_MAX}, "
                    f"got {getattr(self, name)}"
                )
        if not self.name:
            raise ConfigError("--name must not be empty")
        return self


@dataclass(frozen=True)
class SweepResult:
    """What one sweep did, the retries it left waiting, and the limits it applied
    (seconds; a retention of None keeps forever)."""

    requeued: int = 0
    dead_lettered: int = 0
    pruned_completed: int = 0
    pruned_failed: int = 0
    duration_ms: float = 0.0
    waiting_retries: int = 0
    next_retry_at: datetime | None = None
    heartbeat_timeout_s: float | None = None
    retain_completed_s: float | None = None
    retain_failed_s: float | None = None
    cancelled: int = 0  # expired attempts whose cancel was requested: ended, not retried
    pruned_cancelled: int = 0

    @property
    def pruned(self) -> int:
        return self.pruned_completed + self.pruned_failed + self.pruned_cancelled

    def as_dict(self) -> dict[str, Any]:
        """The `--once` summary: requeued, dead_lettered, pruned, duration_ms, then details,
        then the limits the database set."""
        details = asdict(self)
        next_at = details.pop("next_retry_at")
        limits = {name: details.pop(name) for name in LIMITS}
        return {
            "requeued": self.requeued,
            "dead_lettered": self.dead_lettered,
            "pruned": self.pruned,
            "duration_ms": self.duration_ms,
            **details,
            "next_retry_at": None if next_at is None else next_at.isoformat(),
            **limits,
        }


def run_once(
    conn: psycopg.Connection[Any], settings: ReaperSettings, timeout_ms: int | None = None
) -> SweepResult:
    """Sweep once on `conn` (autocommit); counts, logs and records the run.

    Each call of queue_sweep is one statement doing a bounded batch of every duty:
    an idle sweep costs the database one statement; a busy one calls again while
    a batch was full. `timeout_ms`: each call is cancelled after that long (a batch
    is bounded: one that takes long is stuck behind something, and the next sweep
    tries again).
    """
    started = clock.monotonic()
    requeued = dead_lettered = cancelled = 0
    pruned = {"completed": 0, "failed": 0, "cancelled": 0}
    try:
        while True:
            batch = store.sweep(
                conn, settings.name, settings.batch_size, settings.prune_batch, timeout_ms
            )
            for reaped in batch.reaped:
                outcome = _reaped(reaped, settings.name)
                requeued += outcome == "requeued"
                dead_lettered += outcome == "dead_lettered"
                cancelled += outcome == "cancelled"
            for status, deleted in batch.pruned.items():
                pruned[status] += deleted
                metrics.REAPER_PRUNED.labels(status).inc(deleted)
            if not batch.more:
                break
    except Exception:
        metrics.REAPER_SWEEPS.labels("error").inc()
        raise
    duration = clock.monotonic() - started
    result = SweepResult(
        requeued,
        dead_lettered,
        pruned["completed"],
        pruned["failed"],
        round(duration * 1000, 1),
        batch.waiting_retries,
        batch.next_retry_at,
        batch.heartbeat_timeout.total_seconds(),
        _seconds(batch.retain_completed),
        _seconds(batch.retain_failed),
        cancelled,
        pruned["cancelled"],
    )
    _observe(result, duration)
    return result


def _seconds(age: timedelta | None) -> float | None:
    return None if age is None else age.total_seconds()


def _reaped(reaped: Reaped, reaper: str) -> str | None:
    """Count and log one expired attempt the sweep ended; what became of it."""
    if reaped.will_retry is None:
        return None  # finished by its worker between our scan and our lock
    fields = {
        "job_id": str(reaped.job_id),
        "session_id": str(reaped.session_id),
        "reason": "heartbeat_expired",
        "reaper": reaper,
    }
    if reaped.status == "cancelled":
        event(
            log,
            logging.INFO,
            "job_cancelled",
            "attempt ended cancelled: heartbeat expired after a cancel was requested",
            **fields,
        )
        return "cancelled"
    if reaped.will_retry:
        metrics.REAPER_REQUEUED.inc()
        event(log, logging.WARNING, "job_requeued", "attempt requeued: heartbeat expired", **fields)
        return "requeued"
    metrics.REAPER_DEAD_LETTERED.inc()
    event(
        log, logging.ERROR, "job_dead_lettered", "attempts exhausted: heartbeat expired", **fields
    )
    return "dead_lettered"


def _observe(result: SweepResult, duration: float) -> None:
    metrics.REAPER_SWEEPS.labels("ok").inc()
    metrics.REAPER_SWEEP_DURATION.observe(duration)
    metrics.REAPER_LAST_SUCCESS.set(clock.wall())
    busy = result.requeued or result.dead_lettered or result.pruned
    # An idle sweep every few seconds is noise at info level.
    event(
        log,
        logging.INFO if busy else logging.DEBUG,
        "reaper_swept",
        f"sweep done: {result.requeued} requeued, {result.dead_lettered} dead-lettered, "
        f"{result.pruned} pruned",
        **result.as_dict(),
    )
