"""mobvibe-queue cancel: stop jobs from the command line, as the phone's button does."""

from __future__ import annotations

import uuid
from typing import Any

import click
import psycopg

from mobvibe.cli import ids
from mobvibe.cli.options import connect, friendly_errors
from mobvibe.sql import store
from mobvibe.vocabulary import JobStatus


@click.command()
@click.argument("job_ids", nargs=-1, metavar="[JOB_ID]...")
@click.option(
    "--session", "session_id", default=None, help="Cancel every unfinished job of this session."
)
@click.pass_context
@friendly_errors
def cancel(ctx: click.Context, job_ids: tuple[str, ...], session_id: str | None) -> None:
    """Cancel jobs: a pending one at once, a running one by telling its supervisor.

    One line per job: cancelled, cancel requested (its supervisor stops it and records
    the end), or already finished. Exit code 1 if a job or the session does not exist.
    """
    if bool(job_ids) == (session_id is not None):
        raise click.UsageError("give the JOB_IDs to cancel, or --session SESSION_ID")
    given = [ids.job_id(job_id) for job_id in job_ids]  # all checked before any is touched
    session_given = ids.session_id(session_id)
    with connect(ctx.obj) as conn:
        wanted = [ids.resolve(conn, job_id) for job_id in given]
        session = None if session_given is None else ids.resolve(conn, session_given)
        if session is None:
            outcomes = [(job_id, store.cancel(conn, job_id)) for job_id in wanted]
        elif not store.session_exists(conn, session):
            click.echo(f"Error: session {session} not found", err=True)
            ctx.exit(1)
        else:
            outcomes = store.cancel_session_jobs(conn, session)
            if not outcomes:
                click.echo(f"session {session}: no unfinished job")
        missing = [job_id for job_id, changed in outcomes if not _report(conn, job_id, changed)]
    for job_id in missing:
        click.echo(f"Error: job {job_id} not found", err=True)
    if missing:
        ctx.exit(1)


def _report(conn: psycopg.Connection[Any], job_id: uuid.UUID, changed: bool) -> bool:
    """Print what became of the job; False when it does not exist."""
    job = store.get_job(conn, job_id)
    if job is None:
        return False
    if job.status == JobStatus.CANCELLED and changed:
        line = JobStatus.CANCELLED.value
    elif job.status == JobStatus.PROCESSING:
        line = "cancel requested" if changed else "cancel already requested"
    else:
        line = f"already finished ({job.status})"
    click.echo(f"{job_id} {line}")
    return True
