"""mobvibe-queue users: the phone users who own sessions, their limits (an operator's act)
and their jobs running and waiting."""

from __future__ import annotations

import click

from mobvibe import columns
from mobvibe.cli.options import connect, echo_json, friendly_errors
from mobvibe.cli.tables import table
from mobvibe.sql import store
from mobvibe.sql.jobs import parse_uuid

# A user's limit, the database's CHECK (migration 0012).
USER_LIMIT_MIN, USER_LIMIT_MAX = 1, 1000


@click.group()
def users() -> None:
    """Users: at most their limit of jobs run at once; users take turns."""


@users.command("limit")
@click.argument("user_id", metavar="USER")
@click.argument(
    "max_concurrency",
    metavar="N",
    required=False,
    type=click.IntRange(USER_LIMIT_MIN, USER_LIMIT_MAX),
)
@click.option("--clear", is_flag=True, help="Drop the user's own limit (the default applies).")
@click.pass_context
@friendly_errors
def limit(ctx: click.Context, user_id: str, max_concurrency: int | None, clear: bool) -> None:
    """Let at most N of USER's jobs run at once (1 to 1000), or --clear the user's own limit
    (then `config --user-max-concurrency` applies). Prints the limit in force."""
    if clear == (max_concurrency is not None):
        raise click.UsageError("give N (1 to 1000) or --clear, not both")
    user = parse_uuid(user_id, "user id")
    with connect(ctx.obj) as conn:
        now = store.set_user_limit(conn, user, max_concurrency)
    click.echo(f"user {user}: " + ("no limit" if now is None else f"at most {now} at once"))


@users.command("list")
@click.option("--waiting", is_flag=True, help="Only the users with jobs waiting for their limit.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
@friendly_errors
def list_(ctx: click.Context, waiting: bool, as_json: bool) -> None:
    """The users the queue knows: jobs running, ready, waiting for the user's limit, the
    limit in force; the sessions with no user are one row."""
    with connect(ctx.obj) as conn:
        found = store.user_list(conn, waiting_only=waiting)
    if as_json:
        for user in found:
            echo_json(user.as_dict())
    elif not found:
        click.echo("no user waits for its limit" if waiting else "no user")
    else:
        click.echo(table(columns.USERS, found))
