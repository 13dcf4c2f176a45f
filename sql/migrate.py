"""Apply the numbered migrations of sql/migrations, once each, under an advisory lock."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from mobvibe.errors import ConfigError, MigrationError
from mobvibe.sql import store
from mobvibe.sql.files import Migration, migrations

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
    store.lock_migrations(conn)  # serialises concurrent pods
    try:
        store.create_migrations_table(conn)
        applied = _applied(conn)
        check_drift(applied)
        done = []
        for migration in migrations():
            if migration.version not in applied:
                _apply(conn, migration)
                done.append(f"{migration.version:04d}_{migration.name}")
        return MigrationReport(tuple(done), len(applied))
    finally:
        store.unlock_migrations(conn)


def _applied(conn: psycopg.Connection[Any]) -> dict[int, tuple[str, str]]:
    return {m.version: (m.name, m.checksum) for m in store.applied_migrations(conn)}


def applied_migrations(conn: psycopg.Connection[Any]) -> dict[int, tuple[str, str]]:
    """version -> (name, checksum) of what the database has applied ({} if none)."""
    if not store.migrations_table_exists(conn):
        return {}
    return _applied(conn)


def check_drift(applied: dict[int, tuple[str, str]]) -> None:
    """Raise MigrationError if an applied migration differs from the file shipped here."""
    shipped = {m.version: m for m in migrations()}
    for version, (name, checksum) in sorted(applied.items()):
        migration = shipped.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has migration {version:04d}_{name}, which this "
                "version does not ship: upgrade mobvibe-supervisor"
            )
        if migration.checksum != checksum:
            raise MigrationError(
                f"migration {version:04d}_{name} was changed after it was "
                "applied: restore the file, and put the change in a new migration"
            )


def schema_version(conn: psycopg.Connection[Any]) -> int | None:
    """The highest migration applied, read through queue_settings() as any queue role may.

    None when the schema predates queue_settings() (or is not there at all).
    Raises ConfigError when the role may not use the queue.
    """
    if not store.queue_settings_exist(conn):
        return None
    try:
        return store.queue_settings(conn).schema_version
    except psycopg.errors.InsufficientPrivilege:
        user = conn.info.parameter_status("session_authorization") or "this role"
        raise ConfigError(
            f"role {user} may not use the queue: GRANT mobvibe_worker (or the role of the "
            f"tool: mobvibe_producer, mobvibe_monitor, mobvibe_operator) TO {user}"
        ) from None


def shipped_version() -> int:
    """The highest migration this version ships."""
    return migrations()[-1].version


def schema_is_current(conn: psycopg.Connection[Any]) -> bool:
    """True when the database has every migration shipped here, for callers that are not
    the owner (no read of queue_migrations).

    Raises MigrationError when the database is newer than this version.
    """
    version = schema_version(conn)
    if version is not None and version > shipped_version():
        raise MigrationError(
            f"the database has migration {version:04d}, which this version does not ship: "
            "upgrade mobvibe-supervisor"
        )
    return version == shipped_version()


def _apply(conn: psycopg.Connection[Any], migration: Migration) -> None:
    store.apply_migration(
        conn, migration.version, migration.name, migration.checksum, migration.sql
    )
    log.info(
        "migration applied",
        extra={
            "event": "migration_applied",
            "migration": f"{migration.version:04d}_{migration.name}",
        },
    )
