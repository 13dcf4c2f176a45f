"""The reaper's loop: sweep every interval, survive database outages, stop on a signal."""

from __future__ import annotations

import contextlib
import logging
import random
import signal
from collections.abc import Callable
from typing import Any

import psycopg

from mobvibe import clock, metrics
from mobvibe.errors import DatabaseUnavailableError
from mobvibe.logs import event
from mobvibe.reaper.sweep import ReaperSettings, run_once
from mobvibe.sql import db
from mobvibe.vocabulary import SweepOutcome

log = logging.getLogger(__name__)
JITTER = 0.1  # reapers started together drift apart instead of sweeping in lockstep
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 30.0
SLEEP_SLICE = 0.1  # how quickly a stop request is noticed between sweeps
# No statement of a sweep should take long (every batch is bounded); one that
# does is stuck behind something, and the next sweep will try again.
SWEEP_TIMEOUT_MS = 60_000


def serve_forever(url: str, settings: ReaperSettings, should_stop: Callable[[], bool]) -> None:
    """Sweep every `settings.interval` (±10%) until should_stop(); never raise on a DB outage."""
    conn: psycopg.Connection[Any] | None = None
    failures = 0
    event(
        log,
        logging.INFO,
        "reaper_started",
        "reaper started",
        reaper=settings.name,
        interval=settings.interval,
    )
    try:
        while not should_stop():
            try:
                conn = conn if conn is not None and not conn.closed else _connect(url)
                run_once(conn, settings, SWEEP_TIMEOUT_MS)
                failures, delay = 0, settings.interval * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311
            except (DatabaseUnavailableError, psycopg.Error) as exc:
                failures += 1
                delay = _backoff(failures, settings.interval)
                _sweep_failed(exc, failures, delay)
                _close(conn)
                conn = None
            _sleep(delay, should_stop)
    finally:
        _close(conn)
    event(log, logging.INFO, "reaper_stopped", "reaper stopped", reaper=settings.name)


def run_daemon(url: str, settings: ReaperSettings) -> int:
    """Run the reaper in this process until SIGTERM or SIGINT; the current sweep finishes."""
    stop = {"requested": False}

    def request_stop(signum: int, _frame: Any) -> None:
        stop["requested"] = True  # only a flag: the loop notices it between sweeps

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    serve_forever(url, settings, lambda: stop["requested"])
    return 0


def _connect(url: str) -> psycopg.Connection[Any]:
    """A connection that keeps no session state, so that it may go through PgBouncer in
    transaction mode: no startup options, no prepared statements (a sweep every few
    seconds gains nothing from them)."""
    return db.connect(url, application_name="mobvibe-reaper", pooled=True)


def _close(conn: psycopg.Connection[Any] | None) -> None:
    if conn is not None:
        with contextlib.suppress(psycopg.Error):
            conn.close()


def _backoff(failures: int, interval: float) -> float:
    """Capped exponential backoff, with jitter, so an outage is not met with a storm."""
    base = min(BACKOFF_CAP, max(BACKOFF_FIRST, min(interval, 1.0)) * 2 ** (failures - 1))
    return float(base * random.uniform(1 - JITTER, 1 + JITTER))  # noqa: S311 - jitter


def _sweep_failed(exc: BaseException, failures: int, delay: float) -> None:
    if isinstance(exc, DatabaseUnavailableError):
        # run_once never ran, so it did not count this failed sweep itself.
        metrics.REAPER_SWEEPS.labels(SweepOutcome.ERROR).inc()
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    event(
        log,
        logging.ERROR,
        "reaper_sweep_failed",
        f"sweep failed: {message}",
        failures=failures,
        retry_in_s=round(delay, 2),
    )


def _sleep(seconds: float, should_stop: Callable[[], bool]) -> None:
    deadline = clock.monotonic() + seconds
    while not should_stop():
        left = deadline - clock.monotonic()
        if left <= 0:
            return
        clock.sleep(min(SLEEP_SLICE, left))
