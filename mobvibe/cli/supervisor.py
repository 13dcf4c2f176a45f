"""mobvibe-supervisor: the main job. Parses options into Settings, hands over to the Arbiter."""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import click

from mobvibe import logs
from mobvibe.cli.options import CONTEXT, Command, database_option, friendly_errors, logging_options
from mobvibe.durations import Duration, format_duration
from mobvibe.errors import ConfigError
from mobvibe.logs import event
from mobvibe.reaper.sweep import ReaperSettings, run_once
from mobvibe.sizes import ByteSize
from mobvibe.sql import db, store
from mobvibe.sql.migrate import migrate as run_migrations
from mobvibe.sql.migrate import schema_is_current
from mobvibe.supervisor import contain, sandbox, workspaces
from mobvibe.supervisor import settings as defaults
from mobvibe.supervisor.arbiter import Arbiter, Shared
from mobvibe.supervisor.children import ChildKind
from mobvibe.supervisor.command import check_command, check_exec_env
from mobvibe.supervisor.handlers import DEMO, make_handler
from mobvibe.supervisor.httpserver import serve
from mobvibe.supervisor.hub import run_hub
from mobvibe.supervisor.sandbox import Sandbox
from mobvibe.supervisor.settings import Settings
from mobvibe.supervisor.worker import run_worker

log = logging.getLogger("mobvibe.supervisor")
# Durations: seconds, or a number with a unit (500ms, 30s, 5m), as every command takes them.
interval = Duration()
WORKSPACES_BYTES_MAX = 1024**5


@click.command(cls=Command, context_settings=CONTEXT)
@click.version_option(package_name="mobvibe-supervisor")
@database_option
@click.option(
    "--listen-url",
    default=None,
    show_envvar=True,
    metavar="URL",
    help="PostgreSQL itself, for the pod's one direct connection (LISTEN, heartbeats, the "
    "reaper), when DATABASE_URL goes through PgBouncer in transaction mode; the workers then "
    "prepare no statement and set nothing on their sessions. Unset: DATABASE_URL for all.",
)
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
    help="Run CMD per job (with sh -c, in a sandbox): prompt on stdin, JOB_ID, SESSION_ID, "
    "ATTEMPT in the environment; each line it writes to descriptor 3 "
    "(MOBVIBE_PROGRESS_FD=3; a JSON object, or text) is a progress event; the end of stdout "
    "is the job's output; exit 0 completes, non-zero fails with the end of stderr.",
)
@click.option(
    "--exec-env",
    "exec_env",
    multiple=True,
    metavar="NAME",
    help="Pass environment variable NAME to the --exec command (repeatable); it otherwise "
    "gets PATH, HOME, LANG and the like and MOBVIBE_PROGRESS_FD, never DATABASE_URL, PG* or "
    "the supervisor's MOBVIBE_* settings.",
)
@click.option(
    "--sandbox-network",
    type=click.Choice(["on", "off"]),
    default="on",
    show_envvar=True,
    help="The network of the --exec command's sandbox: on, the host's (agents fetch "
    "packages; it reaches what the host reaches, 127.0.0.1 included), or off: a loopback "
    "of its own and nothing else.",
)
@click.option(
    "--unsandboxed",
    is_flag=True,
    default=False,
    show_envvar=True,
    help="Run --exec commands without a sandbox, where none can be made: the job can then "
    "read the supervisor's database credentials and signal its processes. Never for "
    "untrusted code.",
)
@click.option(
    "--workspaces",
    default=None,
    show_envvar=True,
    metavar="DIR",
    help="Keep each session's workspace on this pod: an attempt gets MOBVIBE_WORKSPACE="
    "DIR/<session id> (made 0700 if missing, writable in its sandbox, kept for the "
    "session's next prompt; a Python handler gets job.workspace). Unset: none.",
)
@click.option(
    "--workspaces-max-bytes",
    type=ByteSize(0, WORKSPACES_BYTES_MAX),
    default="0",
    show_envvar=True,
    help="Evict the least recently used workspaces (never one in use) beyond this size "
    "(bytes, or 512MiB, 20GiB; 0: no limit).",
)
@click.option(
    "--workspaces-max-count",
    type=click.IntRange(min=0),
    default=0,
    show_envvar=True,
    help="Evict the least recently used workspaces (never one in use) beyond this many "
    "(0: no limit).",
)
@click.option(
    "--pod-id",
    default=socket.gethostname,
    show_default="the host name",
    show_envvar=True,
    metavar="ID",
    help="This supervisor's id, part of each worker id: keep it across restarts for as long "
    "as the workspaces are kept (in Kubernetes, the pod's name).",
)
@click.option(
    "--handler",
    default=None,
    show_envvar=True,
    metavar="PKG.MOD:FUNC",
    help="Call FUNC(job) per job: return completes, raise fails (imported with the current "
    "directory on the path).",
)
@click.option(
    "--demo",
    is_flag=True,
    default=False,
    help="Run the demo handler (make run): it completes jobs without doing their work.",
)
@click.option(
    "--poll-interval",
    type=interval,
    default=format_duration(defaults.POLL_INTERVAL_DEFAULT),
    show_envvar=True,
    help="Time between polls when no notification arrives.",
)
@click.option(
    "--heartbeat-interval",
    type=interval,
    default=format_duration(defaults.HEARTBEAT_INTERVAL_DEFAULT),
    show_envvar=True,
    help="Time between lease renewals of a running job; at most a third of the heartbeat "
    "timeout set in the database (mobvibe-queue config --heartbeat-timeout).",
)
@click.option(
    "--job-timeout",
    type=Duration(zero="no deadline"),
    default=format_duration(defaults.JOB_TIMEOUT_DEFAULT),
    show_envvar=True,
    help="Hard deadline of one attempt.",
)
@click.option(
    "--shutdown-timeout",
    type=Duration(zero="give running jobs back at once"),
    default=format_duration(defaults.SHUTDOWN_TIMEOUT_DEFAULT),
    show_envvar=True,
    help="On SIGTERM, time to let running jobs finish before giving them back to the queue.",
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
    type=click.IntRange(0, 65535),
    default=defaults.METRICS_PORT_DEFAULT,
    show_envvar=True,
    help="Port of /metrics, /healthz, /readyz (0: off).",
)
@click.option(
    "--metrics-host",
    default=defaults.METRICS_HOST_DEFAULT,
    show_envvar=True,
    help="Address the HTTP endpoint listens on (0.0.0.0 in a container, for the scraper "
    "and the probes).",
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
    help="Run the embedded reaper; of all pods, the one that leads sweeps "
    "(--no-reaper when a CronJob runs it).",
)
@click.option(
    "--reaper-interval",
    type=interval,
    default=format_duration(defaults.REAPER_INTERVAL_DEFAULT),
    show_envvar=True,
    help="Time between sweeps of the embedded reaper (and between tries to lead).",
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
    sandbox_network: str,
    unsandboxed: bool,
    demo: bool,
    migrate: bool,
    async_completions: bool,
    log_format: str,
    log_level: str,
    **options: Any,
) -> None:
    """Run the MobVibe job queue: N worker processes claiming and running coding jobs."""
    logs.setup(log_format, log_level)
    # Before anything holds a credential: no core dump, no /proc of ours for the job.
    contain.become_undumpable()
    config = _settings(options, demo=demo, async_completions=async_completions)
    # A handler that does not import, a command that is not there, or a sandbox that
    # cannot be made stops us here with one line, not after every job has burnt its
    # attempts.
    make_handler(config.exec_cmd, config.handler, config.exec_env)
    jail = _sandbox(config, sandbox_network == "on", unsandboxed)
    _check_port(config)
    url = db.resolve_url(database_url)
    _check_sockets_hidden(jail, url, config.listen_url)
    timeout = _check_database(url, migrate)
    config = replace(
        config,
        database_url=url,
        heartbeat_timeout=timeout,
        sandbox=jail,
        workspaces=_workspaces(config),
    )
    _say_where_jobs_run(config.validate())
    sys.exit(_run(config))


def _settings(options: dict[str, Any], *, demo: bool, async_completions: bool) -> Settings:
    """The settings the options give (every other option is named as its setting), checked
    before the database is asked anything; its URL and heartbeat timeout come later."""
    listen_url = options["listen_url"]
    if demo and (options["exec_cmd"] or options["handler"]):
        raise click.UsageError("give one of --exec, --handler and --demo")
    if listen_url is not None and (async_completions or not options["status_notifications"]):
        raise ConfigError(
            "--async-completions and --no-status-notifications are session settings, which a "
            "transaction pooler does not keep: set them on the supervisors' login role instead "
            "(ALTER ROLE name SET synchronous_commit = off, or SET mobvibe.status_notify = off)"
        )
    given = {
        **options,
        "listen_url": None if listen_url is None else db.validate_url(listen_url),
        "exec_env": check_exec_env(options["exec_env"]),
        "handler": DEMO if demo else options["handler"],
    }
    return Settings(
        database_url="",
        heartbeat_timeout=math.inf,  # the database's, read at start
        durable_completions=not async_completions,
        **given,
    ).validate()


def _workspaces(config: Settings) -> str | None:
    """The workspaces' directory, checked and made (said in the log); None without
    --workspaces."""
    if config.workspaces is None:
        return None
    root = workspaces.prepare_root(config.workspaces)
    event(
        log,
        logging.INFO,
        "workspaces_ready",
        f"each session's workspace is kept in {root}",
        path=root,
        pod_id=config.pod_id,
        max_bytes=config.workspaces_max_bytes,
        max_count=config.workspaces_max_count,
    )
    return root


def _sandbox(config: Settings, network: bool, unsandboxed: bool) -> Sandbox | None:
    """Where --exec commands will run, checked here once; None without one."""
    if not config.exec_cmd:
        return None
    program = check_command(config.exec_cmd)
    if unsandboxed:
        return None
    if program is not None and not os.path.isabs(program):
        raise ConfigError(
            f"--exec: give the full path of {program!r}: a sandboxed job starts in a home "
            "directory of its own"
        )
    return sandbox.prepare(network, program)


def _say_where_jobs_run(config: Settings) -> None:
    """One line at start: in a sandbox (which), or without one and why."""
    jail = config.sandbox
    if jail is not None:
        message = f"--exec commands run in a sandbox: {jail.describe()}"
        fields = {"proc": "fresh" if jail.fresh_proc else "empty", "network": jail.network}
        event(log, logging.INFO, "sandbox_ready", message, bwrap=jail.bwrap, **fields)
    elif config.exec_cmd:
        message = (
            "--unsandboxed: --exec commands run without a sandbox; a job can read the "
            "supervisor's credentials and signal its processes"
        )
        event(log, logging.WARNING, "sandbox_off", message)
    else:
        message = (
            "jobs run in the worker processes by a Python handler, without a sandbox "
            "(the sandbox is for --exec commands)"
        )
        event(log, logging.INFO, "sandbox_off", message, handler=config.handler)


def _check_sockets_hidden(jail: Sandbox | None, url: str, listen_url: str | None) -> None:
    """ConfigError if a sandboxed job could see a directory holding the database's socket."""
    if jail is None:
        return
    hidden = [db.socket_dir(u) for u in (url, listen_url) if u]
    for directory in [d for d in hidden if d] + [str(db.embedded_dir())]:
        if jail.shows(directory):
            raise ConfigError(
                f"the database's socket directory {directory} would be visible to the "
                "sandboxed jobs (it lies in /usr, /etc or the --exec program's path): "
                "move it elsewhere"
            )


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


def _check_database(url: str, migrate: bool) -> float:
    """Migrate if asked, check the schema, return the heartbeat timeout the database sets."""
    with db.connect(url, application_name="mobvibe-supervisor") as conn:
        if migrate:
            run_migrations(conn)
        if not schema_is_current(conn):
            raise ConfigError(
                "the database schema is not up to date: run `mobvibe-queue "
                "migrate` (or start with --migrate)"
            )
        return store.queue_settings(conn).heartbeat_timeout.total_seconds()


def _run(config: Settings) -> int:
    def worker_main(index: int, shared: Shared) -> int:
        handler = make_handler(config.exec_cmd, config.handler, config.exec_env, config.sandbox)
        return run_worker(config, index, shared.slots, shared.wakeups, handler)

    def hub_main(shared: Shared) -> int:
        # The embedded reaper sweeps on the hub's connection: no connection of its own.
        # A sweep may wait for a session's lock; the hub renews the pod's leases on the
        # same connection, so a sweep's statement is cancelled after half a heartbeat
        # interval, and the hub renews before a sweep when a renewal would fall due
        # during it: no renewal is late, and one passed over is all a lease ever misses.
        reaper = ReaperSettings(interval=config.reaper_interval) if config.reaper else None
        bound_ms = max(1, int(config.heartbeat_interval * 500))
        sweep = None if reaper is None else (lambda conn: run_once(conn, reaper, bound_ms))
        return run_hub(config, shared.slots, shared.wakeups, sweep)

    aux: dict[ChildKind, Callable[[Shared], int]] = {ChildKind.HUB: hub_main}
    if config.metrics_port:
        aux[ChildKind.HTTP] = lambda shared: serve(config, shared.slots)
    return Arbiter(config, worker_main, aux).run()
