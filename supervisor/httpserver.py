"""The supervisor's HTTP child: /metrics (all processes), /healthz, /readyz, and the status
pages with their JSON API (mobvibe.web).

It runs in a child process of its own so that the parent stays single-threaded
(forking a multi-threaded process can deadlock the child). Every read, the
scrape's and the pages', goes through its one connection to the database.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import psycopg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mobvibe import clock, metrics
from mobvibe.errors import DatabaseUnavailableError
from mobvibe.sql import store
from mobvibe.sql.store import QueueStats
from mobvibe.supervisor.settings import Settings
from mobvibe.supervisor.slots import Slots
from mobvibe.web.connection import ConnectionBusyError, OneConnection
from mobvibe.web.handler import SiteHandler
from mobvibe.web.site import Reply, StatusSite

log = logging.getLogger(__name__)
HEALTHY_TICK_AGE = 10.0  # the parent's loop turns every 0.25 s
CACHE_SECONDS = 2.0
PROBE_WAIT = 0.5  # seconds a scrape or probe waits for the connection a page holds


class QueueState:
    """Queue statistics read at scrape time, cached briefly so that probes and scrapes
    share one query, on the HTTP child's one connection (opened after the fork)."""

    def __init__(self, database: OneConnection) -> None:
        self.database = database
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
            # A probe does not wait behind a slow page: it answers from the last reading
            # (when there is one).
            wait = None if self._stats is None else PROBE_WAIT
            with self.database.use(wait=wait) as conn:
                self._stats = store.stats(conn)
                self._last_sweep = store.last_reaper_sweep(conn)
        except ConnectionBusyError:
            pass
        except (DatabaseUnavailableError, psycopg.Error):
            self._stats, self._last_sweep = None, None


class QueueCollector(Collector):
    """Queue depth per status and the oldest pending age, from get_queue_stats(), and the
    jobs this supervisor's workers hold, from their slots."""

    def __init__(self, state: QueueState, slots: Slots) -> None:
        self.state = state
        self.slots = slots

    def collect(self) -> Iterator[Metric]:
        held = sum(self.slots.holding(i) is not None for i in range(self.slots.count))
        yield GaugeMetricFamily("mobvibe_jobs_in_progress", "Jobs running now.", value=held)
        stats, last_sweep = self.state.read()
        up = GaugeMetricFamily("mobvibe_database_up", "1 when the database answered the scrape.")
        up.add_metric([], 0 if stats is None else 1)
        yield up
        if stats is None:
            return
        yield _depth(stats)
        age = stats.oldest_pending_age
        age_seconds = age.total_seconds() if age is not None else 0.0
        yield GaugeMetricFamily(
            "mobvibe_queue_oldest_pending_age_seconds",
            "How long the pending job due longest has waited since it came due (0 when none).",
            value=age_seconds,
        )
        yield GaugeMetricFamily(
            "mobvibe_queue_retries_waiting",
            "Pending jobs waiting for their backoff to pass.",
            value=stats.waiting_retry_count,
        )
        yield GaugeMetricFamily(
            "mobvibe_queue_jobs_delayed",
            "Pending jobs never attempted whose run_at is ahead (enqueued with a delay).",
            value=stats.delayed_count,
        )
        if last_sweep is not None:
            yield GaugeMetricFamily(
                "mobvibe_reaper_last_sweep_timestamp_seconds",
                "Unix time of the last sweep of any reaper (daemon or cron).",
                value=last_sweep,
            )
        yield from _caps(stats)


def _depth(stats: QueueStats) -> GaugeMetricFamily:
    """Jobs in the queue by status, a series for every status."""
    depth = GaugeMetricFamily(
        "mobvibe_queue_jobs", "Jobs in the queue, by status.", labels=["status"]
    )
    for status, value in stats.by_status().items():
        depth.add_metric([status], value)
    return depth


def _caps(stats: QueueStats) -> Iterator[CounterMetricFamily]:
    """What the database's caps turned away, whoever wrote it (queue_counters)."""
    yield CounterMetricFamily(
        "mobvibe_queue_events_dropped",
        "Progress events dropped past an attempt's caps (max_events_per_attempt, "
        "max_event_bytes_per_attempt).",
        value=stats.events_dropped,
    )
    yield CounterMetricFamily(
        "mobvibe_queue_event_bytes_dropped",
        "Bytes of the progress events dropped past an attempt's caps.",
        value=stats.event_bytes_dropped,
    )
    yield CounterMetricFamily(
        "mobvibe_queue_releases_counted",
        "Releases past max_releases_per_job, counted as failed attempts.",
        value=stats.releases_counted,
    )


def serve(settings: Settings, slots: Slots) -> int:
    """Serve until SIGTERM; the entry point of the HTTP child."""
    database = OneConnection(settings.database_url, "mobvibe-metrics", pooled=settings.pooled)
    state = QueueState(database)

    class Handler(SiteHandler):
        site = StatusSite(database)

        def answer(self, target: str) -> Reply:
            path = target.split("?", 1)[0]
            if path == "/metrics":
                registry = CollectorRegistry()
                registry.register(metrics.QueueMetrics())
                registry.register(QueueCollector(state, slots))
                return Reply(200, generate_latest(registry), "text/plain; version=0.0.4")
            if path == "/healthz":
                last_tick, _ = slots.parent_state()
                alive = clock.monotonic() - last_tick < HEALTHY_TICK_AGE
                return _text(200, "ok") if alive else _text(503, "supervisor stuck")
            if path == "/readyz":
                _, workers = slots.parent_state()
                stats, _ = state.read()
                if stats is None:
                    return _text(503, "database unreachable")
                return _text(200, "ok") if workers > 0 else _text(503, "no worker running")
            return super().answer(target)  # the status pages and their API

    server = ThreadingHTTPServer((settings.metrics_host, settings.metrics_port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever(poll_interval=0.5)
    database.close()
    return 0


def _text(code: int, line: str) -> Reply:
    return Reply(code, f"{line}\n".encode(), "text/plain")
