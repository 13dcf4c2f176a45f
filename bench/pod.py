"""What an idle pod costs the shared database: the connections it holds, the statements it sends.

A supervisor at its defaults (the embedded reaper included), no job to run, on
a database of its own. Connections are counted in pg_stat_activity; statements
are the transactions the database committed or rolled back over IDLE_WINDOW
seconds (every statement of the supervisor is a transaction of its own),
minus the two this measurement makes. Backends report their counts within
about 10 s, so the window is long and starts after the pod has settled.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from bench.context import Context
from bench.procs import Supervisor
from bench.queries import query
from tests.support.waiting import wait_for

SIZES = (8, 32)
SETTLE = 15.0
IDLE_WINDOW = 60.0
BLOCKED_JOBS = 1000


def run(ctx: Context) -> dict[str, Any]:
    connections: dict[str, int] = {}
    idle: dict[str, float] = {}
    for workers in SIZES:
        url = ctx.server.database(f"pod{workers}")
        ctx.log(f"pod: {workers} idle workers")
        with Supervisor(url, "--workers", str(workers), "--demo", "--metrics-port", "0") as sup:
            connections[str(workers)] = _settled_connections(url, workers)
            if workers == SIZES[0]:
                idle["empty"] = _statements_per_s(url, sup)
                with psycopg.connect(url) as conn, conn.transaction():
                    conn.execute(query("load_blocked_jobs"), {"count": BLOCKED_JOBS})
                    conn.execute(query("claim_one"))  # the session's first, running elsewhere
                ctx.log(f"pod: {workers} idle workers, {BLOCKED_JOBS} jobs behind a running one")
                idle[f"{BLOCKED_JOBS}_blocked"] = _statements_per_s(url, sup)
    return {
        "connections": connections,
        "idle_statements_per_s": idle["empty"],
        "pod": {
            "idle_statements_per_s": idle,
            "window_s": IDLE_WINDOW,
            "blocked_jobs": BLOCKED_JOBS,
        },
    }


def _settled_connections(url: str, workers: int) -> int:
    """The pod's connections once every worker has made its own."""

    def settled() -> int | None:
        with psycopg.connect(url, autocommit=True) as conn:
            rows = dict(conn.execute(query("pod_connections")).fetchall())
        return sum(rows.values()) if rows.get("mobvibe-worker", 0) >= workers else None

    wait_for(settled, 60, 0.2, f"{workers} worker connections")
    time.sleep(1.0)  # the hub's and the HTTP child's are made at start too
    return int(settled() or 0)


def _statements_per_s(url: str, sup: Supervisor) -> float:
    time.sleep(SETTLE)
    with psycopg.connect(url, autocommit=True) as conn:
        before = _transactions(conn)
        time.sleep(IDLE_WINDOW)
        after = _transactions(conn)
    if sup.proc.poll() is not None:
        raise RuntimeError(f"the supervisor exited: {sup.log_tail()}")
    return round(max(0, after - before - 2) / IDLE_WINDOW, 2)


def _transactions(conn: psycopg.Connection[Any]) -> int:
    conn.execute(query("flush_stats"))
    row = conn.execute(query("database_transactions")).fetchone()
    return int(row[0]) if row else 0
