"""mobvibe-queue jobs (list, show, retry) and workers: the queue as an operator browses it."""

from __future__ import annotations

import json
import uuid
from typing import Any

import click
import psycopg

from mobvibe import columns
from mobvibe.cli import ids
from mobvibe.cli.options import choice, connect, echo_json, friendly_errors, jsonable
from mobvibe.cli.tables import fields, table
from mobvibe.sql import store
from mobvibe.sql.jobs import parse_uuid
from mobvibe.sql.store import JobDetail
from mobvibe.terminal import visible
from mobvibe.vocabulary import JobStatus

EVENTS_SHOWN = 1000
# The head of a long prompt that `jobs show` prints (--full prints all of it).
PROMPT_SHOWN_CHARS, PROMPT_SHOWN_LINES = 2000, 40


@click.group()
def jobs() -> None:
    """Browse the jobs: list them, show one with its attempts, retry one."""


@jobs.command("list")
@click.option("--status", type=choice(JobStatus), default=None, help="Only jobs in it.")
@click.option(
    "--session",
    "session_id",
    default=None,
    help="Only the jobs of this session (or its id's start).",
)
@click.option(
    "--user", "user_id", default=None, help="Only the jobs of the sessions this user owns (uuid)."
)
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, help="Jobs shown.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
@friendly_errors
def list_(
    ctx: click.Context,
    status: str | None,
    session_id: str | None,
    user_id: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List jobs, the newest submitted first."""
    given = ids.session_id(session_id)  # checked before connecting
    owner = None if user_id is None else parse_uuid(user_id, "user id")
    with connect(ctx.obj) as conn:
        session = None if given is None else ids.resolve(conn, given)
        wanted = None if status is None else JobStatus(status)
        found = store.list_jobs(conn, status=wanted, session_id=session, user_id=owner, limit=limit)
    if as_json:
        for job in found:
            echo_json(job.as_dict())
    elif not found:
        click.echo("no job" if status is None else f"no {status} job")
    else:
        click.echo(table(columns.JOBS, found))
        if len(found) == limit:  # a hint for the person, not a row for a pipe
            click.echo(f"showing the newest {limit}: --limit shows more", err=True)


@jobs.command()
@click.argument("job_id")
@click.option("--full", is_flag=True, help="The whole prompt, however long (else its head).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: job, attempts, events.")
@click.pass_context
@friendly_errors
def show(ctx: click.Context, job_id: str, full: bool, as_json: bool) -> None:
    """Show a job: its fields, every attempt, its output and its progress events (JOB_ID:
    the id, or its start)."""
    given = ids.job_id(job_id)
    with connect(ctx.obj) as conn:
        wanted = ids.resolve(conn, given)
        detail = store.job_detail(conn, wanted, EVENTS_SHOWN)
    if detail is None:
        click.echo(f"Error: job {wanted} not found", err=True)
        ctx.exit(1)
    elif as_json:
        click.echo(json.dumps(detail.as_dict(), default=jsonable))
    else:
        click.echo(visible(_job_text(detail, full)))  # the prompt and the output: a job's text


def _job_text(detail: JobDetail, full: bool) -> str:
    job = detail.job
    lines = [f"Job {job.id}", fields(columns.FIELDS, job), *_prompt(job.prompt, full)]
    attempts = table(columns.ATTEMPTS, detail.attempts) if detail.attempts else "none yet"
    lines += ["Attempts:", _indented(attempts)]
    if job.output:
        so_far = " so far" if job.status == JobStatus.PROCESSING else ""
        lines += [f"Output{so_far} (its end):", _indented(job.output)]
    if detail.events:
        more = f" (the first {len(detail.events)})" if detail.events_truncated else ""
        lines += [f"Progress events{more}:", _indented(table(columns.EVENTS, detail.events))]
    return "\n".join(lines)


def _prompt(prompt: str, full: bool) -> list[str]:
    """The prompt, or its head when it is long: a 1 MiB prompt does not flood a terminal."""
    head = "\n".join(prompt[:PROMPT_SHOWN_CHARS].splitlines()[:PROMPT_SHOWN_LINES])
    if full or len(head) >= len(prompt.rstrip()):
        return ["Prompt:", _indented(prompt)]
    size = f"{len(prompt.encode('utf-8')):,} bytes"
    title = (
        f"Prompt (its first {len(head):,} of {len(prompt):,} characters, {size}: "
        "--full shows it whole, --json too):"
    )
    return [title, _indented(head + " …")]


def _indented(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines() or [""])


@jobs.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: job_id, status.")
@click.pass_context
@friendly_errors
def retry(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Submit a failed or cancelled job again (an operator's act): pending, due now, its
    failures forgotten, at the back of its session. The queue never retries a cancelled job
    by itself."""
    given = ids.job_id(job_id)
    with connect(ctx.obj) as conn:
        wanted = ids.resolve(conn, given)
        problem = _retry(conn, wanted)
    if problem:
        click.echo(f"Error: {problem}", err=True)
        ctx.exit(1)
    if as_json:
        echo_json({"job_id": str(wanted), "status": JobStatus.PENDING})
    else:
        click.echo(f"{wanted} retried: pending, at the back of its session")


def _retry(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> str | None:
    """Retry one job; None on success, else why not."""
    if not store.retry_job(conn, job_id):
        job = store.get_job(conn, job_id)
        if job is None:
            return f"job {job_id} not found"
        return (
            f"job {job_id} is {job.status}: only a failed or cancelled job can be retried "
            "(`mobvibe-queue cancel` stops an unfinished one)"
        )
    return None


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per running job.")
@click.pass_context
@friendly_errors
def workers(ctx: click.Context, as_json: bool) -> None:
    """Show what each worker runs now and since when, from the database (an idle worker
    holds no job and is not seen there)."""
    with connect(ctx.obj) as conn:
        timeout = store.queue_settings(conn).heartbeat_timeout.total_seconds()
        running = columns.holders(store.running_jobs(conn), timeout)
    if as_json:
        for holder in running:
            echo_json(holder.as_dict())
    elif not running:
        click.echo("no job is running (an idle worker holds none)")
    else:
        click.echo(table(columns.RUNNING, running))
