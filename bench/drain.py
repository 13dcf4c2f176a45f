"""Drain: 20,000 no-op jobs through `mobvibe-supervisor --workers N --drain`, N = 1, 2, 4, 8.

The rate is the database's own account: jobs / (last completed_at - first
started_at), so process start and the drain check do not count; the wall
time, start to exit, is reported beside it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg

from bench import cpu
from bench.context import Context
from bench.procs import Supervisor, supervisor_args
from bench.queries import query
from mobvibe.client import JobQueue
from mobvibe.sql.jobs import NewJob

CHUNK = 5000
SHARED_SESSIONS = 100  # the info run where prompts queue behind their session's
USERS = 1000  # the users run: a session each, the sessions owned by this many users
USER_LIMIT = 100  # queue_config.user_max_concurrency in the users run: never reached
PROMPT = "Build a todo app with React Native: benchmark job {}"
TIMEOUT = 300.0
WATCH_INTERVAL = 0.1


def enqueue_jobs(
    url: str, count: int, sessions: int | None = None, users: int | None = None
) -> None:
    """`count` due pending jobs through the batch API, each in a session of its own (a
    phone's prompt), or on `sessions` sessions whose prompts run one at a time; with
    `users`, each in a session of its own owned by one of that many users, in turn."""
    with JobQueue(url) as queue:
        shared = [queue.create_session() for _ in range(sessions or 0)]
        if users:
            shared = _user_sessions(url, count, users)
        for first in range(0, count, CHUNK):
            queue.enqueue_many(
                NewJob(PROMPT.format(i), shared[i % len(shared)] if shared else None)
                for i in range(first, min(first + CHUNK, count))
            )


def _user_sessions(url: str, count: int, users: int) -> list[uuid.UUID]:
    """`count` sessions, the i-th owned by the (i mod `users`)-th of `users` users, all of
    whom may run USER_LIMIT prompts at once."""
    owners = [uuid.uuid4() for _ in range(users)]
    ids = [uuid.uuid4() for _ in range(count)]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            query("create_user_sessions"),
            {"session_ids": ids, "user_ids": [owners[i % users] for i in range(count)]},
        )
        conn.execute(query("set_user_max_concurrency"), {"limit": USER_LIMIT})
    return ids


def run(ctx: Context) -> dict[str, Any]:
    url = ctx.server.database("drain")
    count = ctx.sizes.drain_jobs
    rates: dict[str, float] = {}
    detail: dict[str, Any] = {}
    quiet = 0.0
    # The worker counts, then the most workers again without the job_status_changed
    # notifications (--no-status-notifications, for deployments where nothing listens).
    # Last, the most workers on SHARED_SESSIONS sessions: each end promotes its
    # session's next prompt (info: the cost of the session order).
    most = max(ctx.sizes.drain_workers)
    # Right after the most workers, the same drain with the sessions owned by USERS
    # users (drain_server_cpu_us_per_job_users: the cost of the users' limits and turns).
    runs: list[tuple[str, int, tuple[str, ...], int | None]] = [
        (str(w), w, (), None) for w in ctx.sizes.drain_workers
    ]
    runs.append((f"{most}-users", most, (), None))
    runs.append((f"{most}-quiet", most, ("--no-status-notifications",), None))
    runs.append((f"{most}-sessions", most, (), SHARED_SESSIONS))
    for key, workers, extra, sessions in runs:
        users = USERS if key.endswith("-users") else None
        where = f"{sessions} sessions" if sessions else "a session each"
        where += f", {users} users" if users else ""
        ctx.log(f"drain: {count} jobs ({where}), --workers {workers} {' '.join(extra)}".rstrip())
        cpu_use, wall = drain_once(ctx, url, count, workers, extra, sessions, users)
        with psycopg.connect(url, autocommit=True) as conn:
            completed, total, span = conn.execute(query("drain_span")).fetchone()  # type: ignore[misc]
        if completed != count or total != count:
            raise RuntimeError(f"drain with {workers} workers: {completed} of {total} completed")
        rate = count / float(span)
        if extra:
            quiet = rate
        elif sessions is None and users is None:
            rates[key] = rate
        detail[key] = {
            "processing_s": round(float(span), 3),
            "wall_s": round(wall, 3),
            "wall_jobs_per_s": round(count / wall, 1),
            "cpu_us_per_job": cpu_use,
        }
    return {
        "drain_jobs_per_s": rates,
        "drain_no_status_notifications_jobs_per_s": quiet,
        "drain": {"jobs": count, "runs": detail},
    }


def drain_once(
    ctx: Context,
    url: str,
    count: int,
    workers: int,
    extra: tuple[str, ...] = (),
    sessions: int | None = None,
    users: int | None = None,
) -> tuple[dict[str, float], float]:
    """Enqueue `count` jobs on an empty queue and drain them with `workers` no-op workers:
    the CPU per job of the drain's middle half, and the wall time from start to exit."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query("truncate_jobs"))
        conn.execute(query("set_user_max_concurrency"), {"limit": None})
    enqueue_jobs(url, count, sessions, users)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query("vacuum_analyze_jobs"))
    started = time.monotonic()
    args = supervisor_args(
        workers, "mobvibe.supervisor.handlers:noop_handler", "--drain", "--no-reaper", *extra
    )
    with Supervisor(url, *args) as sup:
        cpu_use = watch_cpu(url, sup, count, ctx.postmaster)
        code = sup.wait(TIMEOUT)
        if code != 0:
            raise RuntimeError(f"the supervisor exited {code}: {sup.log_tail()}")
    return cpu_use, time.monotonic() - started


def watch_cpu(url: str, sup: Supervisor, count: int, postmaster: int | None) -> dict[str, float]:
    """CPU per job of the workers, the supervisor and the server, from 25 % to 75 % of the drain."""
    marks = [count // 4, 3 * count // 4]
    snaps: list[cpu.Snapshot] = []
    meter: cpu.Meter | None = None
    deadline = time.monotonic() + TIMEOUT
    with psycopg.connect(url, autocommit=True) as conn:
        while len(snaps) < len(marks) and sup.proc.poll() is None and time.monotonic() < deadline:
            row = conn.execute(query("completed_count"), prepare=True).fetchone()
            done = int(row[0]) if row else 0
            if done >= marks[len(snaps)]:
                meter = meter or cpu.Meter(
                    postmaster, {"workers": sup.children(), "supervisor": [sup.pid]}
                )
                snaps.append(meter.snapshot(done))
            time.sleep(WATCH_INTERVAL)
    return cpu.per_job(snaps[0], snaps[1]) if len(snaps) == len(marks) else {}
