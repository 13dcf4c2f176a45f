"""Claim cost as the table grows: 1 thousand, 100 thousand, 1 million rows, 99 % finished;
then 1 million pending rows of which 99 % cannot start (behind their session's first
prompt, or backed off for a day, or waiting for their user's limit), against the 1
thousand.

Each size: the table is loaded (1 % due pending, the rest completed or failed,
as a queue leaves them), vacuumed and analyzed; then on one connection, with
the worker's prepared statements, claim_next_job and complete_job are timed
cycle after cycle. Between cycles (untimed) the completed job is deleted and a
new pending one enqueued, so that size and mix stay as loaded. Last, the same
at 100 thousand due pending jobs. The claim's plan and buffer count are kept:
buffers are a measure of work that the machine's noise does not touch.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg

from bench.context import Context
from bench.queries import query
from bench.stats import summary
from mobvibe.sql import store

PENDING_SHARE = 0.01
SESSIONS = 100
PER_SESSION = 100  # the blocked shape: 1 of each session's prompts may start
PER_USER = 100  # the user-limited shape: each user's prompts, in sessions of their own
BLOCKED, BACKOFF, USER_LIMITED = -1.0, -2.0, -3.0  # shapes, where the others give a share
WARM_UP = 20


def run(ctx: Context) -> dict[str, Any]:
    url = ctx.server.database("claim")
    sessions = [uuid.uuid4() for _ in range(SESSIONS)]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query("create_wide_sessions"), {"session_ids": sessions})
    costs: dict[str, float] = {}
    buffers: dict[str, int] = {}
    detail: dict[str, Any] = {}
    shapes: list[tuple[str, int, float]] = [
        (str(rows), rows, PENDING_SHARE) for rows in ctx.sizes.claim_rows
    ]
    shapes.append((f"pending_{ctx.sizes.claim_pending_rows}", ctx.sizes.claim_pending_rows, 1.0))
    most = max(ctx.sizes.claim_rows)
    shapes += [(f"{most}-blocked", most, BLOCKED), (f"{most}-backoff", most, BACKOFF)]
    shapes.append((f"{most}-user-limited", most, USER_LIMITED))
    for key, rows, share in shapes:
        with psycopg.connect(url, autocommit=True) as conn:
            started = time.monotonic()
            if share == BLOCKED:
                _load_blocked(conn, rows)
            elif share == BACKOFF:
                _load_backed_off(conn, rows)
            elif share == USER_LIMITED:
                _load_user_limited(conn, rows)
            else:
                _load(conn, rows, share, sessions)
            load_s = time.monotonic() - started
        shape = {
            BLOCKED: "99% behind their session",
            BACKOFF: "99% backing off",
            USER_LIMITED: "99% waiting for their user",
        }.get(share, f"{share:.0%} pending")
        ctx.log(
            f"claim: {rows} rows ({shape}) loaded in {load_s:.1f} s; "
            f"{ctx.sizes.claim_cycles} claims"
        )
        with psycopg.connect(url, autocommit=True, application_name="mobvibe-bench") as conn:
            result = _cycles(conn, ctx.sizes.claim_cycles)
            result["plan"] = _plan(conn)
            result["buffers"] = _buffers(conn)
        result["load_s"] = round(load_s, 1)
        costs[key] = result["claim_ms"]["p50"]
        buffers[key] = result["buffers"]
        detail[key] = result
    return {"claim_ms": costs, "claim_buffers": buffers, "claim": detail}


def _load(
    conn: psycopg.Connection[Any], rows: int, share: float, sessions: list[uuid.UUID]
) -> None:
    conn.execute(query("truncate_jobs"))
    with conn.transaction():
        conn.execute(query("disable_user_triggers"))
        conn.execute(
            query("load_mixed_jobs"),
            {"count": rows, "pending_share": share, "session_ids": sessions, "sessions": SESSIONS},
        )
        conn.execute(query("enable_user_triggers"))
    conn.execute(query("vacuum_analyze_jobs"))


def _load_blocked(conn: psycopg.Connection[Any], rows: int) -> None:
    """`rows` pending jobs in sessions of PER_SESSION: 1 % may start, 99 % wait for it."""
    conn.execute(query("truncate_jobs"))
    with conn.transaction():
        conn.execute(query("disable_user_triggers"))
        conn.execute(
            query("load_blocked_sessions"),
            {"sessions": rows // PER_SESSION, "per_session": PER_SESSION},
        )
        conn.execute(query("enable_user_triggers"))
    conn.execute(query("vacuum_analyze_jobs"))


def _load_backed_off(conn: psycopg.Connection[Any], rows: int) -> None:
    """`rows` pending heads of their sessions: 99 % wait a day for their retry."""
    conn.execute(query("truncate_jobs"))
    ready = int(rows * PENDING_SHARE)
    with conn.transaction():
        conn.execute(query("disable_user_triggers"))
        conn.execute(query("load_backed_off"), {"waiting": rows - ready, "ready": ready})
        conn.execute(query("enable_user_triggers"))
    conn.execute(query("vacuum_analyze_jobs"))


def _load_user_limited(conn: psycopg.Connection[Any], rows: int) -> None:
    """`rows` jobs of users limited to one at a time, PER_USER each in sessions of their
    own, one of each running and the others waiting for it; then one job of a user with
    none running, placed by the queue's own trigger: the one job a claim may take."""
    conn.execute(query("truncate_jobs"))
    users = rows // PER_USER
    with conn.transaction():
        conn.execute(query("disable_user_triggers"))
        conn.execute(query("set_user_max_concurrency"), {"limit": 1})
        conn.execute(query("load_user_limited"), {"users": users, "per_user": PER_USER})
        conn.execute(query("advance_turns"), {"users": users})
        conn.execute(query("enable_user_triggers"))
    conn.execute(query("ready_user_job"))
    conn.execute(query("vacuum_analyze_jobs"))


def _cycles(conn: psycopg.Connection[Any], cycles: int) -> dict[str, Any]:
    claim_ms: list[float] = []
    complete_ms: list[float] = []
    worker = "bench:claim-cost"
    for i in range(WARM_UP + cycles):
        t0 = time.perf_counter()
        job = store.claim(conn, worker)
        t1 = time.perf_counter()
        if job is None:
            raise RuntimeError("claim cost: the queue ran dry")
        done = store.complete(conn, job.id, job.lease_token)
        t2 = time.perf_counter()
        if not done:
            raise RuntimeError("claim cost: complete_job refused its own lease")
        conn.execute(query("replace_completed_job"), {"job_id": job.id}, prepare=True)
        if i >= WARM_UP:
            claim_ms.append((t1 - t0) * 1000)
            complete_ms.append((t2 - t1) * 1000)
    return {
        "claim_ms": summary(claim_ms, 4),
        "complete_ms": summary(complete_ms, 4),
        "cycles": cycles,
    }


def _plan(conn: psycopg.Connection[Any]) -> list[str]:
    """The claim's inner SELECT, explained (in a transaction rolled back: it locks a row)."""
    with conn.transaction(force_rollback=True):
        return [row[0] for row in conn.execute(query("explain_claim")).fetchall()]


def _buffers(conn: psycopg.Connection[Any]) -> int:
    """The buffers one whole claim_next_job() call touches (every statement of it, shared
    hits and reads), in a transaction rolled back."""
    with conn.transaction(force_rollback=True):
        row = conn.execute(query("explain_claim_call")).fetchone()
    assert row is not None
    top = row[0][0]["Plan"]
    return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])
