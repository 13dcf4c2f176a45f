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
    Command,
    database_option,
    friendly_errors,
    logging_options,
    moved_to_the_database,
    resolve_database,
)
from mobvibe.durations import Duration, format_duration
from mobvibe.errors import ConfigError, MigrationError, QueueError
from mobvibe.logs import event
from mobvibe.reaper import sweep
from mobvibe.reaper.daemon import SWEEP_TIMEOUT_MS, run_daemon
from mobvibe.sql import db
from mobvibe.sql.migrate import schema_is_current

log = logging.getLogger("reaper")
batch = click.IntRange(1, sweep.BATCH_MAX)


class SweepFailedError(QueueError):
    """The database answered, but a sweep statement failed."""


@click.command(cls=Command, context_settings=CONTEXT)
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
@moved_to_the_database("--heartbeat-timeout", "--retain-completed", "--retain-failed")
@click.option(
    "--batch-size",
    type=batch,
    default=sweep.BATCH_SIZE_DEFAULT,
    envvar="MOBVIBE_REAPER_BATCH_SIZE",
    show_envvar=True,
    help="Expired attempts requeued per statement.",
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
    batch_size: int,
    prune_batch: int,
    name: str | None,
    metrics_port: int,
    log_format: str,
    log_level: str,
) -> None:
    """Requeue jobs whose worker stopped heartbeating, and delete old finished jobs.

    The heartbeat timeout and the retention are the database's: `mobvibe-queue config`.
    """
    logs.setup(log_format, log_level)
    settings = sweep.ReaperSettings(
        interval=interval,
        batch_size=batch_size,
        prune_batch=prune_batch,
        **({"name": name} if name is not None else {}),
    ).validate()
    url = resolve_database(database_url)
    if once:
        click.echo(json.dumps(_sweep_once(url, settings)))
        return
    _check_schema(url)
    if metrics_port:
        _serve_metrics(metrics_port)
    sys.exit(run_daemon(url, settings))


def _sweep_once(url: str, settings: sweep.ReaperSettings) -> dict[str, object]:
    # As the daemon's: a busy sweep calls queue_sweep more than five times, and a
    # statement prepared then would be lost behind a transaction pooler.
    with db.connect(url, application_name="mobvibe-reaper", pooled=True) as conn:
        _require_migrated(conn)
        try:
            return sweep.run_once(conn, settings, SWEEP_TIMEOUT_MS).as_dict()
        except psycopg.Error as exc:
            raise SweepFailedError(f"the sweep failed: {db.first_line(exc)}") from None


def _check_schema(url: str) -> None:
    """Refuse to start on an unmigrated database; an unreachable one is waited for."""
    try:
        with db.connect(url, application_name="mobvibe-reaper") as conn:
            _require_migrated(conn)
    except QueueError as exc:
        if isinstance(exc, ConfigError | MigrationError):
            raise
        # A pod may start before its database: the loop retries with backoff.
        event(log, logging.WARNING, "database_unavailable", str(exc))


def _require_migrated(conn: psycopg.Connection[Any]) -> None:
    if not schema_is_current(conn):
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
