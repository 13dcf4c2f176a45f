"""mobvibe-queue dlq: list, requeue and purge the dead letters (jobs in status failed)."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import timedelta
from typing import Any

import click
import psycopg

from mobvibe import logs
from mobvibe.cli import ids
from mobvibe.cli.options import choice, connect, friendly_errors
from mobvibe.columns import head
from mobvibe.durations import Duration, format_duration
from mobvibe.logs import event
from mobvibe.sql import store
from mobvibe.sql.store import DeadLetter
from mobvibe.terminal import visible

log = logging.getLogger(__name__)
DELETE_BATCH = 1000  # jobs per statement: short statements, short locks
ERROR_WIDTH = 60


@click.group()
@click.option(
    "--log-format",
    type=choice(logs.LogFormat),
    default=logs.LogFormat.TEXT.value,
    show_envvar=True,
    help="Format of the log of each action, on stderr.",
)
@click.option(
    "--log-level",
    type=click.Choice(logs.LOG_LEVELS, case_sensitive=False),
    default="info",
    show_envvar=True,
    help="Lowest level logged.",
)
def dlq(log_format: str, log_level: str) -> None:
    """The dead letters: jobs that failed every attempt."""
    logs.setup(log_format, log_level)


def _connect(ctx: click.Context) -> psycopg.Connection[Any]:
    return connect(ctx.obj)


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, help="Newest jobs shown.")
@click.pass_context
@friendly_errors
def list_(ctx: click.Context, as_json: bool, limit: int) -> None:
    """List the dead-lettered jobs, newest first."""
    with _connect(ctx) as conn:
        jobs = store.list_failed(conn, limit)
        total = store.stats(conn).failed_count
    if as_json:
        for job in jobs:
            click.echo(json.dumps(job.as_dict(), default=_jsonable))
    else:
        click.echo(_table(jobs))
    if total > len(jobs) and not as_json:  # a hint for the person, not a row for a pipe
        click.echo(f"showing the newest {len(jobs)} of {total}: --limit shows more", err=True)


def _jsonable(value: object) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _table(jobs: list[DeadLetter]) -> str:
    if not jobs:
        return "no dead-lettered jobs"
    lines = [f"{'JOB ID':<36}  {'SESSION ID':<36}  {'FAILED AT':<19}  TRIES  {'REASON':<17}  ERROR"]
    for job in jobs:
        error = visible(head(job.error_message, ERROR_WIDTH))
        failed_at = f"{job.completed_at:%Y-%m-%d %H:%M:%S}" if job.completed_at else "-"
        lines.append(
            f"{job.id}  {job.session_id}  {failed_at:<19}  "
            f"{job.retry_count:>2}/{job.max_retries:<2}  "
            f"{visible(job.end_reason or '-'):<17}  {error}"
        )
    return "\n".join(lines)


@dlq.command()
@click.argument("job_ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "every", is_flag=True, help="Requeue every dead-lettered job.")
@click.pass_context
@friendly_errors
def requeue(ctx: click.Context, job_ids: tuple[str, ...], every: bool) -> None:
    """Put dead-lettered jobs back to pending, due now, with their retry count reset."""
    if bool(job_ids) == every:
        raise click.UsageError("give the job IDs to requeue, or --all")
    given = [ids.job_id(job_id) for job_id in job_ids]  # all checked before any is touched
    with _connect(ctx) as conn:
        wanted = [ids.resolve(conn, job_id) for job_id in given]
        if every:
            wanted = store.failed_ids(conn)
        problems = [problem for job_id in wanted if (problem := _requeue_one(conn, job_id))]
    for problem in problems:
        click.echo(f"Error: {problem}", err=True)
    click.echo(f"requeued {len(wanted) - len(problems)} job(s)")
    if problems:
        ctx.exit(1)


def _requeue_one(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> str | None:
    """Requeue one job; None on success, else why not."""
    job = store.get_job(conn, job_id)
    if job is None:
        return f"job {job_id} not found"
    if not store.requeue_failed(conn, job_id):
        return f"job {job_id} is not dead-lettered (status {job.status}): nothing to requeue"
    # The next attempt overwrites error_message: this line is the error's history.
    event(
        log,
        logging.INFO,
        "dlq_requeued",
        "dead-lettered job requeued",
        job_id=str(job_id),
        session_id=str(job.session_id),
        last_error=job.error_message,
        end_reason=job.end_reason,
        retry_count=job.retry_count,
        failed_at=_jsonable(job.completed_at),
    )
    return None


@dlq.command()
@click.option(
    "--older-than",
    type=Duration(zero="every dead-lettered job"),
    required=True,
    help="Delete dead-lettered jobs that failed longer ago than this (30d, 12h, 0).",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
@friendly_errors
def purge(ctx: click.Context, older_than: float, yes: bool) -> None:
    """Delete dead-lettered jobs older than --older-than; prints how many (an operator's act)."""
    age, older = format_duration(older_than), timedelta(seconds=older_than)
    with _connect(ctx) as conn:
        found = len(store.failed_ids(conn, older))
        if found and not yes:
            click.confirm(
                f"Delete {found} dead-lettered job(s) older than {age}?", abort=True, err=True
            )
        deleted = _purge(conn, older) if found else 0
    event(
        log,
        logging.INFO,
        "dlq_purged",
        f"deleted {deleted} dead-lettered job(s)",
        deleted=deleted,
        older_than_s=older_than,
    )
    click.echo(f"deleted {deleted} dead-lettered job(s) older than {age}")


def _purge(conn: psycopg.Connection[Any], older: timedelta) -> int:
    """queue_purge_failed, a batch per statement: short statements, short locks."""
    total = 0
    while True:
        deleted = store.purge_failed(conn, older, DELETE_BATCH)
        total += deleted
        if deleted < DELETE_BATCH:
            return total
