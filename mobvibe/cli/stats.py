"""mobvibe-queue stats: the queue's counts, once, watched, or followed until it drains."""

from __future__ import annotations

import json
import sys
from datetime import datetime

import click

from mobvibe import clock
from mobvibe.cli.options import check_schema, friendly_errors, resolve_database
from mobvibe.client import JobQueue
from mobvibe.durations import Duration, format_duration
from mobvibe.sql.store import QueueStats

INTERVAL_DEFAULT = "2s"


def format_stats(stats: QueueStats, title: str = "Queue statistics:") -> str:
    """The plan's monitoring dashboard, as text."""
    age = stats.oldest_pending_age
    lines = [
        title,
        f"  Pending:    {stats.pending_count}",
        f"  Processing: {stats.processing_count}",
        f"  Completed:  {stats.completed_count}",
        f"  Failed:     {stats.failed_count}",
        f"  Cancelled:  {stats.cancelled_count}",
    ]
    if age is not None:
        lines.append(f"  Oldest pending: {age.total_seconds():.1f} s (since it came due)")
    if stats.waiting_retry_count:
        lines.append(
            f"  Retries waiting: {stats.waiting_retry_count} "
            f"(next at {stats.next_retry_at:%Y-%m-%d %H:%M:%S%z})"
        )
    if stats.delayed_count:
        lines.append(f"  Delayed: {stats.delayed_count} (scheduled for later, not yet due)")
    return "\n".join(lines)


def progress_line(stats: QueueStats, now: datetime) -> str:
    """One line of a run followed to its end: what is left, and when a waiting retry is due."""
    pending = f"pending {stats.pending_count}"
    if stats.waiting_retry_count and stats.next_retry_at is not None:
        due = max(0.0, (stats.next_retry_at - now).total_seconds())
        pending += (
            f" ({stats.waiting_retry_count} waiting for a retry, the next due in {due:.0f} s)"
        )
    return (
        f"{now.astimezone():%H:%M:%S} {pending}, processing {stats.processing_count}, "
        f"completed {stats.completed_count}, failed {stats.failed_count}, "
        f"cancelled {stats.cancelled_count}"
    )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option(
    "--watch",
    is_flag=True,
    help="Print again every --interval: redrawn in place on a terminal, a block per refresh "
    "otherwise; Ctrl-C stops.",
)
@click.option(
    "--until-drained",
    is_flag=True,
    help="Print one line every --interval and exit once nothing is pending or processing "
    "(beside a `mobvibe-supervisor --drain`, as `make run` does).",
)
@click.option(
    "--interval",
    type=Duration(minimum=0.1),
    default=INTERVAL_DEFAULT,
    help="Time between refreshes.",
)
@click.pass_context
@friendly_errors
def stats(
    ctx: click.Context, as_json: bool, watch: bool, until_drained: bool, interval: float
) -> None:
    """Print the queue statistics: pending, processing, completed, failed, oldest pending age."""
    if watch and until_drained:
        raise click.UsageError("give --watch or --until-drained, not both")
    with JobQueue(resolve_database(ctx.obj), max_size=1) as queue:
        with queue.connection() as conn:
            check_schema(conn)
        try:
            if until_drained:
                _follow(queue, interval)
            elif watch:
                _watch(queue, as_json, interval)
            else:
                current = queue.stats()
                click.echo(json.dumps(current.as_dict()) if as_json else format_stats(current))
        except KeyboardInterrupt:
            # Ctrl-C is how one stops watching: not an error.
            click.echo("", err=True)


def _watch(queue: JobQueue, as_json: bool, interval: float) -> None:
    redraw = sys.stdout.isatty() and not as_json
    while True:
        current, now = queue.stats(), clock.now()
        if as_json:
            click.echo(json.dumps({"time": now.isoformat(), **current.as_dict()}))
        else:
            title = (
                f"Queue statistics at {now.astimezone():%Y-%m-%d %H:%M:%S %Z} "
                f"(every {format_duration(interval)}; Ctrl-C stops):"
            )
            if redraw:
                click.clear()
            click.echo(format_stats(current, title) + ("" if redraw else "\n"))
        clock.sleep(interval)


def _follow(queue: JobQueue, interval: float) -> None:
    while True:
        current = queue.stats()
        click.echo(progress_line(current, clock.now()))
        if current.pending_count == current.processing_count == 0:
            return
        clock.sleep(interval)
