"""The SQL shipped with the package: migrations, function files and the named queries."""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib.resources import files
from typing import LiteralString, cast

_QUERY_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_MIGRATION_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")
_FUNCTION_FILE = re.compile(r"^\w+\.sql$")

# Applied after every function file, whenever one was applied: it grants what a
# function dropped and created again lost.
PRIVILEGES = "privileges.sql"
# Applied after the privileges, every time they are, and whenever the database gains
# or loses Supabase's shape (anon, authenticated, auth.uid()): the phone's rows.
ROW_SECURITY = "row_security.sql"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Migration:
    """One numbered file of sql/migrations."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return _sha256(self.sql)


@dataclass(frozen=True)
class Repeatable:
    """A file applied again whenever its text changes: sql/functions/<function>.sql, or
    sql/privileges.sql. `name` is its path under sql/, as queue_repeatables records it."""

    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return _sha256(self.sql)


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


@functools.cache
def repeatables() -> tuple[Repeatable, ...]:
    """The function files of sql/functions in name order, then sql/privileges.sql, then
    sql/row_security.sql."""
    root = files("mobvibe.sql")
    found = sorted(
        (
            Repeatable(f"functions/{entry.name}", entry.read_text(encoding="utf-8"))
            for entry in (root / "functions").iterdir()
            if _FUNCTION_FILE.match(entry.name)
        ),
        key=lambda r: r.name,
    )
    trailing = (
        Repeatable(name, (root / name).read_text(encoding="utf-8"))
        for name in (PRIVILEGES, ROW_SECURITY)
    )
    return (*found, *trailing)


def repeatables_checksum(checksums: dict[str, str]) -> str:
    """One checksum of a set of repeatable files (name -> checksum), as queue_settings()
    computes it from queue_repeatables: SHA-256 of "name checksum\n" lines in name order."""
    lines = "".join(f"{name} {checksums[name]}\n" for name in sorted(checksums))
    return _sha256(lines)
