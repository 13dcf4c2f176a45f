"""Cancel latency with a live supervisor: cancel_job() call -> the command gone and `cancelled`.

Each probe is a job whose command sleeps; once it runs (found by its JOB_ID in
its environment: the command runs in a sandbox, whose pids are its own), the
client calls JobQueue.cancel(), and the clock stops when the job's row says
`cancelled` and none of its processes (the sandbox's included) is left: the
command gets SIGTERM, `sleep` dies of it at once, and the sandbox ends with it.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.procs import Supervisor, supervisor_args
from bench.stats import summary
from mobvibe.client import JobQueue
from tests.support.waiting import wait_for

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
    # Its processes once the command itself runs (the sandbox's bwrap and first process
    # with it): found by JOB_ID in their environment, a sandboxed command's own pids
    # being its namespace's.
    pids = wait_for(lambda: _running(job), 30, 0.005, "the probe's command to start")
    started = time.monotonic()
    if not queue.cancel(job):
        raise RuntimeError(f"cancel_job({job}) changed nothing")

    def done() -> bool:
        row = queue.get(job)
        return row is not None and row.status == "cancelled" and not any(map(_alive, pids))

    wait_for(done, 30, 0.002, "the probe cancelled and its processes gone")
    return time.monotonic() - started


def _running(job: object) -> list[int]:
    """The job's processes once its `sleep` runs; [] before."""
    marker = f"JOB_ID={job}".encode()
    found, command = [], False
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                found.append(int(entry))
                command |= Path(f"/proc/{entry}/cmdline").read_bytes().startswith(b"sleep")
    return found if command else []


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat.rpartition(b")")[2].split()[0] != b"Z"
