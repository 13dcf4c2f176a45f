"""What a statement costs the server, counted in buffers: a measure of work that the
machine's noise does not touch."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from tests.support.rows import scalar


def buffers(conn: psycopg.Connection[Any], statement: str, *, generic: bool = False) -> int:
    """Shared buffers that `statement` touched, the statements of the functions it calls
    included, once warm (catalogs read, plans cached). `generic`: under generic plans,
    which a function's statements may settle on after a few calls and which cannot know
    the values of their variables. Each run is rolled back."""
    conn.execute(f"SET plan_cache_mode = {'force_generic_plan' if generic else 'auto'}")
    try:
        for _ in range(6):  # past the five custom plans of a cached plan's first calls
            with conn.transaction(force_rollback=True):
                conn.execute(statement)
        with conn.transaction(force_rollback=True):
            explained = scalar(conn, f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}")
    finally:
        conn.execute("RESET plan_cache_mode")
    plan = (json.loads(explained) if isinstance(explained, str) else explained)[0]["Plan"]
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])
