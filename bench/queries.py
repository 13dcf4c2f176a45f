"""The benchmark's SQL: named queries in bench/sql/queries.sql, pgbench scripts beside them."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import LiteralString, cast

SQL_DIR = Path(__file__).resolve().parent / "sql"
_QUERY_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@functools.cache
def _queries() -> dict[str, LiteralString]:
    parts = _QUERY_HEADER.split((SQL_DIR / "queries.sql").read_text(encoding="utf-8"))
    # Our own file, never input: as trusted as a string literal in the code.
    named = zip(parts[1::2], parts[2::2], strict=True)
    return {name: cast(LiteralString, body.strip()) for name, body in named}


def query(name: str) -> LiteralString:
    """The named query `name` of bench/sql/queries.sql."""
    return _queries()[name]


def script(name: str) -> Path:
    """The pgbench script bench/sql/`name`.pgbench."""
    path = SQL_DIR / f"{name}.pgbench"
    if not path.exists():
        raise FileNotFoundError(path)
    return path
