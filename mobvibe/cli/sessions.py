"""mobvibe-queue sessions create: a coding session (a workspace) from the command line, as the
phone opens one."""

from __future__ import annotations

import uuid

import click

from mobvibe.cli.options import connect, echo_json, friendly_errors
from mobvibe.client import MAX_CONCURRENCY_MAX, MAX_CONCURRENCY_MIN
from mobvibe.errors import InvalidJobError
from mobvibe.sql import store
from mobvibe.sql.jobs import parse_uuid


@click.group()
def sessions() -> None:
    """Coding sessions: a session is one workspace, whose prompts start in order."""


@sessions.command()
@click.argument("session_id", required=False, metavar="[SESSION_ID]")
@click.option(
    "--max-concurrency",
    type=click.IntRange(MAX_CONCURRENCY_MIN, MAX_CONCURRENCY_MAX),
    default=1,
    help="How many of its prompts may run at once (in the order they were sent).",
)
@click.option(
    "--user",
    "user_id",
    metavar="USER_ID",
    help="The phone user (uuid) who owns the session (default: none, the backend's own).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object: session_id.")
@click.pass_context
@friendly_errors
def create(
    ctx: click.Context,
    session_id: str | None,
    max_concurrency: int,
    user_id: str | None,
    as_json: bool,
) -> None:
    """Create a session (with this id, or a new one) and print its id: `enqueue --session
    ID` sends prompts to it."""
    created = uuid.uuid4() if session_id is None else parse_uuid(session_id, "session id")
    owner = None if user_id is None else parse_uuid(user_id, "user id")
    with connect(ctx.obj) as conn:
        if store.session_exists(conn, created):
            raise InvalidJobError(
                f"session {created} exists already: `enqueue --session` sends prompts to it"
            )
        store.create_session(conn, created, max_concurrency, owner)
    if as_json:
        echo_json(
            {
                "session_id": str(created),
                "max_concurrency": max_concurrency,
                "user_id": None if owner is None else str(owner),
            }
        )
    else:
        click.echo(created)
