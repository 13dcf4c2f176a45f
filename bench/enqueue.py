"""Enqueue rates: the batch API (enqueue_many) and one job per transaction (enqueue).

Both run in this process on 100 existing sessions (a job belongs to a session
that exists); the batch API's default, a new session per job, is measured
beside them. CPU per job is split between this client and the server.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from bench import cpu
from bench.context import Context
from mobvibe.client import JobQueue
from mobvibe.sql.jobs import NewJob

SESSIONS = 100
PROMPT = "Build a todo app with React Native: benchmark job {}"


def run(ctx: Context) -> dict[str, Any]:
    url = ctx.server.database("enqueue")
    sizes = ctx.sizes
    meter = cpu.Meter(ctx.postmaster)
    detail: dict[str, Any] = {}

    def measure(name: str, jobs: int, work: Callable[[], None]) -> float:
        before, client = meter.snapshot(0), time.process_time()
        started = time.perf_counter()
        work()
        rate = jobs / (time.perf_counter() - started)
        use = cpu.per_job(before, meter.snapshot(jobs), {"client": time.process_time() - client})
        detail[name] = {"jobs_per_s": round(rate, 1), "cpu_us_per_job": use}
        return rate

    with JobQueue(url) as queue:
        sessions = [queue.create_session() for _ in range(SESSIONS)]
        queue.enqueue("warm-up", session_id=sessions[0])  # opens the pool
        batch: dict[str, float] = {}
        total = sizes.enqueue_batch_total
        for size in sizes.enqueue_batches:
            ctx.log(f"enqueue: {total} jobs in batches of {size}")
            batch[str(size)] = measure(
                f"batch_{size}", total, partial(_batches, queue, sessions, size, total)
            )
        size = sizes.enqueue_batches[0]
        ctx.log(f"enqueue: batches of {size}, a new session per job (enqueue_many's default)")
        measure(
            f"batch_{size}_new_sessions",
            total // 5,
            lambda: _batches(queue, None, size, total // 5),
        )
        count = sizes.enqueue_single_jobs
        ctx.log(f"enqueue: {count} jobs, one per transaction")
        single = measure("single", count, lambda: _singles(queue, sessions, count))
    best = max(batch, key=lambda k: batch[k])
    return {
        "enqueue_batch_jobs_per_s": batch[best],
        "enqueue_single_jobs_per_s": single,
        "enqueue": {"batch_size_reported": int(best), "sessions": SESSIONS, "runs": detail},
    }


def _batches(queue: JobQueue, sessions: list[uuid.UUID] | None, size: int, total: int) -> None:
    """Enqueue `total` jobs `size` at a time (building the batches included)."""
    for first in range(0, total, size):
        queue.enqueue_many(
            NewJob(PROMPT.format(i), None if sessions is None else sessions[i % len(sessions)])
            for i in range(first, min(first + size, total))
        )


def _singles(queue: JobQueue, sessions: list[uuid.UUID], count: int) -> None:
    for i in range(count):
        queue.enqueue(PROMPT.format(i), session_id=sessions[i % SESSIONS])
