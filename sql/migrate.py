"""Bring the schema up to date: the numbered migrations of sql/migrations (tables,
indexes, data), once each, then the repeatable files (one per function in sql/functions,
then sql/privileges.sql and sql/row_security.sql) whose text changed since they were
last applied; sql/row_security.sql also whenever the database gained or lost Supabase's
shape (the roles anon and authenticated, auth.uid()) since.

Everything a run applies is one transaction: the database moves from one schema to the
next at once, never to new tables with old functions, and a failure changes nothing.
The transaction holds a lock on queue_migrations that only its owner may take (an
advisory lock is any login's to take and hold). The runner's own statements, the
migrations from 0010 on and the repeatable files run with search_path = pg_catalog,
pg_temp: they name every object of the queue public.*. The migrations 0001 to 0009 name
them unqualified and need public in their search_path: they run with public, pg_temp,
and only while no role that could not act as the migrating role anyway may create
objects in public or owns a function, an operator or a queue table there (what such a
role planted would run as the migrating role, usually a superuser).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from mobvibe.durations import format_duration
from mobvibe.errors import ConfigError, MigrationError
from mobvibe.sql import store
from mobvibe.sql.db import first_line
from mobvibe.sql.files import (
    PRIVILEGES,
    ROW_SECURITY,
    Migration,
    Repeatable,
    migrations,
    repeatables,
    repeatables_checksum,
)
from mobvibe.sql.records import LockHolder, PlantedObject, QueueSettings

log = logging.getLogger(__name__)

LOCK_WAIT_DEFAULT = 60.0  # seconds a run waits for another run's lock, then gives up
# A migration's statement waits this long for a busy table, then the run fails and can
# be run again, rather than queueing every query behind it.
STATEMENT_LOCK_TIMEOUT = "10s"
PINNED = "pg_catalog, pg_temp"
# The last migration written with unqualified names, before the runner pinned the
# search_path; the files are frozen (their checksums are on record): they keep needing
# public, and nothing else.
LAST_UNPINNED = 9
UNPINNED = "public, pg_temp"


@dataclass(frozen=True)
class MigrationReport:
    """What one run of migrate() did."""

    applied: tuple[str, ...]  # numbered migrations, e.g. 0010_name
    already: int  # numbered migrations applied before this run
    files: tuple[str, ...]  # repeatable files applied, e.g. functions/claim_next_job.sql
    files_shipped: int  # repeatable files this version ships


def migrate(conn: psycopg.Connection[Any], lock_wait: float = LOCK_WAIT_DEFAULT) -> MigrationReport:
    """Bring the schema up to date, on an autocommit connection; safe when several processes
    run it at once (one applies, the others wait at most `lock_wait` seconds for it, then
    find nothing to do).

    Raises MigrationError when an applied migration's file changed since, a file does not
    apply, another run holds the lock too long, or roles that cannot act as this one may
    plant in public while migrations that search it are pending.
    """
    _create_tables(conn)
    with conn.transaction():
        store.set_local(conn, "search_path", PINNED)
        _lock(conn, lock_wait)
        applied = _applied(conn)
        check_drift(applied)
        pending = [m for m in migrations() if m.version not in applied]
        recorded = store.applied_repeatables(conn)
        supabase = store.supabase_shape(conn)
        stale = stale_repeatables(recorded, store.row_security_shape(conn) is not supabase)
        if any(m.version <= LAST_UNPINNED for m in pending):
            check_public_is_closed(conn)
        if pending or stale or recorded.keys() - _shipped_names():
            for migration in pending:
                _apply(conn, migration)
            _apply_repeatables(conn, stale)
            if any(r.name == ROW_SECURITY for r in stale):
                store.record_row_security_shape(conn, supabase)
    done = tuple(f"{m.version:04d}_{m.name}" for m in pending)
    files = tuple(r.name for r in stale)
    return MigrationReport(done, len(applied), files, len(repeatables()))


def _create_tables(conn: psycopg.Connection[Any]) -> None:
    """Create queue_migrations and queue_repeatables if missing; two runs racing on a new
    database both go on."""
    for create in (store.create_migrations_table, store.create_repeatables_table):
        try:
            with conn.transaction():
                store.set_local(conn, "search_path", PINNED)
                create(conn)
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
            pass  # created by the other run an instant ago: IF NOT EXISTS saw it missing


def _lock(conn: psycopg.Connection[Any], wait: float) -> None:
    """Hold the runs' lock until the transaction ends; MigrationError after `wait` s."""
    try:
        with conn.transaction():  # a savepoint: the transaction outlives a timeout
            store.set_local(conn, "lock_timeout", f"{max(1, round(wait * 1000))}ms")
            store.lock_migrations(conn)
    except psycopg.errors.LockNotAvailable:
        holder = store.migrations_lock_holder(conn)
        raise MigrationError(_held_message(holder, wait)) from None
    store.set_local(conn, "lock_timeout", STATEMENT_LOCK_TIMEOUT)


def _held_message(holder: LockHolder | None, wait: float) -> str:
    who = (
        "another session"
        if holder is None
        else f"pid {holder.pid} (user {holder.user_name or '?'}, application "
        f"{holder.application_name or '-'})"
    )
    end = "" if holder is None else f" (SELECT pg_terminate_backend({holder.pid}))"
    return (
        f"{who} holds a lock on public.queue_migrations: waited {format_duration(wait)} for it; "
        f"run migrate again once that session is done, or end it{end}"
    )


def check_public_is_closed(conn: psycopg.Connection[Any]) -> None:
    """Raise MigrationError when a role that cannot act as the current one may plant in
    public, or has: the migrations 0001-0009 would run what it planted as this role."""
    role = store.current_role(conn)
    writers = store.public_schema_writers(conn)
    if writers:
        raise MigrationError(_open_schema_message(writers, role))
    planted = store.planted_objects(conn)
    if planted:
        raise MigrationError(_planted_message(planted, role))


def _open_schema_message(writers: list[str], role: str) -> str:
    if "PUBLIC" in writers:
        return (
            "every role may create objects in schema public, where the migrations would run "
            f"what one planted as {role}: close it with REVOKE CREATE ON SCHEMA public FROM "
            "PUBLIC (the default since PostgreSQL 15), then run migrate again"
        )
    names = ", ".join(writers[:5]) + (f" and {len(writers) - 5} more" if len(writers) > 5 else "")
    return (
        f"role(s) {names} may create objects in schema public, where the migrations would run "
        f"what one planted as {role}: REVOKE CREATE ON SCHEMA public FROM {names} (or migrate "
        "as a role they may act as), then run migrate again"
    )


def _planted_message(planted: list[PlantedObject], role: str) -> str:
    first = planted[0]
    more = f" and {len(planted) - 1} more" if len(planted) > 1 else ""
    return (
        f"schema public holds {first.kind} {first.name} of role {first.owner}{more}, owned by "
        f"roles that cannot act as {role}: the migrations would run such objects as {role}; "
        f"drop them, or make {role} their owner once checked, then run migrate again"
    )


def changed_repeatables(recorded: dict[str, str]) -> list[Repeatable]:
    """The repeatable files new or changed since they were applied (name -> checksum)."""
    return [r for r in repeatables() if recorded.get(r.name) != r.checksum]


def stale_repeatables(
    recorded: dict[str, str], shape_changed: bool = False
) -> tuple[Repeatable, ...]:
    """The repeatable files to apply: the function files changed, then the privileges and
    the row security if any file was (a function dropped and created again lost its
    grants, and the privileges start from nothing); the row security alone when only it
    changed, or the database's shape did."""
    changed = {r.name for r in changed_repeatables(recorded)}
    *functions, privileges, row_security = repeatables()
    stale = [r for r in functions if r.name in changed]
    if stale or PRIVILEGES in changed:
        return (*stale, privileges, row_security)
    if ROW_SECURITY in changed or shape_changed:
        return (row_security,)
    return ()


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
    """Run one numbered migration and record it, in the run's transaction."""
    unpinned = migration.version <= LAST_UNPINNED
    store.set_local(conn, "search_path", UNPINNED if unpinned else PINNED)
    store.apply_migration(
        conn, migration.version, migration.name, migration.checksum, migration.sql
    )
    store.set_local(conn, "search_path", PINNED)
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
    _check_bodies(conn, [_function_of(r) for r in stale if r.name.startswith("functions/")])


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
