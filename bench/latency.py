"""Start latency on an idle queue: enqueue call -> handler start, 500 jobs 20 ms apart.

The supervisor runs at its defaults with 8 idle workers (10 s poll, the hub's
LISTEN, the embedded reaper); the enqueuer reads time.time() just before its
enqueue call (its commit included), the handler (bench.handlers:record_start)
as it starts. Same host, same clock.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from bench.context import Context
from bench.handlers import LATENCY_FILE
from bench.procs import Supervisor, supervisor_args
from bench.queries import query
from bench.stats import summary
from mobvibe.client import JobQueue
from tests.support.waiting import wait_for

WORKERS = 8
SETTLE = 1.0  # let every worker reach its wait after the first empty claim


def run(ctx: Context) -> dict[str, Any]:
    url = ctx.server.database("latency")
    count, spacing = ctx.sizes.latency_jobs, ctx.sizes.latency_spacing_s
    fd, name = tempfile.mkstemp(prefix="mobvibe-bench-latency-")
    os.close(fd)
    path = Path(name)
    committed: dict[uuid.UUID, float] = {}
    try:
        with (
            JobQueue(url) as queue,
            Supervisor(
                url,
                *supervisor_args(WORKERS, "bench.handlers:record_start"),
                env={LATENCY_FILE: name},
            ) as sup,
        ):
            # A session each: one session's prompts run one at a time, in order.
            sessions = [queue.create_session() for _ in range(count + 1)]
            queue.enqueue("warm-up", session_id=sessions[-1])  # opens the pool, one job run
            wait_for(lambda: _workers_waiting(url), 30, 0.05, f"{WORKERS} idle workers")
            wait_for(lambda: len(_read(path)) >= 1, 30, 0.01, "the warm-up job to start")
            time.sleep(SETTLE)
            ctx.log(f"latency: {count} jobs, {spacing * 1000:g} ms apart, {WORKERS} idle workers")
            for i in range(count):
                before = time.time()
                job = queue.enqueue(f"latency probe {i}", session_id=sessions[i])
                committed[job] = before
                time.sleep(spacing)
            wait_for(lambda: len(_read(path)) >= count + 1, 30, 0.05, "every probe to start")
            sup.stop()
        started = _read(path)
    finally:
        path.unlink(missing_ok=True)
    latencies = [(started[job] - at) * 1000 for job, at in committed.items()]
    stats = summary(latencies)
    return {
        "latency_8_idle_ms": {k: stats[k] for k in ("p50", "p95", "p99")},
        "latency": {**stats, "jobs": count, "spacing_ms": spacing * 1000, "workers": WORKERS},
    }


def _read(path: Path) -> dict[uuid.UUID, float]:
    found = {}
    for line in path.read_text().splitlines():
        job, _, at = line.partition(" ")
        if at:
            found[uuid.UUID(job)] = float(at)
    return found


def _workers_waiting(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query("idle_workers")).fetchone()
    return bool(row and row[0] >= WORKERS)
