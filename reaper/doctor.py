"""The doctor's checks: what must never be in the queue's data and schema."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import psycopg

from mobvibe.durations import format_duration
from mobvibe.errors import MigrationError
from mobvibe.sql import db, store
from mobvibe.sql.files import migrations
from mobvibe.sql.migrate import (
    applied_migrations,
    changed_repeatables,
    check_drift,
    functions_current,
    schema_version,
)
from mobvibe.sql.store import DoctorRow

# The database's default, for a schema older than queue_settings() (0005).
HEARTBEAT_TIMEOUT_DEFAULT = timedelta(seconds=30)


@dataclass(frozen=True)
class Finding:
    """One thing that must never be, with the ids to look at."""

    check: str
    message: str
    job_id: str | None = None
    session_id: str | None = None


@dataclass
class Report:
    """Every finding shown, and per check how many more were left out."""

    findings: list[Finding] = field(default_factory=list)
    not_shown: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "findings": [asdict(f) for f in self.findings],
            "not_shown": self.not_shown,
        }


def _processing(row: DoctorRow, timeout: str) -> str:
    silent = (
        "no heartbeat"
        if row.silent_seconds is None
        else f"last heartbeat {row.silent_seconds:.0f} s ago"
    )
    return (
        f"is processing with no live attempt ({silent}, timeout {timeout}, "
        f"worker {row.worker_id or '?'}): the reaper requeues it; is a reaper running?"
    )


# check name -> what a row it finds means
DATA_CHECKS: dict[str, Callable[[DoctorRow, str], str]] = {
    "processing_without_live_attempt": _processing,
    "retry_count_above_max": lambda row, _: (
        f"has retry_count {row.retry_count} above max_retries {row.max_retries}"
    ),
    "failed_without_reason": lambda row, _: "is dead-lettered with no error message",
    "failed_session_without_failed_job": lambda row, _: "is failed, but none of its jobs is",
    "function_executable_by_public": lambda row, _: (
        f"function {row.function} is executable by PUBLIC: REVOKE EXECUTE ON FUNCTION "
        f"{row.function} FROM PUBLIC (or run `mobvibe-queue migrate`)"
    ),
}
CHECK_COUNT = len(DATA_CHECKS) + 3  # and the three schema checks


def diagnose(conn: psycopg.Connection[Any], limit: int) -> Report:
    """Run every check on `conn` (autocommit); at most `limit` findings shown per check.

    A processing job is dead when silent for longer than the configured heartbeat timeout.
    """
    report = Report()
    schema_present = _check_migrations(conn, report)
    if not schema_present:
        return report  # nothing else can be read
    _check_repeatables(conn, report)
    timeout = (
        store.queue_settings(conn).heartbeat_timeout
        if store.queue_settings_exist(conn)
        else HEARTBEAT_TIMEOUT_DEFAULT
    )
    for check, describe in DATA_CHECKS.items():
        try:
            rows = store.doctor_check(conn, check, timeout, limit)
        except psycopg.Error as exc:
            report.findings.append(Finding(check, f"could not run: {db.first_line(exc)}"))
            continue
        for row in rows:
            report.findings.append(
                _finding(check, row, describe(row, format_duration(timeout.total_seconds())))
            )
        if rows and rows[0].total > len(rows):
            report.not_shown[check] = rows[0].total - len(rows)
    return report


def _finding(check: str, row: DoctorRow, what: str) -> Finding:
    job_id = None if row.job_id is None else str(row.job_id)
    session_id = None if row.session_id is None else str(row.session_id)
    subject = (
        f"job {job_id} (session {session_id})"
        if job_id
        else (f"session {session_id}" if session_id else "")
    )
    return Finding(check, f"{subject} {what}".strip(), job_id, session_id)


def _check_migrations(conn: psycopg.Connection[Any], report: Report) -> bool:
    """Report changed and unapplied migrations; False when the queue's tables are missing.

    Where this role may read queue_migrations (the owner, operators), every
    applied migration's checksum is checked; elsewhere the schema version comes
    from queue_settings(), and changed files go unseen.
    """
    applied: set[int] = set()  # none that this role can see
    if store.migrations_readable(conn):
        applied = set(_check_drift(conn, report))
    elif store.queue_settings_exist(conn):
        version = schema_version(conn) or 0
        applied = {m.version for m in migrations() if m.version <= version}
    for migration in migrations():
        if migration.version in applied:
            continue
        report.findings.append(
            Finding(
                "migration_not_applied",
                f"migration {migration.version:04d}_{migration.name} is "
                "not applied: run `mobvibe-queue migrate`",
            )
        )
    return bool(applied)


def _check_repeatables(conn: psycopg.Connection[Any], report: Report) -> None:
    """Report the function files (and privileges) not applied as shipped here.

    Where this role may read queue_repeatables, file by file; elsewhere from the one
    checksum of queue_settings().
    """
    if store.repeatables_readable(conn):
        stale = [r.name for r in changed_repeatables(store.applied_repeatables(conn))]
    elif store.queue_settings_exist(conn) and not functions_current(store.queue_settings(conn)):
        stale = ["sql/functions and sql/privileges.sql"]
    else:
        stale = []  # a schema older than queue_settings(): its migrations are reported
    for name in stale:
        report.findings.append(
            Finding(
                "function_file_not_applied",
                f"{name}: not applied as this version ships it: run `mobvibe-queue migrate`",
            )
        )


def _check_drift(conn: psycopg.Connection[Any], report: Report) -> list[int]:
    """Report every applied migration whose file changed since; the versions applied."""
    applied = applied_migrations(conn)
    for version, entry in sorted(applied.items()):
        try:
            check_drift({version: entry})
        except MigrationError as exc:
            report.findings.append(Finding("migration_drift", str(exc)))
    return list(applied)
