"""Cancel latency with a live supervisor: cancel_job() call -> the command gone and `cancelled`.

Each probe is a job whose command sleeps; once it runs (a process with its
JOB_ID in its environment exists: the command runs in a sandbox, whose pids
are its own), the client calls JobQueue.cancel(), and the clock stops when the
job's row says `cancelled` and no process of it is left (the command gets
SIGTERM, and `sleep` dies of it at once; the sandbox ends with it).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.procs import Supervisor, supervisor_args, wait_for
from bench.stats import summary
from mobvibe.client import JobQueue

WORKERS = 4
COMMAND = "exec sleep 300"


def run(ctx: Context) -> dict[str, Any]:
    url = ctx.server.database("cancel")
    latencies: list[float] = []
    with (
        JobQueue(url) as queue,
        Supervisor(url, *supervisor_args(WORKERS, None, "--exec", COMMAND)) as sup,
    ):
        ctx.log(f"cancel: {ctx.sizes.cancel_probes} running jobs cancelled one by one")
        for _ in range(ctx.sizes.cancel_probes):
            latencies.append(_probe(queue))
        sup.stop()
    stats = summary(latencies)
    return {
        "cancel_latency_s": {k: stats[k] for k in ("p50", "p95", "p99")},
        "cancel": {**stats, "probes": len(latencies), "workers": WORKERS},
    }


def _probe(queue: JobQueue) -> float:
    job = queue.enqueue("cancel probe")
    wait_for(lambda: _processes(job), 30, 0.005, "the probe's command to start")
    started = time.monotonic()
    if not queue.cancel(job):
        raise RuntimeError(f"cancel_job({job}) changed nothing")

    def done() -> bool:
        row = queue.get(job)
        return row is not None and row.status == "cancelled" and not _processes(job)

    wait_for(done, 30, 0.002, "the probe cancelled and its command gone")
    return time.monotonic() - started


def _processes(job: object) -> list[str]:
    """Live processes with the job's JOB_ID in their environment."""
    marker = f"JOB_ID={job}".encode()
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                stat = Path(f"/proc/{entry}/stat").read_bytes()
                if stat.rpartition(b")")[2].split()[0] != b"Z":
                    found.append(entry)
    return found
