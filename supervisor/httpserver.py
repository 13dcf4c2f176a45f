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
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from supervisor import clock, db
from supervisor.errors import DatabaseUnavailableError
from supervisor.settings import Settings
from supervisor.slots import Slots
from supervisor.sqlfiles import query

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
        self._stats: tuple[Any, ...] | None = None
        self._last_sweep: float | None = None

    def read(self) -> tuple[tuple[Any, ...] | None, float | None]:
        """(get_queue_stats row, last reaper sweep unix time); (None, None) if unreachable."""
        with self._lock:
            if clock.monotonic() - self._at > CACHE_SECONDS:
                self._refresh()
            return self._stats, self._last_sweep

    def _refresh(self) -> None:
        self._at = clock.monotonic()
        try:
            if self._conn is None or self._conn.closed:
                self._conn = db.connect(self.url, application_name="mobvibe-metrics",
                                        connect_timeout=2, options="-c statement_timeout=2000")
            self._stats = self._conn.execute(query("queue_stats")).fetchone()
            row = self._conn.execute(query("last_reaper_sweep")).fetchone()
            self._last_sweep = None if row is None or row[0] is None else float(row[0])
        except (DatabaseUnavailableError, psycopg.Error):
            if self._conn is not None:
                self._conn.close()
            self._conn, self._stats, self._last_sweep = None, None, None


class QueueCollector(Collector):
    """Queue depth per status and the oldest pending age, from get_queue_stats()."""

    def __init__(self, state: QueueState) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats, last_sweep = self.state.read()
        up = GaugeMetricFamily("mobvibe_database_up", "1 when the database answered the scrape.")
        up.add_metric([], 0 if stats is None else 1)
        yield up
        if stats is None:
            return
        depth = GaugeMetricFamily("mobvibe_queue_jobs", "Jobs in the queue, by status.",
                                  labels=["status"])
        for status, value in zip(("pending", "processing", "completed", "failed"), stats[:4]):
            depth.add_metric([status], value)
        yield depth
        age = stats[4].total_seconds() if stats[4] is not None else 0.0
        yield GaugeMetricFamily("mobvibe_queue_oldest_pending_age_seconds",
                                "Age of the oldest pending job (0 when none).", value=age)
        yield GaugeMetricFamily("mobvibe_queue_retries_waiting",
                                "Pending jobs waiting for their backoff to pass.",
                                value=stats[5])
        if last_sweep is not None:
            yield GaugeMetricFamily("mobvibe_reaper_last_sweep_timestamp_seconds",
                                    "Unix time of the last sweep of any reaper (daemon or cron).",
                                    value=last_sweep)


def serve(settings: Settings, slots: Slots) -> int:
    """Serve until SIGTERM; the entry point of the HTTP child."""
    state = QueueState(settings.database_url)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                registry = CollectorRegistry()
                multiprocess.MultiProcessCollector(registry)
                registry.register(QueueCollector(state))
                self._reply(200, generate_latest(registry), "text/plain; version=0.0.4")
            elif path == "/healthz":
                last_tick, _ = slots.parent_state()
                alive = clock.monotonic() - last_tick < HEALTHY_TICK_AGE
                self._reply(200 if alive else 503, b"ok\n" if alive else b"supervisor stuck\n")
            elif path == "/readyz":
                _, workers = slots.parent_state()
                stats, _ = state.read()
                ready = stats is not None and workers > 0
                reason = b"ok\n" if ready else (b"database unreachable\n" if stats is None
                                               else b"no worker running\n")
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
