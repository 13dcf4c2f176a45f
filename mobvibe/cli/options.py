"""Options shared by the three commands, and how errors reach the user."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from mobvibe import logs
from mobvibe.errors import QueueError
from mobvibe.sql import db

F = TypeVar("F", bound=Callable[..., Any])

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
        type=click.Choice(logs.LOG_FORMATS),
        default="auto",
        show_envvar=True,
        help="text (key=value lines), json (one object per line), or auto: text on a "
        "terminal, JSON otherwise.",
    )(f)


def friendly_errors(f: F) -> F:
    """Turn the queue's own errors into one `Error:` line and its exit code, no traceback."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except QueueError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


def resolve_database(url: str | None) -> str:
    """DATABASE_URL validated, or the embedded PostgreSQL's URL."""
    return db.resolve_url(url)
