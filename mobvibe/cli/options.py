"""Options shared by the three commands, and how errors reach the user."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

import click
import psycopg

from mobvibe import logs
from mobvibe.errors import ConfigError, QueueError
from mobvibe.sql import db
from mobvibe.sql.migrate import schema_is_current

F = TypeVar("F", bound=Callable[..., Any])
NOT_MIGRATED = "the database schema is not up to date: run `mobvibe-queue migrate`"

CONTEXT = {
    "auto_envvar_prefix": "MOBVIBE",
    "show_default": True,
    "help_option_names": ["-h", "--help"],
}


def database_option(f: F) -> F:
    return click.option(
        "--database-url",
        envvar="DATABASE_URL",
        show_envvar=True,
        default=None,
        help="PostgreSQL URL. Unset: a local embedded PostgreSQL is started.",
    )(f)


def choice(kind: type[StrEnum]) -> click.Choice[str]:
    """The words of `kind` as a click choice (click would show an Enum's names, not its
    values)."""
    return click.Choice([member.value for member in kind])


def logging_options(f: F) -> F:
    f = click.option(
        "--log-level",
        type=click.Choice(logs.LOG_LEVELS, case_sensitive=False),
        default="info",
        show_envvar=True,
        help="Lowest level logged.",
    )(f)
    return click.option(
        "--log-format",
        type=choice(logs.LogFormat),
        default=logs.LogFormat.AUTO.value,
        show_envvar=True,
        help="text (key=value lines), json (one object per line), or auto: text on a "
        "terminal, JSON otherwise.",
    )(f)


def moved_to_the_database(*names: str) -> Callable[[F], F]:
    """Options that are now settings of the database: refused in one line that says where.

    Hidden, and never read from the environment: a MOBVIBE_HEARTBEAT_TIMEOUT meant for
    the supervisor must not stop another command.
    """

    def refuse(ctx: click.Context, param: click.Parameter, value: object) -> None:
        if value is not None:
            raise click.BadParameter(
                "the database holds this setting now, for every reaper at once: "
                f"`mobvibe-queue config {param.opts[0]} ...` (an operator's act)",
                ctx,
                param,
            )

    def decorate(f: F) -> F:
        for name in names:
            f = click.option(
                name,
                hidden=True,
                expose_value=False,
                allow_from_autoenv=False,
                callback=refuse,
            )(f)
        return f

    return decorate


def friendly_errors(f: F) -> F:
    """Turn the queue's own errors into one `Error:` line and its exit code, no traceback."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except QueueError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction):
            # A statement of ours that the schema lacks: a database never (or not
            # fully) migrated, past the check each command makes as it connects.
            click.echo(f"Error: {NOT_MIGRATED}", err=True)
            sys.exit(ConfigError.exit_code)
        except psycopg.errors.InsufficientPrivilege as exc:
            # A role used for what it is not for: the user's to fix, not our bug.
            click.echo(
                f"Error: {db.first_line(exc)}: this needs a role of the queue that may do it "
                "(mobvibe_producer, mobvibe_worker, mobvibe_monitor, mobvibe_operator; "
                "see docs/backend/JOB_QUEUE.md#privileges)",
                err=True,
            )
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def resolve_database(url: str | None) -> str:
    """DATABASE_URL validated, or the embedded PostgreSQL's URL."""
    return db.resolve_url(url)


def check_schema(conn: psycopg.Connection[Any]) -> None:
    """One `Error:` line, not a traceback, on a database whose schema is not this version's."""
    if not schema_is_current(conn):
        raise ConfigError(NOT_MIGRATED)


def connect(url: str | None, application_name: str = "mobvibe-queue") -> psycopg.Connection[Any]:
    """A connection to DATABASE_URL (or the embedded PostgreSQL), its schema checked."""
    conn = db.connect(resolve_database(url), application_name=application_name)
    try:
        check_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def jsonable(value: object) -> object:
    """A value json.dumps cannot write (UUID, datetime), as text."""
    return value.isoformat() if isinstance(value, datetime) else str(value)


def echo_json(record: dict[str, Any]) -> None:
    """One JSON object on one line."""
    click.echo(json.dumps(record, default=jsonable))


class _OneLineErrors:
    """A command whose usage errors are one `Error:` line (exit code 2), without click's
    usage block; Ctrl-C stops it with exit code 130 and no `Aborted!`; a question answered
    no exits 1."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[misc]
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[misc]
        except click.ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help
                click.echo(exc.format_message(), err=True)
            else:
                click.echo(f"Error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort as exc:
            if isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt):
                click.echo("", err=True)  # after the ^C
                sys.exit(130)
            click.echo("Aborted: nothing changed.", err=True)  # a question answered no
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


class Command(_OneLineErrors, click.Command):
    """click.Command with one-line usage errors."""


class Group(_OneLineErrors, click.Group):
    """click.Group with one-line usage errors (its subcommands' included)."""
