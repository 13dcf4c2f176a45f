"""Apply the numbered migrations of sql/migrations, once each, under an advisory lock."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from supervisor.errors import MigrationError
from supervisor.sqlfiles import Migration, migrations, query

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MigrationReport:
    """What one run of migrate() did."""

    applied: tuple[str, ...]
    already: int


def migrate(conn: psycopg.Connection[Any]) -> MigrationReport:
    """Bring the schema up to date; safe when several processes run it at once.

    Raises MigrationError when an applied migration's file changed since.
    """
    conn.execute(query("migration_lock"))  # serialises concurrent pods
    try:
        conn.execute(query("create_migrations_table"))
        applied = _applied(conn)
        check_drift(applied)
        done = []
        for migration in migrations():
            if migration.version not in applied:
                _apply(conn, migration)
                done.append(f"{migration.version:04d}_{migration.name}")
        return MigrationReport(tuple(done), len(applied))
    finally:
        conn.execute(query("migration_unlock"))


def _applied(conn: psycopg.Connection[Any]) -> dict[int, tuple[str, str]]:
    rows = conn.execute(query("applied_migrations")).fetchall()
    return {version: (name, checksum) for version, name, checksum in rows}


def applied_migrations(conn: psycopg.Connection[Any]) -> dict[int, tuple[str, str]]:
    """version -> (name, checksum) of what the database has applied ({} if none)."""
    if not conn.execute(query("migrations_table_exists")).fetchone()[0]:  # type: ignore[index]
        return {}
    return _applied(conn)


def check_drift(applied: dict[int, tuple[str, str]]) -> None:
    """Raise MigrationError if an applied migration differs from the file shipped here."""
    shipped = {m.version: m for m in migrations()}
    for version, (name, checksum) in sorted(applied.items()):
        migration = shipped.get(version)
        if migration is None:
            raise MigrationError(f"the database has migration {version:04d}_{name}, which this "
                                 "version does not ship: upgrade mobvibe-supervisor")
        if migration.checksum != checksum:
            raise MigrationError(f"migration {version:04d}_{name} was changed after it was "
                                 "applied: restore the file, and put the change in a new migration")


def pending_migrations(conn: psycopg.Connection[Any]) -> list[Migration]:
    """Migrations shipped here that the database has not applied."""
    applied = applied_migrations(conn)
    return [m for m in migrations() if m.version not in applied]


def _apply(conn: psycopg.Connection[Any], migration: Migration) -> None:
    with conn.transaction():
        conn.execute("SET LOCAL lock_timeout = '10s'")
        conn.execute(migration.sql.encode())  # a file of several statements, ours
        conn.execute(query("record_migration"), {"version": migration.version,
                                                 "name": migration.name,
                                                 "checksum": migration.checksum})
    log.info("migration applied", extra={"event": "migration_applied",
                                         "migration": f"{migration.version:04d}_{migration.name}"})
