"""Worker memory: RSS of each of 2 workers after 10,000 and 20,000 no-op jobs.

VmRSS counts every resident page, the ones shared with the parent since fork
included; RssAnon, the private ones, is kept beside it. The figure is the
larger worker's VmRSS.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import psycopg

from bench.context import Context
from bench.drain import enqueue_jobs
from bench.procs import Supervisor, rss_mb, supervisor_args
from bench.queries import query
from tests.support.waiting import wait_for

WORKERS = 2
POLL = 0.02
TIMEOUT = 300.0


def run(ctx: Context) -> dict[str, Any]:
    url = ctx.server.database("rss")
    total = ctx.sizes.rss_jobs
    marks = [total // 2, total]
    enqueue_jobs(url, total)
    samples: dict[str, Any] = {}
    ctx.log(f"rss: {total} jobs through {WORKERS} workers")
    with (
        psycopg.connect(url, autocommit=True) as conn,
        Supervisor(
            url,
            *supervisor_args(WORKERS, "mobvibe.supervisor.handlers:noop_handler", "--no-reaper"),
        ) as sup,
    ):
        workers = wait_for(lambda: _all_workers(sup), 30, POLL, f"{WORKERS} workers")
        samples["start"] = {"jobs": _completed(conn) or 0, "workers": _sample(workers)}
        for mark in marks:
            done = wait_for(
                partial(_completed, conn, mark), TIMEOUT, POLL, f"{mark} completed jobs"
            )
            if sorted(sup.workers()) != sorted(workers):
                raise RuntimeError("a worker was replaced during the RSS run")
            samples[str(mark)] = {"jobs": done, "workers": _sample(workers)}
        sup.stop()
    figures = {
        str(mark): max(w["VmRSS"] for w in samples[str(mark)]["workers"].values()) for mark in marks
    }
    return {"worker_rss_mb": figures, "worker_rss": {"workers": WORKERS, "samples": samples}}


def _all_workers(sup: Supervisor) -> list[int] | None:
    pids = sup.workers()
    return pids if len(pids) == WORKERS else None


def _completed(conn: psycopg.Connection[Any], at_least: int = 0) -> int | None:
    """Completed jobs so far; None while fewer than `at_least`."""
    row = conn.execute(query("completed_count"), prepare=True).fetchone()
    done = int(row[0]) if row else 0
    return done if done >= at_least else None


def _sample(pids: list[int]) -> dict[str, dict[str, float]]:
    return {str(pid): rss_mb(pid) for pid in pids}
