"""Recovery: how long a job stays stuck when its worker dies or its pod hangs, at default
settings.

- fast path: `kill -9` of the worker running a long job; the supervisor ends
  the attempt from the worker's slot. Measured from the kill until the row is
  no longer `processing` (polled every 10 ms), three times, a session each.
- heartbeat lost: SIGSTOP of the pod's hub, which renews the leases of all its
  workers; the worker and the supervisor's parent keep running. The worker
  stops its job once its lease is older than the fence and ends the attempt
  itself, before any reaper may take the job.
- pod stopped: SIGSTOP of the whole pod (supervisor, hub, workers, the job's
  command), as a frozen node would; a reaper of another pod (a standalone
  `mobvibe-reaper` at its defaults) requeues the job once the heartbeat timeout
  has passed.

end_reason and the error message tell who requeued the job. The two SIGSTOP
cases run at the same time, on databases of their own.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from functools import partial
from typing import Any

import psycopg

from bench.context import Context
from bench.procs import Supervisor, supervisor_args
from bench.queries import query
from mobvibe.client import JobQueue
from mobvibe.supervisor import settings as defaults
from tests.support.waiting import wait_for

FAST_TRIALS = 3
POLL = 0.01
REAPER_MESSAGE = "heartbeat expired"  # queue_reap_expired's message; the supervisor's differs


def run(ctx: Context) -> dict[str, Any]:
    ctx.log(f"recovery: kill -9 of a busy worker, {FAST_TRIALS} times")
    fast = _fast_path(ctx.server.database("recovery_fast"))
    ctx.log(
        "recovery: SIGSTOP of a pod's hub, and of a whole pod "
        f"(defaults: heartbeat timeout {defaults.HEARTBEAT_TIMEOUT_DEFAULT:g} s, "
        f"--reaper-interval {defaults.REAPER_INTERVAL_DEFAULT:g}); about 40 s"
    )
    found: dict[str, Any] = {}
    urls = {
        "heartbeat_lost": ctx.server.database("recovery_hub"),
        "pod_stopped": ctx.server.database("recovery_pod"),
    }

    def measure(kind: str) -> None:
        found[kind] = _stopped(urls[kind], kind)

    threads = [threading.Thread(target=measure, args=(kind,)) for kind in urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for key in urls:
        if key not in found:
            raise RuntimeError(f"recovery {key}: the measurement failed (see the traceback)")
    limit = defaults.HEARTBEAT_TIMEOUT_DEFAULT + defaults.REAPER_INTERVAL_DEFAULT + 1
    return {
        "recovery_s": {
            "fast_path": fast["median_s"],
            "heartbeat_lost": found["heartbeat_lost"]["seconds"],
            "pod_stopped": found["pod_stopped"]["seconds"],
        },
        "recovery": {
            "fast_path": fast,
            **found,
            "limit_s": limit,
            "heartbeat_timeout_s": defaults.HEARTBEAT_TIMEOUT_DEFAULT,
            "reaper_interval_s": defaults.REAPER_INTERVAL_DEFAULT,
            "heartbeat_interval_s": defaults.HEARTBEAT_INTERVAL_DEFAULT,
        },
    }


def _start_long_job(
    queue: JobQueue, session: uuid.UUID, poll: psycopg.Connection[Any]
) -> tuple[uuid.UUID, int]:
    """Enqueue a long job, wait until a worker runs it; (job id, worker pid)."""
    job = queue.enqueue("a long job", session_id=session)
    state = wait_for(lambda: _state(poll, job, "processing"), 30, POLL, "the job to start")
    return job, int(state["worker_id"].split(":")[2])  # worker_id: node:index:pid:instance


def _state(
    conn: psycopg.Connection[Any],
    job: uuid.UUID,
    status: str | None = None,
    not_status: str | None = None,
) -> dict[str, Any] | None:
    cur = conn.execute(query("job_state"), {"job_id": job}, prepare=True)
    row = cur.fetchone()
    if row is None:
        return None
    state = dict(zip([d.name for d in cur.description or ()], row, strict=True))
    if status is not None and state["status"] != status:
        return None
    if not_status is not None and state["status"] == not_status:
        return None
    return state


def _fast_path(url: str) -> dict[str, Any]:
    trials = []
    with (
        JobQueue(url) as queue,
        psycopg.connect(url, autocommit=True) as poll,
        Supervisor(url, *supervisor_args(2, "bench.handlers:long_job")) as sup,
    ):
        for _ in range(FAST_TRIALS):
            # A session each: the killed attempt's job, retried, heads its session.
            job, pid = _start_long_job(queue, queue.create_session(), poll)
            time.sleep(0.5)  # well into the job: heartbeat thread running, slot written
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            state = wait_for(
                partial(_state, poll, job, not_status="processing"),
                30,
                POLL,
                "the killed worker's job to be requeued",
            )
            trials.append({"seconds": round(time.monotonic() - killed, 4), **_public(state)})
        sup.kill()
    seconds = sorted(t["seconds"] for t in trials)
    return {"median_s": seconds[len(seconds) // 2], "max_s": seconds[-1], "trials": trials}


def _stopped(url: str, kind: str) -> dict[str, Any]:
    """SIGSTOP the pod's hub (heartbeat_lost) or the whole pod (pod_stopped) while its
    worker runs a long job; time the requeue. A standalone reaper runs beside the pod."""
    with (
        JobQueue(url) as queue,
        psycopg.connect(url, autocommit=True) as poll,
        Supervisor(url, *supervisor_args(1, "bench.handlers:long_job")) as sup,
        Supervisor(url, "--log-level", "warning", program="mobvibe-reaper"),
    ):
        job, _ = _start_long_job(queue, queue.create_session(), poll)
        # 0.5 s after the claim, which set heartbeat_at: the reaper's clock and
        # the supervisor's run from there, so this is close to their worst case.
        time.sleep(0.5)
        hub = wait_for(lambda: sup.named("mobvibe-hub"), 10, POLL, "the pod's hub")
        stopped = time.monotonic()
        if kind == "pod_stopped":
            os.killpg(sup.pid, signal.SIGSTOP)
        else:
            os.kill(hub[0], signal.SIGSTOP)
        state = wait_for(
            lambda: _state(poll, job, not_status="processing"),
            120,
            POLL,
            "the stopped pod's job to be requeued",
        )
        seconds = time.monotonic() - stopped
        sup.kill()
    by = "reaper" if (state["error_message"] or "").startswith(REAPER_MESSAGE) else "supervisor"
    return {"seconds": round(seconds, 3), "requeued_by": by, **_public(state)}


def _public(state: dict[str, Any]) -> dict[str, Any]:
    return {k: state[k] for k in ("status", "end_reason", "error_message", "attempt")}
