"""What the shared database pays for each pod: claims and CPU per job beside idle pods, a drain
beside busy pods, the maintenance sweeps, and the reaper's failover.

Every pod is a real `mobvibe-supervisor` process with its defaults (the embedded
reaper on), one worker and a no-op handler; a database of its own per figure,
with `track_functions = all` so that every call of `claim_next_job` is counted,
nested ones (inside `queue_end_and_claim`) included.

- Trickle (`claims_per_job_by_pods`, `server_cpu_us_per_job_by_pods`): 1, 8 and
  32 idle pods; a job every 100 ms, each in a session of its own, the way prompts
  arrive from phones. Server CPU runs from the first enqueue to the last
  completion: the idle pods' own statements meanwhile count.
- Busy pods (`drain_server_cpu_by_busy_pods`): 1, 16 and 64 pods whose one
  worker runs a long job, beside an 8-worker drain; the server CPU per job of the
  drain's middle half.
- Sweeps (`sweeps_per_s_by_pods`): calls of `queue_sweep` per second with 1 and
  16 idle pods, median of three windows.
- Failover (`reaper_failover_s`): three pods; the pod whose reaper swept last is
  killed with SIGKILL; the time until another pod's reaper sweeps.

Backends report function counts when they go idle (within about 10 s), so each
count is read after the pods have settled and again after the work plus that.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg

from bench import cpu
from bench.context import Context
from bench.drain import enqueue_jobs, watch_cpu
from bench.procs import Supervisor, supervisor_args
from bench.queries import query
from mobvibe.client import JobQueue
from mobvibe.sql import store
from mobvibe.sql.records import Lease
from tests.support.waiting import wait_for

IDLE_PODS = (1, 8, 32)
BUSY_PODS = (1, 16, 64)
SWEEP_PODS = (1, 16)
TRICKLE_JOBS = 200
TRICKLE_SPACING_S = 0.1
DRAIN_WORKERS = 8
STATS_FLUSH_S = 11.0  # an idle backend reports its counts after 10 s
SWEEP_INTERVAL_S = 1.0  # the sweeps' figures: short, so a window holds many
SWEEP_WINDOW_S = 20.0
SWEEP_RUNS = 3
NOOP = "mobvibe.supervisor.handlers:noop_handler"
BUSY = "bench.handlers:long_job"
TIMEOUT = 300.0
HEARTBEAT_INTERVAL_S = 5.0  # the supervisor's default; also its reaper interval


def run(ctx: Context) -> dict[str, Any]:
    claims: dict[str, float] = {}
    server: dict[str, float] = {}
    for pods in IDLE_PODS:
        ctx.log(f"pods: {TRICKLE_JOBS} jobs, one per {TRICKLE_SPACING_S:g} s, {pods} idle pods")
        claims[str(pods)], server[str(pods)] = _trickle(ctx, pods)
    busy: dict[str, dict[str, float]] = {"simulated": {}, "real": {}}
    for pods in BUSY_PODS:
        for kind in ("simulated", "real"):
            ctx.log(f"pods: an {DRAIN_WORKERS}-worker drain beside {pods} busy pods ({kind})")
            busy[kind][str(pods)] = _drain_beside_busy(ctx, pods, kind == "real")
    sweeps = {}
    for pods in SWEEP_PODS:
        ctx.log(f"pods: sweeps per second with {pods} idle pods")
        sweeps[str(pods)] = _sweeps_per_s(ctx, pods)
    ctx.log("pods: the reaper's failover")
    return {
        "claims_per_job_by_pods": claims,
        "server_cpu_us_per_job_by_pods": server,
        "drain_server_cpu_by_busy_pods": busy["simulated"],
        "drain_server_cpu_by_real_busy_pods": busy["real"],
        "sweeps_per_s_by_pods": sweeps,
        "reaper_failover_s": _failover(ctx),
        "pods": {
            "trickle_jobs": TRICKLE_JOBS,
            "trickle_spacing_s": TRICKLE_SPACING_S,
            "drain_jobs": ctx.sizes.listeners_drain_jobs,
            "sweep_interval_s": SWEEP_INTERVAL_S,
            "real_pods": "every pod is a real mobvibe-supervisor process, but for the busy pods "
            "of drain_server_cpu_by_busy_pods: connections that do what a busy pod's hub does",
        },
    }


# -- the pods -----------------------------------------------------------------------------


@contextlib.contextmanager
def _pods(url: str, count: int, *args: str) -> Iterator[list[Supervisor]]:
    """`count` supervisors of one worker each, once every worker is connected."""
    with contextlib.ExitStack() as stack:
        pods = [
            stack.enter_context(Supervisor(url, *supervisor_args(1, None, *args)))
            for _ in range(count)
        ]
        wait_for(lambda: _workers_connected(url) >= count, 120, 0.5, f"{count} pods' workers")
        try:
            yield pods
        finally:
            for pod in pods:  # at once: a long job does not wait for its grace
                pod.kill()


def _workers_connected(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = dict(conn.execute(query("pod_connections")).fetchall())
    return int(rows.get("mobvibe-worker", 0))


def _database(ctx: Context, prefix: str) -> str:
    url = ctx.server.database(prefix)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query("track_functions"))
    return url


def _function_calls(url: str, name: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query("function_calls"), {"name": name}).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _server_cpu(ctx: Context) -> float:
    if ctx.postmaster is None:
        raise RuntimeError("the server's CPU cannot be read: it does not run on this machine")
    return cpu.tree_cpu(ctx.postmaster) or 0.0


# -- the figures --------------------------------------------------------------------------


def _trickle(ctx: Context, pods: int) -> tuple[float, float]:
    url = _database(ctx, f"trickle{pods}")
    with _pods(url, pods, "--handler", NOOP):
        time.sleep(STATS_FLUSH_S)  # the start's own claims reported
        calls = _function_calls(url, "claim_next_job")
        spent = _server_cpu(ctx)
        with JobQueue(url) as queue:
            start = time.monotonic()
            for i in range(TRICKLE_JOBS):
                time.sleep(max(0.0, start + i * TRICKLE_SPACING_S - time.monotonic()))
                queue.enqueue(f"trickle job {i}")
        wait_for(lambda: _completed(url) >= TRICKLE_JOBS, TIMEOUT, 0.05, "the trickle's jobs")
        spent = _server_cpu(ctx) - spent
        time.sleep(STATS_FLUSH_S)
        calls = _function_calls(url, "claim_next_job") - calls
    return round(calls / TRICKLE_JOBS, 2), round(spent / TRICKLE_JOBS * 1e6, 1)


def _drain_beside_busy(ctx: Context, pods: int, real: bool) -> float:
    url = _database(ctx, f"busy{pods}")
    count = ctx.sizes.listeners_drain_jobs
    enqueue_jobs(url, pods)
    busy = _pods(url, pods, "--handler", BUSY) if real else _simulated_busy_pods(url, pods)
    with busy:
        wait_for(lambda: _processing(url) >= pods, 60, 0.2, f"{pods} long jobs running")
        enqueue_jobs(url, count)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(query("vacuum_analyze_jobs"))
        args = supervisor_args(DRAIN_WORKERS, NOOP, "--no-reaper")
        with Supervisor(url, *args) as drain:
            used = watch_cpu(url, drain, count, ctx.postmaster)
            if "postgres" not in used:
                raise RuntimeError(f"the drain did not reach its marks: {drain.log_tail()}")
    return float(used["postgres"])


@contextlib.contextmanager
def _simulated_busy_pods(url: str, count: int) -> Iterator[None]:
    """`count` pods whose one worker runs a long job, as the database sees them: a hub's
    connection each that holds a claim and, as a busy pod's hub does, renews its lease once
    per heartbeat interval and tries for the reaper's lead once per reaper interval (no
    LISTEN, no wait), and the worker's, idle while its job runs. One thread drives them all,
    so the machine's CPU stays the drain's."""
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        hubs = [stack.enter_context(psycopg.connect(url, autocommit=True)) for _ in range(count)]
        for _ in range(count):  # each pod's worker: connected, idle while its job runs
            stack.enter_context(psycopg.connect(url, autocommit=True))
        leases = []
        for i, hub in enumerate(hubs):
            job = store.claim(hub, f"busy-pod-{i}:1:0:0")
            if job is None:
                raise RuntimeError("a simulated busy pod found no job to hold")
            leases.append(Lease(job.id, job.lease_token))

        def beat() -> None:
            while not stop.wait(HEARTBEAT_INTERVAL_S):
                for hub, lease in zip(hubs, leases, strict=True):
                    store.renew_leases(hub, [lease])
                    hub.execute(query("lead_reaper"))

        thread = threading.Thread(target=beat, name="busy-pods", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(30)


def _sweeps_per_s(ctx: Context, pods: int) -> float:
    url = _database(ctx, f"sweeps{pods}")
    rates = []
    with _pods(url, pods, "--handler", NOOP, "--reaper-interval", f"{SWEEP_INTERVAL_S:g}s"):
        for _ in range(SWEEP_RUNS):
            time.sleep(STATS_FLUSH_S)
            calls = _function_calls(url, "queue_sweep")
            time.sleep(SWEEP_WINDOW_S)
            rates.append((_function_calls(url, "queue_sweep") - calls) / SWEEP_WINDOW_S)
    return round(statistics.median(rates), 2)


def _failover(ctx: Context) -> float:
    """Kill -9 the pod whose reaper swept last; seconds until another pod's reaper sweeps."""
    url = ctx.server.database("failover")
    with _pods(url, 3, "--handler", NOOP, "--reaper-interval", f"{SWEEP_INTERVAL_S:g}s") as pods:
        wait_for(lambda: _last_sweeper(url), 30, 0.1, "a first sweep")
        leader = _pod_of(pods, _last_sweeper(url) or "")
        dead = {str(pid) for pid in [leader.pid, *leader.children()]}
        killed_at = time.time()
        leader.kill()
        found = wait_for(
            lambda: _sweep_after(url, killed_at, dead), 60, 0.05, "a sweep by another pod"
        )
    return round(found - killed_at, 2)


def _last_sweeper(url: str) -> str | None:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query("last_sweeper")).fetchone()
    return None if row is None else str(row[0])


def _sweep_after(url: str, since: float, dead: set[str]) -> float | None:
    """When a reaper of no process in `dead` first swept after `since` (epoch seconds)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(query("sweeps_since"), {"since": since}).fetchall()
    times = [float(at) for reaper, at in rows if reaper.rpartition(":")[2] not in dead]
    return min(times) if times else None


def _pod_of(pods: list[Supervisor], reaper: str) -> Supervisor:
    """The pod whose process is `reaper`'s (host:pid of the process that swept)."""
    pid = int(reaper.rpartition(":")[2])
    for pod in pods:
        if pid == pod.pid or pid in pod.children():
            return pod
    raise RuntimeError(f"no pod runs the reaper {reaper}")


def _completed(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query("completed_count")).fetchone()
    return int(row[0]) if row else 0


def _processing(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query("processing_count")).fetchone()
    return int(row[0]) if row else 0
