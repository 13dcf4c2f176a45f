"""mobvibe-reaper: the daemon (default) or one sweep for a CronJob (--once)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click
import psycopg
from prometheus_client import CollectorRegistry, start_http_server

from mobvibe import logs, metrics
from mobvibe.cli.options import (
    CONTEXT,
    database_option,
    friendly_errors,
    logging_options,
    resolve_database,
)
from mobvibe.durations import Duration, format_duration
from mobvibe.errors import ConfigError, QueueError
from mobvibe.logs import event
from mobvibe.reaper import sweep
from mobvibe.reaper.daemon import run_daemon
from mobvibe.sql import db
from mobvibe.sql.migrate import pending_migrations

log = logging.getLogger("reaper")
HEARTBEAT_INTERVAL_DEFAULT = 5.0  # the supervisor's default
batch = click.IntRange(1, sweep.BATCH_MAX)


class SweepFailedError(QueueError):
    """The database answered, but a sweep statement failed."""


@click.command(context_settings=CONTEXT)
@click.version_option(package_name="mobvibe-supervisor")
@database_option
@click.option("--once", is_flag=True, help="Sweep once, print a JSON summary and exit (cron).")
@click.option(
    "--interval",
    type=Duration(),
    default=format_duration(sweep.INTERVAL_DEFAULT),
    envvar="MOBVIBE_REAPER_INTERVAL",
    show_envvar=True,
    help="Time between sweeps of the daemon (±10% jitter).",
)
@click.option(
    "--heartbeat-timeout",
    type=Duration(),
    default=format_duration(sweep.HEARTBEAT_TIMEOUT_DEFAULT),
    show_envvar=True,
    help="Requeue a processing job whose last heartbeat is older than this.",
)
@click.option(
    "--heartbeat-interval",
    type=Duration(),
    default=format_duration(HEARTBEAT_INTERVAL_DEFAULT),
    show_envvar=True,
    help="The workers' heartbeat interval, to check --heartbeat-timeout against.",
)
@click.option(
    "--batch-size",
    type=batch,
    default=sweep.BATCH_SIZE_DEFAULT,
    envvar="MOBVIBE_REAPER_BATCH_SIZE",
    show_envvar=True,
    help="Expired attempts requeued per statement.",
)
@click.option(
    "--retain-completed",
    type=Duration(zero="keep forever"),
    default=format_duration(sweep.RETAIN_COMPLETED_DEFAULT),
    show_envvar=True,
    help="Delete completed jobs older than this (0: keep forever).",
)
@click.option(
    "--retain-failed",
    type=Duration(zero="keep forever"),
    default=format_duration(sweep.RETAIN_FAILED_DEFAULT),
    show_envvar=True,
    help="Delete dead-lettered jobs older than this (0: keep forever).",
)
@click.option(
    "--prune-batch",
    type=batch,
    default=sweep.PRUNE_BATCH_DEFAULT,
    envvar="MOBVIBE_REAPER_PRUNE_BATCH",
    show_envvar=True,
    help="Finished jobs deleted per statement.",
)
@click.option(
    "--name",
    default=None,
    envvar="MOBVIBE_REAPER_NAME",
    show_envvar=True,
    help="This reaper's name in queue_reaper_runs (default: host:pid).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_envvar=True,
    envvar="MOBVIBE_REAPER_METRICS_PORT",
    help="Serve /metrics here (daemon; 0: off).",
)
@logging_options
@friendly_errors
def main(
    database_url: str | None,
    once: bool,
    interval: float,
    heartbeat_timeout: float,
    heartbeat_interval: float,
    batch_size: int,
    retain_completed: float,
    retain_failed: float,
    prune_batch: int,
    name: str | None,
    metrics_port: int,
    log_format: str,
    log_level: str,
) -> None:
    """Requeue jobs whose worker stopped heartbeating, and delete old finished jobs."""
    logs.setup(log_format, log_level)
    settings = sweep.ReaperSettings(
        heartbeat_timeout=heartbeat_timeout,
        interval=interval,
        batch_size=batch_size,
        retain_completed=retain_completed,
        retain_failed=retain_failed,
        prune_batch=prune_batch,
        **({"name": name} if name is not None else {}),
    ).validate(heartbeat_interval)
    if heartbeat_timeout < 3 * heartbeat_interval:
        event(
            log,
            logging.WARNING,
            "config_warning",
            "--heartbeat-timeout is less than 3x --heartbeat-interval: a worker that misses "
            "two heartbeats on a slow network may lose a job it is still running",
            heartbeat_timeout=heartbeat_timeout,
            heartbeat_interval=heartbeat_interval,
        )
    url = resolve_database(database_url)
    if once:
        click.echo(json.dumps(_sweep_once(url, settings)))
        return
    _check_schema(url)
    if metrics_port:
        _serve_metrics(metrics_port)
    sys.exit(run_daemon(url, settings))


def _sweep_once(url: str, settings: sweep.ReaperSettings) -> dict[str, object]:
    with db.connect(url, application_name="mobvibe-reaper") as conn:
        _require_migrated(conn)
        try:
            return sweep.run_once(conn, settings).as_dict()
        except psycopg.Error as exc:
            raise SweepFailedError(f"the sweep failed: {db.first_line(exc)}") from None


def _check_schema(url: str) -> None:
    """Refuse to start on an unmigrated database; an unreachable one is waited for."""
    try:
        with db.connect(url, application_name="mobvibe-reaper") as conn:
            _require_migrated(conn)
    except QueueError as exc:
        if isinstance(exc, ConfigError):
            raise
        # A pod may start before its database: the loop retries with backoff.
        event(log, logging.WARNING, "database_unavailable", str(exc))


def _require_migrated(conn: psycopg.Connection[Any]) -> None:
    if pending_migrations(conn):
        raise ConfigError("the database schema is not up to date: run `mobvibe-queue migrate`")


def _serve_metrics(port: int) -> None:
    registry = CollectorRegistry()
    registry.register(metrics.QueueMetrics())
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"--metrics-port {port}: {exc.strerror}; choose another port, or 0 "
            "to turn the endpoint off"
        ) from None
