"""The SQL shipped with the package: migrations and the named queries Python runs."""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib.resources import files
from typing import LiteralString, cast

_QUERY_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_MIGRATION_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One numbered file of sql/migrations."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@functools.cache
def queries() -> dict[str, LiteralString]:
    """Named queries of sql/queries.sql: `-- name: x` starts the query `x`."""
    text = (files("mobvibe.sql") / "queries.sql").read_text(encoding="utf-8")
    parts = _QUERY_HEADER.split(text)
    # The SQL comes from our own package file, never from input: it is as
    # trusted as a string literal in the code.
    pairs = zip(parts[1::2], parts[2::2], strict=True)
    return {name: cast(LiteralString, body.strip()) for name, body in pairs}


def query(name: str) -> LiteralString:
    """The named query `name` of sql/queries.sql."""
    return queries()[name]


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """Every migration shipped with the package, in version order."""
    found = []
    for entry in (files("mobvibe.sql") / "migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            sql = entry.read_text(encoding="utf-8")
            found.append(Migration(int(match.group(1)), match.group(2), sql))
    return tuple(sorted(found, key=lambda m: m.version))
