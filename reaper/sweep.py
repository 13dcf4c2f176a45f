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
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from mobvibe import clock, metrics
from mobvibe.errors import ConfigError
from mobvibe.logs import event
from mobvibe.sql import store
from mobvibe.sql.store import Reaped, SweepBatch
from mobvibe.vocabulary import EndReason, JobStatus, SweepOutcome

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


@dataclass(frozen=True)
class Verdict:
    """How a sweep counts and logs an expired attempt it ended."""

    counter: metrics.Counter
    level: int
    event: str
    message: str


# By the job's new status: pending (a retry), failed (its last attempt), or cancelled (a
# cancel had been requested, so the attempt is not retried).
VERDICTS = {
    JobStatus.PENDING: Verdict(
        metrics.REAPER_REQUEUED,
        logging.WARNING,
        "job_requeued",
        "attempt requeued: heartbeat expired",
    ),
    JobStatus.FAILED: Verdict(
        metrics.REAPER_DEAD_LETTERED,
        logging.ERROR,
        "job_dead_lettered",
        "attempts exhausted: heartbeat expired",
    ),
    JobStatus.CANCELLED: Verdict(
        metrics.REAPER_CANCELLED,
        logging.INFO,
        "job_cancelled",
        "attempt ended cancelled: heartbeat expired after a cancel was requested",
    ),
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
    try:
        reaped, pruned, last = _sweep(conn, settings, timeout_ms)
    except Exception:
        metrics.REAPER_SWEEPS.labels(SweepOutcome.ERROR).inc()
        raise
    duration = clock.monotonic() - started
    result = SweepResult(
        requeued=reaped[JobStatus.PENDING],
        dead_lettered=reaped[JobStatus.FAILED],
        cancelled=reaped[JobStatus.CANCELLED],
        pruned_completed=pruned[JobStatus.COMPLETED],
        pruned_failed=pruned[JobStatus.FAILED],
        pruned_cancelled=pruned[JobStatus.CANCELLED],
        duration_ms=round(duration * 1000, 1),
        waiting_retries=last.waiting_retries,
        next_retry_at=last.next_retry_at,
        heartbeat_timeout_s=last.heartbeat_timeout.total_seconds(),
        retain_completed_s=_seconds(last.retain_completed),
        retain_failed_s=_seconds(last.retain_failed),
    )
    _observe(result, duration)
    return result


def _sweep(
    conn: psycopg.Connection[Any], settings: ReaperSettings, timeout_ms: int | None
) -> tuple[Counter[JobStatus], Counter[JobStatus], SweepBatch]:
    """Call queue_sweep until no batch is full: the expired attempts ended and the jobs
    pruned, by status, and the last batch (its limits and retries waiting)."""
    reaped: Counter[JobStatus] = Counter()
    pruned: Counter[JobStatus] = Counter()
    while True:
        batch = store.sweep(
            conn, settings.name, settings.batch_size, settings.prune_batch, timeout_ms
        )
        for expired in batch.reaped:
            if expired.status is not None:  # None: ended or renewed by its worker meanwhile
                reaped[expired.status] += 1
                _report(VERDICTS[expired.status], expired, settings.name)
        for status, deleted in batch.pruned.items():
            pruned[status] += deleted
            metrics.REAPER_PRUNED.labels(status).inc(deleted)
        if not batch.more:
            return reaped, pruned, batch


def _seconds(age: timedelta | None) -> float | None:
    return None if age is None else age.total_seconds()


def _report(verdict: Verdict, reaped: Reaped, reaper: str) -> None:
    """Count and log one expired attempt the sweep ended."""
    verdict.counter.inc()
    event(
        log,
        verdict.level,
        verdict.event,
        verdict.message,
        job_id=str(reaped.job_id),
        session_id=str(reaped.session_id),
        reason=EndReason.HEARTBEAT_EXPIRED,
        reaper=reaper,
    )


def _observe(result: SweepResult, duration: float) -> None:
    metrics.REAPER_SWEEPS.labels(SweepOutcome.OK).inc()
    metrics.REAPER_SWEEP_DURATION.observe(duration)
    metrics.REAPER_LAST_SUCCESS.set(clock.wall())
    busy = result.requeued or result.dead_lettered or result.cancelled or result.pruned
    # An idle sweep every few seconds is noise at info level.
    event(
        log,
        logging.INFO if busy else logging.DEBUG,
        "reaper_swept",
        f"sweep done: {result.requeued} requeued, {result.dead_lettered} dead-lettered, "
        f"{result.cancelled} cancelled, {result.pruned} pruned",
        **result.as_dict(),
    )
