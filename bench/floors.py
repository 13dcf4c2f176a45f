"""The floors: what PostgreSQL itself does for the queue's pattern, measured by pgbench.

On bench_jobs, a copy of coding_jobs' shape without its triggers and foreign
key (the plain pattern, the floor the targets are ratios of), then the same
work through the queue's own SQL functions on coding_jobs, still from C: the
gap between the two is the cost of the functions, fencing and notification
triggers; the gap between the latter and a drain is the cost of Python.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg import sql

from bench.context import Context
from bench.pgbench import NIL_UUID, pgbench
from bench.queries import query

CLIENTS = 8  # as many as `--workers 8`
SPARE = 1.1  # preload 10 % more jobs than the clients will claim
BATCH = 10  # jobs per statement of floor_batched.pgbench


def run(ctx: Context) -> dict[str, Any]:
    url = ctx.server.database("floors")
    session = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        _create_floor_table(conn)
        conn.execute(query("create_session"), {"session_id": session})
    per_client = ctx.sizes.floor_jobs_per_client
    jobs = int(CLIENTS * per_client * SPARE)
    nil = {"job_id": NIL_UUID, "lease_token": NIL_UUID}
    runs: dict[str, Any] = {}

    def bench(
        name: str, table: str, clients: int, count: int, variables: dict[str, str] | None = None
    ) -> float:
        with psycopg.connect(url, autocommit=True) as conn:
            _load(conn, table, session, jobs if clients > 1 else 0)
        ctx.log(f"floors: pgbench {name} ({clients} clients x {count})")
        run = pgbench(
            ctx.pgbench,
            url,
            name,
            clients=clients,
            per_client=count,
            variables=variables,
            postmaster=ctx.postmaster,
        )
        runs[name] = {
            "per_s": round(run.scripts_per_s, 1),
            "clients": clients,
            "runs": run.processed,
            "latency_ms": run.latency_ms,
            "cpu_us_per_run": run.cpu_us,
        }
        return run.scripts_per_s

    # One script run is one job: two transactions (claim, complete) or one (fused).
    results: dict[str, Any] = {
        "floor_jobs_per_s": bench("floor_claim_complete", "floor", CLIENTS, per_client),
        "floor_fused_jobs_per_s": bench("floor_fused", "floor", CLIENTS, per_client, nil),
        "insert_floor_per_s": bench(
            "floor_insert", "floor", 1, ctx.sizes.insert_floor_rows, {"session_id": str(session)}
        ),
    }
    # What batching 10 jobs per statement would reach: context for the 2 x floor target.
    results["floor_batched_jobs_per_s"] = BATCH * bench(
        "floor_batched",
        "floor",
        CLIENTS,
        max(1, per_client // BATCH),
        {"ids": "{}", "leases": "{}"},
    )
    # The queue's own SQL from C, on fewer jobs: it is context, not a target.
    ours = max(1, per_client // 4)
    results["sql_functions"] = {
        "claim_complete_jobs_per_s": bench("queue_claim_complete", "queue", CLIENTS, ours),
        "fused_jobs_per_s": bench("queue_fused", "queue", CLIENTS, ours, nil),
        "insert_per_s": bench(
            "queue_insert", "queue", 1, ctx.sizes.insert_floor_rows, {"session_id": str(session)}
        ),
    }
    results["floors"] = {
        "table": "bench_jobs: LIKE coding_jobs INCLUDING ALL, its storage "
        "parameters, no triggers, no foreign key",
        "pgbench": runs,
    }
    return results


def _create_floor_table(conn: psycopg.Connection[Any]) -> None:
    conn.execute(query("create_floor_table"))
    row = conn.execute(query("table_options")).fetchone()
    for option in row[0] if row else []:
        key, _, value = option.partition("=")
        conn.execute(
            sql.SQL("ALTER TABLE bench_jobs SET ({} = {})").format(
                sql.Identifier(key), sql.Literal(value)
            )
        )


def _load(conn: psycopg.Connection[Any], table: str, session: uuid.UUID, count: int) -> None:
    """Empty the table ("floor": bench_jobs, "queue": coding_jobs), add `count` due jobs."""
    if table == "floor":
        conn.execute(query("truncate_floor_jobs"))
        if count:
            conn.execute(query("load_floor_jobs"), {"session_id": session, "count": count})
        conn.execute(query("analyze_floor_jobs"))
        return
    conn.execute(query("truncate_jobs"))
    if count:
        with conn.transaction():
            # A session each: one session's prompts run one at a time.
            conn.execute(query("disable_user_triggers"))
            conn.execute(query("load_pending_jobs"), {"count": count})
            conn.execute(query("enable_user_triggers"))
    conn.execute(query("analyze_jobs"))
