"""Cancel latency with a live supervisor: cancel_job() call -> the command gone and `cancelled`.

Each probe is a job whose command records its pid and sleeps; once it runs,
the client calls JobQueue.cancel(), and the clock stops when the job's row
says `cancelled` and its process no longer exists (the command gets SIGTERM,
and `sleep` dies of it at once).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.procs import Supervisor, supervisor_args
from bench.stats import summary
from mobvibe.client import JobQueue
from tests.support.waiting import wait_for

WORKERS = 4
COMMAND = 'echo $$ > "$PIDS/$JOB_ID"; exec sleep 300'


def run(ctx: Context) -> dict[str, Any]:
    url = ctx.server.database("cancel")
    pids = Path(tempfile.mkdtemp(prefix="mobvibe-bench-cancel-"))
    latencies: list[float] = []
    try:
        with (
            JobQueue(url) as queue,
            Supervisor(
                url,
                *supervisor_args(WORKERS, None, "--exec", COMMAND, "--exec-env", "PIDS"),
                env={"PIDS": str(pids)},
            ) as sup,
        ):
            ctx.log(f"cancel: {ctx.sizes.cancel_probes} running jobs cancelled one by one")
            for _ in range(ctx.sizes.cancel_probes):
                latencies.append(_probe(queue, pids))
            sup.stop()
    finally:
        shutil.rmtree(pids, ignore_errors=True)
    stats = summary(latencies)
    return {
        "cancel_latency_s": {k: stats[k] for k in ("p50", "p95", "p99")},
        "cancel": {**stats, "probes": len(latencies), "workers": WORKERS},
    }


def _probe(queue: JobQueue, pids: Path) -> float:
    job = queue.enqueue("cancel probe")
    pid_file = pids / str(job)
    wait_for(
        lambda: pid_file.exists() and pid_file.read_text().strip(),
        30,
        0.005,
        "the probe's command to start",
    )
    pid = int(pid_file.read_text())
    started = time.monotonic()
    if not queue.cancel(job):
        raise RuntimeError(f"cancel_job({job}) changed nothing")

    def done() -> bool:
        row = queue.get(job)
        return row is not None and row.status == "cancelled" and not _alive(pid)

    wait_for(done, 30, 0.002, "the probe cancelled and its command gone")
    return time.monotonic() - started


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
