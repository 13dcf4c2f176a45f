"""mobvibe-queue: operations on the queue (migrate, enqueue, stats, watch, config)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
import psycopg

from mobvibe import logs
from mobvibe.cli.dlq import dlq
from mobvibe.cli.doctor import doctor
from mobvibe.cli.options import CONTEXT, database_option, friendly_errors, resolve_database
from mobvibe.client import JobQueue
from mobvibe.errors import ConfigError
from mobvibe.sql import db, store
from mobvibe.sql.jobs import MAX_RETRIES_DEFAULT, PRIORITY_MAX, PRIORITY_MIN, NewJob
from mobvibe.sql.migrate import migrate as run_migrations
from mobvibe.sql.notify import Listener
from mobvibe.sql.store import QueueStats


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="mobvibe-supervisor")
@database_option
@click.pass_context
def main(ctx: click.Context, database_url: str | None) -> None:
    """Operate the MobVibe job queue."""
    logs.setup("text", "warning")
    ctx.obj = database_url


def _url(ctx: click.Context) -> str:
    return resolve_database(ctx.obj)


@main.command()
@click.pass_context
@friendly_errors
def migrate(ctx: click.Context) -> None:
    """Apply the schema migrations (safe to run from several pods at once)."""
    with db.connect(_url(ctx), application_name="mobvibe-migrate") as conn:
        report = run_migrations(conn)
    if report.applied:
        click.echo(f"applied {len(report.applied)} migration(s): {', '.join(report.applied)}")
    else:
        click.echo(f"schema up to date ({report.already} migrations applied)")


@main.command()
@click.argument("prompts", nargs=-1)
@click.option("--session", "session_id", default=None, help="Session id (default: a new session).")
@click.option("--priority", type=int, default=0, help=f"{PRIORITY_MIN} (low) to {PRIORITY_MAX}.")
@click.option(
    "--max-retries",
    type=int,
    default=MAX_RETRIES_DEFAULT,
    help="Failed attempts before the job is dead-lettered.",
)
@click.option("--delay", type=float, default=0.0, help="Seconds before the job is due.")
@click.option(
    "--count",
    type=click.IntRange(1, 1_000_000),
    default=1,
    help="Enqueue each prompt this many times.",
)
@click.option("--stdin", "from_stdin", is_flag=True, help="Read one prompt per line from stdin.")
@click.pass_context
@friendly_errors
def enqueue(
    ctx: click.Context,
    prompts: tuple[str, ...],
    session_id: str | None,
    priority: int,
    max_retries: int,
    delay: float,
    count: int,
    from_stdin: bool,
) -> None:
    """Add jobs; prints one job id per line."""
    texts = list(prompts)
    if from_stdin:
        texts += [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise click.UsageError("give at least one PROMPT (or --stdin)")
    jobs = [NewJob(t, session_id, priority, max_retries, None, delay) for t in texts] * count
    for job in jobs[:1]:
        job.validated()  # one clear error before connecting
    with JobQueue(_url(ctx)) as queue:
        ids = [
            job_id
            for start in range(0, len(jobs), 5000)
            for job_id in queue.enqueue_many(jobs[start : start + 5000])
        ]
    click.echo("\n".join(str(i) for i in ids))


def format_stats(stats: QueueStats) -> str:
    """The plan's monitoring dashboard, as text."""
    age = stats.oldest_pending_age
    lines = [
        "Queue statistics:",
        f"  Pending:    {stats.pending_count}",
        f"  Processing: {stats.processing_count}",
        f"  Completed:  {stats.completed_count}",
        f"  Failed:     {stats.failed_count}",
    ]
    if age is not None:
        lines.append(f"  Oldest pending: {age.total_seconds():.1f} s")
    if stats.waiting_retry_count:
        lines.append(
            f"  Retries waiting: {stats.waiting_retry_count} "
            f"(next at {stats.next_run_at:%Y-%m-%d %H:%M:%S%z})"
        )
    return "\n".join(lines)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--watch", is_flag=True, help="Print again every --interval seconds.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=30.0)
@click.pass_context
@friendly_errors
def stats(ctx: click.Context, as_json: bool, watch: bool, interval: float) -> None:
    """Print the queue statistics: pending, processing, completed, failed, oldest pending age."""
    with JobQueue(_url(ctx), max_size=1) as queue:
        while True:
            current = queue.stats()
            click.echo(json.dumps(current.as_dict()) if as_json else format_stats(current))
            if not watch:
                return
            time.sleep(interval)


@main.command()
@click.option(
    "--channel",
    "channels",
    multiple=True,
    type=click.Choice(["new_job", "job_status_changed"]),
    default=("new_job", "job_status_changed"),
    help="Channels to follow.",
)
@click.pass_context
@friendly_errors
def watch(ctx: click.Context, channels: tuple[str, ...]) -> None:
    """Print the queue's notifications as they arrive, one JSON object per line."""
    with Listener(_url(ctx), channels) as listener:
        for note in listener.iterate():
            click.echo(json.dumps({"channel": note.channel, **note.payload}))


@main.command()
@click.option(
    "--backoff-base",
    type=click.FloatRange(min=0.001),
    default=None,
    help="Seconds before the first retry.",
)
@click.option(
    "--backoff-cap",
    type=click.FloatRange(min=0.001),
    default=None,
    help="Longest delay between retries, in seconds.",
)
@click.option(
    "--backoff-jitter",
    type=click.FloatRange(0, 1),
    default=None,
    help="Random stretch of each delay: up to this fraction.",
)
@click.pass_context
@friendly_errors
def config(
    ctx: click.Context,
    backoff_base: float | None,
    backoff_cap: float | None,
    backoff_jitter: float | None,
) -> None:
    """Show the retry schedule, or change it with the options."""
    with db.connect(_url(ctx)) as conn:
        if (backoff_base, backoff_cap, backoff_jitter) != (None, None, None):
            _set_config(conn, backoff_base, backoff_cap, backoff_jitter)
        current = store.queue_config(conn)
    click.echo(
        json.dumps(
            {
                "backoff_base_seconds": current.backoff_base,
                "backoff_cap_seconds": current.backoff_cap,
                "backoff_jitter": current.backoff_jitter,
            }
        )
    )


def _set_config(conn: Any, base: float | None, cap: float | None, jitter: float | None) -> None:
    try:
        store.set_queue_config(conn, base, cap, jitter)
    except psycopg.errors.CheckViolation:
        raise ConfigError("backoff cap must be at least the backoff base") from None


# The dead letters and the doctor live in modules of their own.
main.add_command(dlq)
main.add_command(doctor)
