"""Bring the schema up to date, under an advisory lock: the numbered migrations of
sql/migrations (tables, indexes, data), once each, then the repeatable files (one per
function in sql/functions, then sql/privileges.sql) whose text changed since they were
last applied.

Everything a run applies is one transaction: the database moves from one schema to the
next at once, never to new tables with old functions, and a failure changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from mobvibe.errors import ConfigError, MigrationError
from mobvibe.sql import store
from mobvibe.sql.db import first_line
from mobvibe.sql.files import (
    PRIVILEGES,
    Migration,
    Repeatable,
    migrations,
    repeatables,
    repeatables_checksum,
)
from mobvibe.sql.records import QueueSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MigrationReport:
    """What one run of migrate() did."""

    applied: tuple[str, ...]  # numbered migrations, e.g. 0010_name
    already: int  # numbered migrations applied before this run
    files: tuple[str, ...]  # repeatable files applied, e.g. functions/claim_next_job.sql
    files_shipped: int  # repeatable files this version ships


def migrate(conn: psycopg.Connection[Any]) -> MigrationReport:
    """Bring the schema up to date; safe when several processes run it at once.

    Raises MigrationError when an applied migration's file changed since, or a file
    does not apply.
    """
    store.lock_migrations(conn)  # serialises concurrent pods
    try:
        store.create_migrations_table(conn)
        store.create_repeatables_table(conn)
        applied = _applied(conn)
        check_drift(applied)
        pending = [m for m in migrations() if m.version not in applied]
        recorded = store.applied_repeatables(conn)
        stale = stale_repeatables(recorded)
        if pending or stale or recorded.keys() - _shipped_names():
            with conn.transaction():
                store.limit_lock_waits(conn)
                for migration in pending:
                    _apply(conn, migration)
                _apply_repeatables(conn, stale)
        done = tuple(f"{m.version:04d}_{m.name}" for m in pending)
        files = tuple(r.name for r in stale)
        return MigrationReport(done, len(applied), files, len(repeatables()))
    finally:
        store.unlock_migrations(conn)


def changed_repeatables(recorded: dict[str, str]) -> list[Repeatable]:
    """The repeatable files new or changed since they were applied (name -> checksum)."""
    return [r for r in repeatables() if recorded.get(r.name) != r.checksum]


def stale_repeatables(recorded: dict[str, str]) -> tuple[Repeatable, ...]:
    """The repeatable files to apply: those changed, then the privileges if any was (a
    function dropped and created again lost its grants)."""
    changed = changed_repeatables(recorded)
    if changed and changed[-1].name != PRIVILEGES:
        changed.append(repeatables()[-1])
    return tuple(changed)


def _shipped_names() -> set[str]:
    return {r.name for r in repeatables()}


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


def pending_migrations(conn: psycopg.Connection[Any]) -> list[Migration]:
    """Migrations shipped here that the database has not applied (reads queue_migrations)."""
    applied = applied_migrations(conn)
    return [m for m in migrations() if m.version not in applied]


def _settings(conn: psycopg.Connection[Any]) -> QueueSettings | None:
    """queue_settings(), as any queue role may read it; None when the schema predates it
    (or is not there at all). Raises ConfigError when the role may not use the queue."""
    if not store.queue_settings_exist(conn):
        return None
    try:
        return store.queue_settings(conn)
    except psycopg.errors.InsufficientPrivilege:
        user = conn.info.parameter_status("session_authorization") or "this role"
        raise ConfigError(
            f"role {user} may not use the queue: GRANT mobvibe_worker (or the role of the "
            f"tool: mobvibe_producer, mobvibe_monitor, mobvibe_operator) TO {user}"
        ) from None


def schema_version(conn: psycopg.Connection[Any]) -> int | None:
    """The highest migration applied, read through queue_settings() as any queue role may.

    None when the schema predates queue_settings() (or is not there at all).
    Raises ConfigError when the role may not use the queue.
    """
    settings = _settings(conn)
    return None if settings is None else settings.schema_version


def shipped_version() -> int:
    """The highest migration this version ships."""
    return migrations()[-1].version


def shipped_functions_checksum() -> str:
    """The checksum queue_settings() reports once this version's repeatable files are applied."""
    return repeatables_checksum({r.name: r.checksum for r in repeatables()})


def functions_current(settings: QueueSettings) -> bool:
    """Whether the database's functions and privileges are the files shipped here."""
    return settings.functions_checksum == shipped_functions_checksum()


def schema_is_current(conn: psycopg.Connection[Any]) -> bool:
    """True when the database has every migration shipped here and its repeatable files as
    shipped here, for callers that are not the owner (no read of queue_migrations).

    Functions that differ from the files are not current, older or newer: the text of a
    file tells no order. Raises MigrationError when the database has a migration newer
    than this version.
    """
    settings = _settings(conn)
    version = None if settings is None else settings.schema_version
    if version is not None and version > shipped_version():
        raise MigrationError(
            f"the database has migration {version:04d}, which this version does not ship: "
            "upgrade mobvibe-supervisor"
        )
    return settings is not None and version == shipped_version() and functions_current(settings)


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


def _apply_repeatables(conn: psycopg.Connection[Any], stale: tuple[Repeatable, ...]) -> None:
    """Apply the stale files in the caller's transaction, bodies checked once all are there."""
    store.defer_body_checks(conn)
    for repeatable in stale:
        try:
            store.apply_repeatable(conn, repeatable.name, repeatable.checksum, repeatable.sql)
        except psycopg.Error as exc:
            raise MigrationError(f"{repeatable.name} does not apply: {first_line(exc)}") from exc
        log.info(
            "function file applied",
            extra={"event": "function_file_applied", "file": repeatable.name},
        )
    store.forget_repeatables(conn, sorted(_shipped_names()))
    _check_bodies(conn, [_function_of(r) for r in stale if r.name != PRIVILEGES])


def _function_of(repeatable: Repeatable) -> str:
    """The function a file of sql/functions defines: functions/<name>.sql."""
    return repeatable.name.removeprefix("functions/").removesuffix(".sql")


def _check_bodies(conn: psycopg.Connection[Any], names: list[str]) -> None:
    """Check, as CREATE FUNCTION would have, the body of every function named."""
    store.check_bodies(conn)
    for function in store.functions_named(conn, names):
        try:
            store.check_function(conn, function.oid)
        except psycopg.Error as exc:
            raise MigrationError(
                f"function {function.signature} does not compile: {first_line(exc)}"
            ) from exc
