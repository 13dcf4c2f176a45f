"""mobvibe-queue: operations on the queue (migrate, enqueue, watch, config, psql); the other
commands live in modules of their own."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import uuid
from datetime import timedelta
from typing import Any

import click
import psycopg

from mobvibe import logs
from mobvibe.cli import ids
from mobvibe.cli.cancel import cancel
from mobvibe.cli.dlq import dlq
from mobvibe.cli.doctor import doctor
from mobvibe.cli.jobs import jobs, workers
from mobvibe.cli.options import (
    CONTEXT,
    Group,
    check_schema,
    choice,
    connect,
    database_option,
    echo_json,
    friendly_errors,
    resolve_database,
)
from mobvibe.cli.sessions import sessions
from mobvibe.cli.stats import stats
from mobvibe.cli.users import USER_LIMIT_MAX, USER_LIMIT_MIN, users
from mobvibe.cli.web import web
from mobvibe.client import JobQueue
from mobvibe.durations import Duration, format_duration
from mobvibe.errors import ConfigError, NotFoundError
from mobvibe.sizes import ByteSize
from mobvibe.sql import db, store
from mobvibe.sql.jobs import MAX_RETRIES_DEFAULT, PRIORITY_MAX, PRIORITY_MIN, NewJob
from mobvibe.sql.migrate import LOCK_WAIT_DEFAULT, MigrationReport
from mobvibe.sql.migrate import migrate as run_migrations
from mobvibe.sql.notify import Listener
from mobvibe.sql.store import ConfigChange, Enqueued, QueueSettings
from mobvibe.terminal import visible
from mobvibe.vocabulary import Channel

DAY = 86400.0


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(package_name="mobvibe-supervisor")
@database_option
@click.pass_context
def main(ctx: click.Context, database_url: str | None) -> None:
    """Operate the MobVibe job queue."""
    logs.setup(logs.LogFormat.TEXT, "warning")
    ctx.obj = database_url


def _url(ctx: click.Context) -> str:
    return resolve_database(ctx.obj)


@main.command()
@click.option(
    "--lock-wait",
    type=Duration(minimum=0.001, maximum=DAY),
    default=format_duration(LOCK_WAIT_DEFAULT),
    help="How long to wait for another run's lock, then give up naming its session.",
)
@click.pass_context
@friendly_errors
def migrate(ctx: click.Context, lock_wait: float) -> None:
    """Apply the schema migrations (safe to run from several pods at once)."""
    with db.connect(_url(ctx), application_name="mobvibe-migrate") as conn:
        report = run_migrations(conn, lock_wait)
    for line in _migrate_lines(report):
        click.echo(line)
    if not ctx.obj:
        click.echo(
            f"the embedded PostgreSQL keeps its data in {db.embedded_dir()}; "
            "`mobvibe-queue psql` opens psql on it (set DATABASE_URL for another server)"
        )


def _migrate_lines(report: MigrationReport) -> list[str]:
    """What `migrate` did: a line for the numbered migrations, one for the repeatable files."""
    lines = []
    if report.applied:
        lines.append(f"applied {len(report.applied)} migration(s): {', '.join(report.applied)}")
    if len(report.files) == report.files_shipped:
        lines.append(
            f"applied all {report.files_shipped} repeatable files "
            "(sql/functions, sql/privileges.sql, sql/row_security.sql)"
        )
    elif report.files:
        lines.append(f"applied {len(report.files)} repeatable file(s): {', '.join(report.files)}")
    if not lines:
        lines.append(
            f"schema up to date ({report.already} migrations, "
            f"{report.files_shipped} repeatable files)"
        )
    return lines


@main.command()
@click.argument("prompts", nargs=-1)
@click.option(
    "--session",
    "session_id",
    default=None,
    help="Session id, or its start (default: a new session per job; `sessions create` makes one).",
)
@click.option("--priority", type=int, default=0, help=f"{PRIORITY_MIN} (low) to {PRIORITY_MAX}.")
@click.option(
    "--max-retries",
    type=int,
    default=MAX_RETRIES_DEFAULT,
    help="Failed attempts before the job is dead-lettered.",
)
@click.option(
    "--delay",
    type=Duration(zero="due now"),
    default="0",
    help="How long before the job is due (seconds, or 500ms, 30s, 5m, 2h, 7d).",
)
@click.option(
    "--count",
    type=click.IntRange(1, 1_000_000),
    default=1,
    help="Enqueue each prompt this many times.",
)
@click.option("--stdin", "from_stdin", is_flag=True, help="Read one prompt per line from stdin.")
@click.option(
    "--idempotency-key",
    default=None,
    help="A repeated key in the same session adds nothing and prints the first job's id "
    "(one prompt only).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per job: ids, added, prompt_ignored."
)
@click.pass_context
@friendly_errors
def enqueue(
    ctx: click.Context,
    /,
    prompts: tuple[str, ...],
    session_id: str | None,
    from_stdin: bool,
    as_json: bool,
    **settings: Any,
) -> None:
    """Add jobs; prints a line per job: its id and its session's id."""
    texts = _prompts(prompts, from_stdin)
    key, count = settings.pop("idempotency_key"), settings.pop("count")
    _check_key(key, texts, count, session_id)
    NewJob(texts[0], idempotency_key=key, **settings).validated()  # an error before connecting
    given = ids.session_id(session_id)
    with JobQueue(_url(ctx)) as queue:
        with queue.connection() as conn:
            check_schema(conn)
            session = None if given is None else _existing_session(conn, given)
        jobs = [NewJob(text, session, idempotency_key=key, **settings) for text in texts] * count
        done = [
            result
            for start in range(0, len(jobs), 5000)
            for result in queue.submit_many(jobs[start : start + 5000])
        ]
    _report_enqueued(done, key, as_json)


def _prompts(prompts: tuple[str, ...], from_stdin: bool) -> list[str]:
    """The prompts given, then one per non-blank line of standard input."""
    texts = list(prompts)
    if from_stdin:
        lines = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        if not lines and not texts:
            raise click.UsageError("--stdin: standard input held no prompt (only blank lines)")
        texts += lines
    if not texts:
        raise click.UsageError("give at least one PROMPT (or --stdin)")
    return texts


def _check_key(key: str | None, texts: list[str], count: int, session_id: str | None) -> None:
    if key is not None and (len(texts) > 1 or count > 1):
        raise click.UsageError("--idempotency-key names one job: give one PROMPT and no --count")
    if key is not None and session_id is None:
        raise click.UsageError(
            "--idempotency-key needs --session: a key is unique within its session"
        )


def _existing_session(conn: psycopg.Connection[Any], given: ids.Wanted) -> uuid.UUID:
    """The session --session names; a missing one is an error that says how to make it."""
    session = ids.resolve(conn, given)
    if not store.session_exists(conn, session):
        raise NotFoundError(
            f"session {session} does not exist: `mobvibe-queue sessions create {session}` "
            "makes it (enqueue without --session starts a new session)"
        )
    return session


def _report_enqueued(done: list[Enqueued], key: str | None, as_json: bool) -> None:
    """A line per job (its id and session's, or a JSON object); a word on stderr when a
    repeated idempotency key kept the first job's prompt."""
    if as_json:
        for result in done:
            echo_json(result.as_dict())
    else:
        click.echo("\n".join(f"{result.job_id} {result.session_id}" for result in done))
    for result in done:
        if result.prompt_ignored:
            click.echo(
                f"the session's job {result.job_id} has idempotency key {visible(repr(key))} "
                "with another prompt: this prompt was ignored (nothing was added)",
                err=True,
            )


@main.command()
@click.option(
    "--channel",
    "channels",
    multiple=True,
    type=choice(Channel),
    default=[channel.value for channel in Channel],
    help="Channels to follow: new jobs, status changes, progress events, cancel requests.",
)
@click.pass_context
@friendly_errors
def watch(ctx: click.Context, channels: tuple[str, ...]) -> None:
    """Print the queue's notifications as they arrive, one JSON object per line; Ctrl-C
    stops."""
    url = _url(ctx)
    # One line now for a database that is unreachable or not migrated, rather than a
    # listener that waits for it forever.
    connect(url).close()
    try:
        with Listener(url, channels) as listener:
            for note in listener.iterate():
                click.echo(json.dumps({"channel": note.channel, **note.payload}))
    except KeyboardInterrupt:
        click.echo("", err=True)  # Ctrl-C is how one stops watching: not an error


# The ranges of `config`: what the database accepts, and sane. An interval
# holds about 292,000 years, so larger values are refused here, in one line,
# rather than overflow in the database.
BACKOFF_MIN, BACKOFF_MAX = 0.001, 30 * DAY
HEARTBEAT_TIMEOUT_MIN, HEARTBEAT_TIMEOUT_MAX = 1.0, DAY  # CHECK >= 1 s in the database
RETAIN_MIN, RETAIN_MAX = 1.0, 3650 * DAY
# The caps' ranges, the database's CHECKs (migration 0010).
EVENTS_MAX = 1_000_000
EVENT_BYTES_MIN, EVENT_BYTES_MAX = 64 * 1024, 1024**3
RELEASES_MAX = 1000


class UserLimit(click.ParamType):  # type: ignore[type-arg]  # generic in newer click
    """A user's limit, 1 to 1000, or none (read as 0: no limit)."""

    name = "N|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        if str(value).strip().lower() == "none":
            return 0
        try:
            n = int(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a number of jobs (1 to 1000) or none", param, ctx)
        if not USER_LIMIT_MIN <= n <= USER_LIMIT_MAX:
            self.fail(f"{n} is not in the range {USER_LIMIT_MIN} to {USER_LIMIT_MAX}", param, ctx)
        return n


def _finite_jitter(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):  # FloatRange lets NaN through
        raise click.BadParameter(f"{value} is not in the range 0<=x<=1.", ctx, param)
    return value


@main.command()
@click.option(
    "--backoff-base",
    type=Duration(minimum=BACKOFF_MIN, maximum=BACKOFF_MAX),
    default=None,
    help="Delay before the first retry (seconds, or 500ms, 30s, 5m ...).",
)
@click.option(
    "--backoff-cap",
    type=Duration(minimum=BACKOFF_MIN, maximum=BACKOFF_MAX),
    default=None,
    help="Longest delay between retries.",
)
@click.option(
    "--backoff-jitter",
    type=click.FloatRange(0, 1),
    callback=_finite_jitter,
    default=None,
    help="Random stretch of each delay: up to this fraction.",
)
@click.option(
    "--heartbeat-timeout",
    type=Duration(minimum=HEARTBEAT_TIMEOUT_MIN, maximum=HEARTBEAT_TIMEOUT_MAX),
    default=None,
    help="The reaper requeues a processing job silent for longer than this; keep it at 3x the "
    "workers' --heartbeat-interval or more (each supervisor reads it at start).",
)
@click.option(
    "--retain-completed",
    type=Duration(zero="keep forever", minimum=RETAIN_MIN, maximum=RETAIN_MAX),
    default=None,
    help="The reaper deletes completed jobs older than this (0: keep forever).",
)
@click.option(
    "--retain-failed",
    type=Duration(zero="keep forever", minimum=RETAIN_MIN, maximum=RETAIN_MAX),
    default=None,
    help="The reaper deletes dead-lettered jobs older than this (0: keep forever).",
)
@click.option(
    "--max-events-per-attempt",
    type=click.IntRange(1, EVENTS_MAX),
    default=None,
    help="Progress events an attempt keeps; the database drops (and counts) the rest.",
)
@click.option(
    "--max-event-bytes-per-attempt",
    type=ByteSize(EVENT_BYTES_MIN, EVENT_BYTES_MAX),
    default=None,
    help="Bytes of progress events an attempt keeps (bytes, or 64KiB, 10MiB, 1GiB).",
)
@click.option(
    "--max-releases-per-job",
    type=click.IntRange(1, RELEASES_MAX),
    default=None,
    help="Releases (attempts given back, not failed) a job may have; the next one counts "
    "as a failed attempt.",
)
@click.option(
    "--user-max-concurrency",
    type=UserLimit(),
    default=None,
    metavar="N|none",
    help="Jobs of one user that may run at once, for users without a limit of their own "
    "(`users limit`); none: no limit.",
)
@click.pass_context
@friendly_errors
def config(ctx: click.Context, /, **settings: Any) -> None:
    """Show the queue's settings (JSON, seconds, bytes), or change those given (an
    operator's act)."""
    change = ConfigChange(**settings)
    backoff_base, backoff_cap = change.backoff_base, change.backoff_cap
    if backoff_base is not None and backoff_cap is not None and backoff_cap < backoff_base:
        raise ConfigError(
            f"the backoff cap (--backoff-cap {format_duration(backoff_cap)}) must be at least "
            f"the backoff base (--backoff-base {format_duration(backoff_base)})"
        )
    with connect(ctx.obj) as conn:
        if not change.empty:
            _set_config(conn, change)
        current = store.queue_settings(conn)
    click.echo(json.dumps(_config_json(current)))


def _config_json(current: QueueSettings) -> dict[str, float | None]:
    def seconds(age: timedelta | None) -> float | None:
        return None if age is None else age.total_seconds()

    return {
        "backoff_base_seconds": current.backoff_base.total_seconds(),
        "backoff_cap_seconds": current.backoff_cap.total_seconds(),
        "backoff_jitter": current.backoff_jitter,
        "heartbeat_timeout_seconds": current.heartbeat_timeout.total_seconds(),
        "retain_completed_seconds": seconds(current.retain_completed),  # None: keep forever
        "retain_failed_seconds": seconds(current.retain_failed),
        "max_events_per_attempt": current.max_events_per_attempt,
        "max_event_bytes_per_attempt": current.max_event_bytes_per_attempt,
        "max_releases_per_job": current.max_releases_per_job,
        "user_max_concurrency": current.user_max_concurrency,  # None: no limit
    }


def _set_config(conn: Any, change: ConfigChange) -> None:
    """One UPDATE: a refused value changes nothing."""
    try:
        store.set_queue_config(conn, change)
    except psycopg.errors.CheckViolation as exc:
        if exc.diag.constraint_name == "queue_config_check":
            raise ConfigError(
                "the backoff cap must be at least the backoff base: `mobvibe-queue config` "
                "shows both"
            ) from None
        raise ConfigError(
            f"the database refused the setting ({exc.diag.constraint_name or 'a check'})"
        ) from None
    except psycopg.errors.DataError as exc:
        raise ConfigError(f"the database refused the setting: {db.first_line(exc)}") from None


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED, metavar="[PSQL ARGS]...")
@click.pass_context
@friendly_errors
def psql(ctx: click.Context, psql_args: tuple[str, ...]) -> None:
    """Open psql on the queue's database: DATABASE_URL, or the embedded PostgreSQL (started
    for the session, stopped after it). Arguments go to psql (-c 'SELECT ...')."""
    command = [*db.psql_command(_url(ctx)), *psql_args]
    # psql answers Ctrl-C itself (it cancels the query); we wait for it to end.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        done = subprocess.run(command, check=False, env={**os.environ, "PGAPPNAME": "psql"})
    except FileNotFoundError:
        raise ConfigError("psql is not installed: install PostgreSQL's client") from None
    finally:
        signal.signal(signal.SIGINT, previous)
    ctx.exit(done.returncode)


# The other commands live in modules of their own.
for command in (stats, jobs, workers, sessions, users, cancel, dlq, doctor, web):
    main.add_command(command)
