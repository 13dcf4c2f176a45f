"""mobvibe-supervisor: the main job. Parses options into Settings, hands over to the Arbiter."""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any

import click

from mobvibe import logs
from mobvibe.cli.options import CONTEXT, database_option, friendly_errors, logging_options
from mobvibe.errors import ConfigError
from mobvibe.reaper.daemon import serve_forever
from mobvibe.reaper.sweep import ReaperSettings
from mobvibe.sql import db
from mobvibe.sql.migrate import migrate as run_migrations
from mobvibe.sql.migrate import pending_migrations
from mobvibe.supervisor import settings as defaults
from mobvibe.supervisor.arbiter import Arbiter
from mobvibe.supervisor.handlers import make_handler
from mobvibe.supervisor.httpserver import serve
from mobvibe.supervisor.settings import Settings
from mobvibe.supervisor.slots import Slots
from mobvibe.supervisor.worker import run_worker

seconds = click.FloatRange(min=0)


@click.command(context_settings=CONTEXT)
@click.version_option(package_name="mobvibe-supervisor")
@database_option
@click.option(
    "--workers",
    type=int,
    default=os.cpu_count() or 1,
    show_envvar=True,
    help="Worker processes to run (default: the number of CPUs).",
)
@click.option(
    "--exec",
    "exec_cmd",
    default=None,
    envvar="MOBVIBE_EXEC",
    show_envvar=True,
    metavar="CMD",
    help="Run CMD per job: prompt on stdin, JOB_ID, SESSION_ID, ATTEMPT in the "
    "environment; exit 0 completes, non-zero fails with the end of stderr.",
)
@click.option(
    "--handler",
    default=None,
    show_envvar=True,
    metavar="PKG.MOD:FUNC",
    help="Call FUNC(job) per job: return completes, raise fails. Neither option: the demo handler.",
)
@click.option(
    "--poll-interval",
    type=seconds,
    default=defaults.POLL_INTERVAL_DEFAULT,
    show_envvar=True,
    help="Seconds between polls when no notification arrives.",
)
@click.option(
    "--heartbeat-interval",
    type=seconds,
    default=defaults.HEARTBEAT_INTERVAL_DEFAULT,
    show_envvar=True,
    help="Seconds between heartbeats of a running job.",
)
@click.option(
    "--heartbeat-timeout",
    type=seconds,
    default=defaults.HEARTBEAT_TIMEOUT_DEFAULT,
    show_envvar=True,
    help="A job silent this long is requeued by the reaper; a "
    "worker that cannot renew its lease stops the job first.",
)
@click.option(
    "--job-timeout",
    type=seconds,
    default=defaults.JOB_TIMEOUT_DEFAULT,
    show_envvar=True,
    help="Hard deadline of one attempt, in seconds (0: none).",
)
@click.option(
    "--shutdown-timeout",
    type=seconds,
    default=defaults.SHUTDOWN_TIMEOUT_DEFAULT,
    show_envvar=True,
    help="On SIGTERM, seconds to let running jobs finish before giving them back to the queue.",
)
@click.option(
    "--max-jobs-per-worker",
    type=click.IntRange(min=0),
    default=0,
    show_envvar=True,
    help="Replace a worker after this many jobs (0: never).",
)
@click.option(
    "--metrics-port",
    type=int,
    default=defaults.METRICS_PORT_DEFAULT,
    show_envvar=True,
    help="Port of /metrics, /healthz, /readyz (0: off).",
)
@click.option(
    "--crash-loop-limit",
    type=click.IntRange(min=1),
    default=defaults.CRASH_LOOP_LIMIT_DEFAULT,
    show_envvar=True,
    help=f"Exit (code 3) after this many worker crashes within "
    f"{defaults.CRASH_LOOP_WINDOW_DEFAULT:g} s, so that the orchestrator "
    "restarts the pod.",
)
@click.option(
    "--reaper/--no-reaper",
    default=True,
    show_envvar=True,
    help="Run the reaper as a child (--no-reaper when a CronJob runs it).",
)
@click.option(
    "--reaper-interval",
    type=seconds,
    default=defaults.REAPER_INTERVAL_DEFAULT,
    show_envvar=True,
    help="Seconds between sweeps of the embedded reaper.",
)
@click.option(
    "--migrate",
    is_flag=True,
    default=False,
    show_envvar=True,
    help="Apply the schema migrations before starting.",
)
@click.option(
    "--drain",
    is_flag=True,
    default=False,
    show_envvar=True,
    help="Exit 0 once no job is pending or processing (batch runs, demos).",
)
@click.option(
    "--async-completions",
    is_flag=True,
    default=False,
    show_envvar=True,
    help="Commit completions without waiting for the disk (faster; a database crash "
    "can then run a just-completed job again).",
)
@click.option(
    "--status-notifications/--no-status-notifications",
    default=True,
    show_envvar=True,
    help="Send job_status_changed for the workers' transitions (--no-...: when "
    "nothing listens; about a third less database work per job).",
)
@logging_options
@friendly_errors
def main(
    database_url: str | None,
    workers: int,
    exec_cmd: str | None,
    handler: str | None,
    poll_interval: float,
    heartbeat_interval: float,
    heartbeat_timeout: float,
    job_timeout: float,
    shutdown_timeout: float,
    max_jobs_per_worker: int,
    metrics_port: int,
    crash_loop_limit: int,
    reaper: bool,
    reaper_interval: float,
    migrate: bool,
    drain: bool,
    async_completions: bool,
    status_notifications: bool,
    log_format: str,
    log_level: str,
) -> None:
    """Run the MobVibe job queue: N worker processes claiming and running coding jobs."""
    logs.setup(log_format, log_level)
    config = Settings(
        database_url="",
        workers=workers,
        exec_cmd=exec_cmd,
        handler=handler,
        poll_interval=poll_interval,
        heartbeat_interval=heartbeat_interval,
        heartbeat_timeout=heartbeat_timeout,
        job_timeout=job_timeout,
        shutdown_timeout=shutdown_timeout,
        max_jobs_per_worker=max_jobs_per_worker,
        metrics_port=metrics_port,
        crash_loop_limit=crash_loop_limit,
        reaper=reaper,
        reaper_interval=reaper_interval,
        drain=drain,
        durable_completions=not async_completions,
        status_notifications=status_notifications,
    ).validate()
    make_handler(exec_cmd, handler)  # a handler that does not import stops us here, not later
    _check_port(config)
    url = db.resolve_url(database_url)
    _check_database(url, migrate)
    sys.exit(_run(Settings(**{**config.__dict__, "database_url": url})))


def _check_port(config: Settings) -> None:
    if not config.metrics_port:
        return
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((config.metrics_host, config.metrics_port))
        except OSError as exc:
            raise ConfigError(
                f"--metrics-port {config.metrics_port}: {exc.strerror}; choose "
                "another port, or 0 to turn the endpoint off"
            ) from None


def _check_database(url: str, migrate: bool) -> None:
    with db.connect(url, application_name="mobvibe-supervisor") as conn:
        if migrate:
            run_migrations(conn)
        elif pending_migrations(conn):
            raise ConfigError(
                "the database schema is not up to date: run `mobvibe-queue "
                "migrate` (or start with --migrate)"
            )


def _run(config: Settings) -> int:
    def worker_main(index: int, slots: Slots) -> int:
        return run_worker(config, index, slots, make_handler(config.exec_cmd, config.handler))

    aux: dict[str, Any] = {}
    if config.metrics_port:
        aux["http"] = lambda slots: serve(config, slots)
    if config.reaper:
        aux["reaper"] = lambda slots: _reaper_main(config)
    return Arbiter(config, worker_main, aux).run()


def _reaper_main(config: Settings) -> int:
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    # The heartbeat timeout and the retention are the database's (queue_config).
    settings = ReaperSettings(interval=config.reaper_interval)
    serve_forever(config.database_url, settings, lambda: stop["now"])
    return 0
