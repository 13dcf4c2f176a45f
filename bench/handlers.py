"""Job handlers for the benchmark's supervisors (`--handler bench.handlers:NAME`)."""

from __future__ import annotations

import os
import time

from mobvibe.sql.jobs import Job

LATENCY_FILE = "BENCH_LATENCY_FILE"
LONG_JOB_SECONDS = 120.0


def record_start(job: Job) -> None:
    """Append `job_id start_time` to $BENCH_LATENCY_FILE; the clock is read first."""
    started = time.time()
    # One small O_APPEND write per line: lines of several workers never interleave.
    with open(os.environ[LATENCY_FILE], "a", encoding="ascii") as out:
        out.write(f"{job.id} {started:.6f}\n")


def long_job(job: Job) -> None:
    """Keep the worker busy (the recovery figures kill or stop it meanwhile)."""
    time.sleep(LONG_JOB_SECONDS)
