"""mobvibe-queue doctor: look for what must never be in the queue's data and schema."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import click
import psycopg

from reaper.durations import Duration, format_duration
from supervisor import db
from supervisor.errors import MigrationError
from supervisor.migrate import applied_migrations, check_drift, pending_migrations
from supervisor.options import friendly_errors, resolve_database
from supervisor.sqlfiles import query

Row = tuple[Any, ...]


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
        return {"ok": self.ok, "findings": [asdict(f) for f in self.findings],
                "not_shown": self.not_shown}


def _processing(row: Row, timeout: str) -> str:
    silent = "no heartbeat" if row[3] is None else f"last heartbeat {float(row[3]):.0f} s ago"
    return (f"is processing with no live attempt ({silent}, timeout {timeout}, "
            f"worker {row[2] or '?'}): the reaper requeues it; is a reaper running?")


# check name -> (named query, what the row means)
DATA_CHECKS: dict[str, tuple[str, Callable[[Row, str], str]]] = {
    "processing_without_live_attempt": ("doctor_processing_without_live_attempt", _processing),
    "retry_count_above_max": ("doctor_retry_count_above_max", lambda row, _: (
        f"has retry_count {row[2]} above max_retries {row[3]}")),
    "failed_without_reason": ("doctor_failed_without_reason", lambda row, _: (
        "is dead-lettered with no error message")),
    "failed_session_without_failed_job": ("doctor_failed_session_without_failed_job",
                                          lambda row, _: "is failed, but none of its jobs is"),
    "function_executable_by_public": ("doctor_public_functions", lambda row, _: (
        f"function {row[2]} is executable by PUBLIC: REVOKE EXECUTE ON FUNCTION {row[2]} "
        "FROM PUBLIC (or run `mobvibe-queue migrate`)")),
}


def diagnose(conn: psycopg.Connection[Any], heartbeat_timeout: float, limit: int) -> Report:
    """Run every check on `conn` (autocommit); at most `limit` findings shown per check."""
    report = Report()
    schema_present = _check_migrations(conn, report)
    if not schema_present:
        return report  # nothing else can be read
    params = {"timeout": timedelta(seconds=heartbeat_timeout), "limit": limit}
    for check, (name, describe) in DATA_CHECKS.items():
        try:
            rows = conn.execute(query(name), params).fetchall()
        except psycopg.Error as exc:
            report.findings.append(Finding(check, f"could not run: {db.first_line(exc)}"))
            continue
        for row in rows:
            report.findings.append(_finding(check, row, describe(row, format_duration(
                heartbeat_timeout))))
        if rows and rows[0][-1] > len(rows):
            report.not_shown[check] = int(rows[0][-1]) - len(rows)
    return report


def _finding(check: str, row: Row, what: str) -> Finding:
    job_id, session_id = (None if v is None else str(v) for v in row[:2])
    subject = f"job {job_id} (session {session_id})" if job_id else (
        f"session {session_id}" if session_id else "")
    return Finding(check, f"{subject} {what}".strip(), job_id, session_id)


def _check_migrations(conn: psycopg.Connection[Any], report: Report) -> bool:
    """Report changed and unapplied migrations; False when the queue's tables are missing."""
    applied = applied_migrations(conn)
    for version, entry in sorted(applied.items()):
        try:
            check_drift({version: entry})
        except MigrationError as exc:
            report.findings.append(Finding("migration_drift", str(exc)))
    for migration in pending_migrations(conn):
        report.findings.append(Finding(
            "migration_not_applied", f"migration {migration.version:04d}_{migration.name} is "
                                     "not applied: run `mobvibe-queue migrate`"))
    return bool(applied)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object: ok, findings, not_shown.")
@click.option("--heartbeat-timeout", type=Duration(), default="30s",
              envvar="MOBVIBE_HEARTBEAT_TIMEOUT", show_envvar=True,
              help="A processing job silent this long has no live attempt.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20,
              help="Findings shown per check.")
@click.pass_context
@friendly_errors
def doctor(ctx: click.Context, as_json: bool, heartbeat_timeout: float, limit: int) -> None:
    """Check the queue for what must never be; exit 1 if anything is found."""
    with db.connect(resolve_database(ctx.obj), application_name="mobvibe-doctor") as conn:
        report = diagnose(conn, heartbeat_timeout, limit)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        click.echo(_text(report))
    ctx.exit(0 if report.ok else 1)


def _text(report: Report) -> str:
    lines = []
    for i, finding in enumerate(report.findings):
        lines.append(f"{finding.check}: {finding.message}")
        following = report.findings[i + 1].check if i + 1 < len(report.findings) else None
        if following != finding.check and finding.check in report.not_shown:
            lines.append(f"{finding.check}: ... and {report.not_shown[finding.check]} more")
    if report.ok:
        lines.append(f"ok: {len(DATA_CHECKS) + 2} checks, nothing found")
    else:
        lines.append(f"{len(report.findings) + sum(report.not_shown.values())} finding(s)")
    return "\n".join(lines)
