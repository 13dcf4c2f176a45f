"""The supervisor's HTTP child: /metrics (all processes), /healthz and /readyz.

It runs in a child process of its own so that the parent stays single-threaded
(forking a multi-threaded process can deadlock the child).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mobvibe import clock, metrics
from mobvibe.errors import DatabaseUnavailableError
from mobvibe.sql import db, store
from mobvibe.sql.store import QueueStats
from mobvibe.supervisor.settings import Settings
from mobvibe.supervisor.slots import Slots

log = logging.getLogger(__name__)
HEALTHY_TICK_AGE = 10.0  # the parent's loop turns every 0.25 s
CACHE_SECONDS = 2.0


class QueueState:
    """Queue statistics read at scrape time, cached briefly so that probes and scrapes
    share one query; the connection is opened here, after the fork."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._at = -CACHE_SECONDS
        self._stats: QueueStats | None = None
        self._last_sweep: float | None = None

    def read(self) -> tuple[QueueStats | None, float | None]:
        """(queue statistics, last reaper sweep unix time); (None, None) if unreachable."""
        with self._lock:
            if clock.monotonic() - self._at > CACHE_SECONDS:
                self._refresh()
            return self._stats, self._last_sweep

    def _refresh(self) -> None:
        self._at = clock.monotonic()
        try:
            if self._conn is None or self._conn.closed:
                self._conn = db.connect(
                    self.url,
                    application_name="mobvibe-metrics",
                    connect_timeout=2,
                    options="-c statement_timeout=2000",
                )
            self._stats = store.stats(self._conn)
            self._last_sweep = store.last_reaper_sweep(self._conn)
        except (DatabaseUnavailableError, psycopg.Error):
            if self._conn is not None:
                self._conn.close()
            self._conn, self._stats, self._last_sweep = None, None, None


class QueueCollector(Collector):
    """Queue depth per status and the oldest pending age, from get_queue_stats(), and the
    jobs this supervisor's workers hold, from their slots."""

    def __init__(self, state: QueueState, slots: Slots) -> None:
        self.state = state
        self.slots = slots

    def collect(self) -> Iterator[GaugeMetricFamily]:
        held = sum(self.slots.holding(i) is not None for i in range(self.slots.count))
        yield GaugeMetricFamily("mobvibe_jobs_in_progress", "Jobs running now.", value=held)
        stats, last_sweep = self.state.read()
        up = GaugeMetricFamily("mobvibe_database_up", "1 when the database answered the scrape.")
        up.add_metric([], 0 if stats is None else 1)
        yield up
        if stats is None:
            return
        depth = GaugeMetricFamily(
            "mobvibe_queue_jobs", "Jobs in the queue, by status.", labels=["status"]
        )
        for status, value in (
            ("pending", stats.pending_count),
            ("processing", stats.processing_count),
            ("completed", stats.completed_count),
            ("failed", stats.failed_count),
        ):
            depth.add_metric([status], value)
        yield depth
        age = stats.oldest_pending_age
        age_seconds = age.total_seconds() if age is not None else 0.0
        yield GaugeMetricFamily(
            "mobvibe_queue_oldest_pending_age_seconds",
            "Age of the oldest pending job (0 when none).",
            value=age_seconds,
        )
        yield GaugeMetricFamily(
            "mobvibe_queue_retries_waiting",
            "Pending jobs waiting for their backoff to pass.",
            value=stats.waiting_retry_count,
        )
        if last_sweep is not None:
            yield GaugeMetricFamily(
                "mobvibe_reaper_last_sweep_timestamp_seconds",
                "Unix time of the last sweep of any reaper (daemon or cron).",
                value=last_sweep,
            )


def serve(settings: Settings, slots: Slots) -> int:
    """Serve until SIGTERM; the entry point of the HTTP child."""
    state = QueueState(settings.database_url)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                registry = CollectorRegistry()
                registry.register(metrics.QueueMetrics())
                registry.register(QueueCollector(state, slots))
                self._reply(200, generate_latest(registry), "text/plain; version=0.0.4")
            elif path == "/healthz":
                last_tick, _ = slots.parent_state()
                alive = clock.monotonic() - last_tick < HEALTHY_TICK_AGE
                self._reply(200 if alive else 503, b"ok\n" if alive else b"supervisor stuck\n")
            elif path == "/readyz":
                _, workers = slots.parent_state()
                stats, _ = state.read()
                ready = stats is not None and workers > 0
                reason = (
                    b"ok\n"
                    if ready
                    else (b"database unreachable\n" if stats is None else b"no worker running\n")
                )
                self._reply(200 if ready else 503, reason)
            else:
                self._reply(404, b"not found\n")

        def _reply(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # scrapes every few seconds would drown the log

    server = ThreadingHTTPServer((settings.metrics_host, settings.metrics_port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever(poll_interval=0.5)
    return 0
