"""What each further pod costs the server per job: a drain beside other pods' listeners.

Every pod's hub LISTENs, and PostgreSQL signals every listening backend of the
database at each commit that notified, whatever the channel. Other pods' hubs
are stood in for by idle connections that LISTEN job_cancel, as a hub does; an
8-worker drain runs beside none and beside LISTENERS of them, with the
job_status_changed notifications on (the default) and off. The figure is the
server CPU per job that each further listener adds.
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg

from bench.context import Context
from bench.drain import drain_once
from bench.queries import query

WORKERS = 8
LISTENERS = 16
VARIANTS = {"defaults": (), "quiet": ("--no-status-notifications",)}


def run(ctx: Context) -> dict[str, Any]:
    url = ctx.server.database("listeners")
    count = ctx.sizes.listeners_drain_jobs
    server: dict[str, dict[str, float]] = {}
    for name, extra in VARIANTS.items():
        for listeners in (0, LISTENERS):
            ctx.log(f"listeners: {count} jobs beside {listeners} other listeners ({name})")
            server.setdefault(name, {})[str(listeners)] = _drain(ctx, url, count, listeners, extra)
    per_listener = {
        name: round((found[str(LISTENERS)] - found["0"]) / LISTENERS, 1)
        for name, found in server.items()
        if "0" in found and str(LISTENERS) in found
    }
    return {
        "server_cpu_us_per_job_per_listener": per_listener,
        "listeners": {"jobs": count, "workers": WORKERS, "server_cpu_us_per_job": server},
    }


def _drain(ctx: Context, url: str, count: int, listeners: int, extra: tuple[str, ...]) -> float:
    with contextlib.ExitStack() as others:
        for _ in range(listeners):
            other = others.enter_context(psycopg.connect(url, autocommit=True))
            other.execute(query("listen_like_a_hub"))
        used, _ = drain_once(ctx, url, count, WORKERS, extra)
    if "postgres" not in used:
        raise RuntimeError("the server's CPU cannot be read: it does not run on this machine")
    return float(used["postgres"])
