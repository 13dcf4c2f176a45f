"""The status pages as HTML, from the Jinja2 templates beside this module.

Autoescaping is on for every template: prompts, outputs, errors and worker ids are
user text, and a value reaches a page only as text. The style sheet (style.css) is
fixed, so that the Content-Security-Policy can allow it by its hash and nothing else:
no script at all, no inline style, no outside resource. Pages refresh themselves.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Generic, TypeVar

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from mobvibe import clock, columns
from mobvibe.columns import NONE, Column, Holder, age
from mobvibe.sql.store import AttemptRow, Event, JobDetail, JobSummary, UserWaiting
from mobvibe.vocabulary import JobStatus
from mobvibe.web.chart import chart
from mobvibe.web.data import Overview

REFRESH_SECONDS = 5
R = TypeVar("R")

# Our own style sheet, trusted as markup (autoescaping would turn its quotes into entities),
# and the policy that allows it alone: same-origin forms, nothing else.
STYLE = Markup(resources.files(__package__).joinpath("style.css").read_text().strip())  # noqa: S704
STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CSP = (
    f"default-src 'none'; style-src 'sha256-{STYLE_HASH}'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Table(Generic[R]):
    """A table of a page: its columns, and the data-* attributes of a record's row."""

    columns: Sequence[Column[R]]
    data: Callable[[R], dict[str, object]]


JOBS = Table[JobSummary](columns.JOBS, lambda j: {"data-job": j.id, "data-status": j.status})
ENDED = Table[JobSummary](columns.ENDED, lambda j: {"data-job": j.id})
RUNNING = Table[Holder](columns.RUNNING, lambda h: {"data-job": h.job.job_id})
USERS_WAITING = Table[UserWaiting](columns.USERS_WAITING, lambda u: {"data-user": u.user_id})
ATTEMPTS = Table[AttemptRow](columns.ATTEMPTS, lambda a: {"data-attempt": a.attempt})
EVENTS = Table[Event](columns.EVENTS, lambda e: {"data-event": e.id})


def utc(value: datetime | None) -> str:
    """A time as the pages write it: UTC, to the second."""
    return NONE if value is None else f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}"


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader(__package__),
        autoescape=True,
        undefined=StrictUndefined,  # a misspelt name fails the page, not shows nothing
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(utc=utc, age=age)
    env.globals.update(
        when=utc,
        NONE=NONE,
        STATUSES=list(JobStatus),
        STYLE=STYLE,
        REFRESH_SECONDS=REFRESH_SECONDS,
        FIELDS=columns.FIELDS,
        JOBS=JOBS,
        ENDED=ENDED,
        RUNNING=RUNNING,
        USERS_WAITING=USERS_WAITING,
        ATTEMPTS=ATTEMPTS,
        EVENTS=EVENTS,
    )
    return env


_ENV = _environment()


def _render(template: str, **context: Any) -> str:
    return _ENV.get_template(template).render(at=clock.now(), **context)


def overview_page(overview: Overview) -> str:
    """Depth by status, throughput, the running jobs, recent dead letters and cancellations."""
    return _render("overview.html", ov=overview, chart=chart(overview.minutes), refresh=True)


def jobs_page(jobs: list[JobSummary], status: JobStatus | None, session: object, limit: int) -> str:
    """The newest-submitted jobs, filtered by status and session, with the filter's form."""
    return _render(
        "jobs.html", jobs=jobs, status=status, session=session or "", limit=limit, refresh=True
    )


def job_page(detail: JobDetail) -> str:
    """A job's fields, prompt, attempts, output and progress events."""
    return _render("job.html", detail=detail, job=detail.job, refresh=True)


def error_page(code: int, message: str) -> str:
    """A page that says what went wrong (no refresh for a bad address; a retry for 503)."""
    return _render("error.html", code=code, message=message, refresh=code == 503)
