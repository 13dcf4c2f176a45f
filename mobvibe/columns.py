"""The columns of the tables that show jobs to a person, written once for the status pages
(mobvibe.web) and the terminal (mobvibe.cli.tables).

A column says what it is called, how its cell reads the record, how it aligns and how
wide its text may grow; each renderer adds only its own markup (a page links a job id and
colours a status, the terminal pads and writes headers in capitals) and its own way of
writing a time (the pages in UTC, the terminal in the local zone).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from mobvibe.sql.store import (
    AttemptRow,
    Event,
    JobRow,
    JobSummary,
    RunningJobRow,
    UserRow,
    UserWaiting,
)

NONE = "-"
PROMPT_WIDTH = 60
ERROR_WIDTH = 100
R = TypeVar("R")
When = Callable[[datetime | None], str]  # how a renderer writes a time
Kind = Literal["text", "number", "time"]  # numbers align right, times stay on one line


@dataclass(frozen=True)
class Column(Generic[R]):
    """One column: `value` reads the cell's text from a record (None: nothing to show);
    `width` flattens it to one line and cuts it there; `ident` is the id the cell names
    (a page links to it)."""

    name: str
    header: str
    value: Callable[[R, When], str | None]
    kind: Kind = "text"
    width: int | None = None
    ident: Callable[[R], object] | None = None

    @property
    def numeric(self) -> bool:
        return self.kind == "number"

    def full(self, row: R, when: When) -> str:
        """The cell's whole text."""
        value = self.value(row, when)
        return NONE if value is None or value == "" else value

    def cell(self, row: R, when: When) -> str:
        """The cell's text as a table shows it: cut to `width`."""
        text = self.full(row, when)
        return text if self.width is None else head(text, self.width)


def head(text: str | None, width: int) -> str:
    """`text` on one line (whitespace runs become one space), cut to `width` with an ellipsis."""
    if not text:
        return NONE
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def age(seconds: float | None) -> str:
    """A duration as a person reads it: 42 s, 3 min, 1.5 h, 2.0 d."""
    if seconds is None:
        return NONE
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def took(seconds: float | None) -> str:
    """How long an attempt took, to a tenth of a second."""
    return NONE if seconds is None else f"{seconds:.1f} s"


@dataclass(frozen=True)
class Holder:
    """A running job, and whether its heartbeat is overdue (the reaper requeues it)."""

    job: RunningJobRow
    silent: bool

    def as_dict(self) -> dict[str, Any]:
        """/api/workers, `mobvibe-queue workers --json`: the job and `silent`."""
        return {**self.job.as_dict(), "silent": self.silent}


def is_silent(job: RunningJobRow, heartbeat_timeout: float) -> bool:
    """The attempt's heartbeat is older than the timeout: the reaper requeues it."""
    heartbeat = job.heartbeat_age_seconds
    return heartbeat is None or heartbeat > heartbeat_timeout


def holders(running: Sequence[RunningJobRow], heartbeat_timeout: float) -> list[Holder]:
    """The running jobs, each with whether its heartbeat is overdue."""
    return [Holder(job, is_silent(job, heartbeat_timeout)) for job in running]


def _holder_state(holder: Holder) -> str:
    state = "silent: the reaper requeues it" if holder.silent else "alive"
    return state + (", cancel requested" if holder.job.cancel_requested_at else "")


# The job list: `mobvibe-queue jobs list` and /jobs.
JOBS: tuple[Column[JobSummary], ...] = (
    Column("job", "job id", lambda j, _: str(j.id), ident=lambda j: j.id),
    Column("session", "session", lambda j, _: str(j.session_id)[:8], ident=lambda j: j.session_id),
    Column("status", "status", lambda j, _: j.status),
    Column("priority", "pri", lambda j, _: str(j.priority), "number"),
    Column("failed", "failed", lambda j, _: f"{j.retry_count}/{j.max_retries}", "number"),
    Column("submitted", "submitted", lambda j, when: when(j.created_at), "time"),
    Column("now", "now", lambda j, when: j.state_note(when, NONE)),
    Column("prompt", "prompt", lambda j, _: j.prompt_head, width=PROMPT_WIDTH),
)

# The jobs that ended lately: the front page's dead letters and cancellations.
ENDED: tuple[Column[JobSummary], ...] = (
    Column("job", "job id", lambda j, _: str(j.id), ident=lambda j: j.id),
    Column("ended", "ended", lambda j, when: when(j.completed_at), "time"),
    Column("attempts", "attempts", lambda j, _: str(j.attempt), "number"),
    Column("end_reason", "end reason", lambda j, _: j.end_reason),
    Column("error", "error", lambda j, _: j.error_head, width=ERROR_WIDTH),
    Column("prompt", "prompt", lambda j, _: j.prompt_head, width=PROMPT_WIDTH),
)

# What each worker runs: `mobvibe-queue workers` and the front page.
RUNNING: tuple[Column[Holder], ...] = (
    Column("worker", "worker", lambda h, _: h.job.worker_id),
    Column("job", "job id", lambda h, _: str(h.job.job_id), ident=lambda h: h.job.job_id),
    Column("attempt", "attempt", lambda h, _: str(h.job.attempt), "number"),
    Column("since", "since", lambda h, when: when(h.job.started_at), "time"),
    Column("heartbeat", "heartbeat", lambda h, _: f"{age(h.job.heartbeat_age_seconds)} ago"),
    Column("state", "state", lambda h, _: _holder_state(h)),
    Column("prompt", "prompt", lambda h, _: h.job.prompt_head, width=PROMPT_WIDTH),
)


def _user_limit(user: UserRow) -> str:
    if user.max_concurrency is None:
        return "none"
    return f"{user.max_concurrency} ({user.limit_source})"


# The users and their limits: `mobvibe-queue users list` and the front page (the users
# with jobs waiting for their limit).
USERS: tuple[Column[UserRow], ...] = (
    Column("user", "user", lambda u, _: "(no user)" if u.user_id is None else str(u.user_id)),
    Column("running", "running", lambda u, _: str(u.running), "number"),
    Column("ready", "ready", lambda u, _: str(u.ready), "number"),
    Column("waiting", "waiting", lambda u, _: str(u.waiting), "number"),
    Column("limit", "limit", lambda u, _: _user_limit(u)),
    Column("last_start", "last start", lambda u, when: when(u.last_started_at), "time"),
)

# The users with jobs waiting for their limit: the front page.
USERS_WAITING: tuple[Column[UserWaiting], ...] = (
    Column("user", "user", lambda u, _: str(u.user_id)),
    Column("running", "running", lambda u, _: str(u.running), "number"),
    Column("waiting", "waiting for the limit", lambda u, _: str(u.waiting), "number"),
)


def _events(attempt: AttemptRow) -> str:
    """The progress events an attempt recorded, and those its caps dropped."""
    dropped = f" (+{attempt.events_dropped} dropped)" if attempt.events_dropped else ""
    return f"{attempt.events}{dropped}"


# A job's attempts: `mobvibe-queue jobs show` and /jobs/ID.
ATTEMPTS: tuple[Column[AttemptRow], ...] = (
    Column("attempt", "#", lambda a, _: str(a.attempt), "number"),
    Column("worker", "worker", lambda a, _: a.worker_id),
    Column("started", "started", lambda a, when: when(a.started_at), "time"),
    Column("ended", "ended", lambda a, when: when(a.ended_at) if a.ended_at else "running", "time"),
    Column("took", "took", lambda a, _: took(a.seconds), "number"),
    Column("end_reason", "end reason", lambda a, _: a.end_reason),
    Column("events", "events", lambda a, _: _events(a)),
    Column("error", "error", lambda a, _: a.error_message, width=ERROR_WIDTH),
)


# A job's progress events: `mobvibe-queue jobs show` and /jobs/ID.
EVENTS: tuple[Column[Event], ...] = (
    Column("attempt", "attempt", lambda e, _: str(e.attempt), "number"),
    Column("at", "at", lambda e, when: when(e.created_at), "time"),
    Column("kind", "kind", lambda e, _: e.kind),
    Column("payload", "payload", lambda e, _: json.dumps(e.payload, ensure_ascii=False)),
)

# A job's fields, one per line: `mobvibe-queue jobs show` and /jobs/ID.
FIELDS: tuple[Column[JobRow], ...] = (
    Column("status", "status", lambda j, _: j.status),
    Column("cancel", "cancel requested", lambda j, when: when(j.cancel_requested_at), "time"),
    Column("session", "session", lambda j, _: str(j.session_id), ident=lambda j: j.session_id),
    Column("priority", "priority", lambda j, _: str(j.priority)),
    Column("failed", "failed attempts", lambda j, _: f"{j.retry_count} of at most {j.max_retries}"),
    Column("submitted", "submitted", lambda j, when: when(j.created_at), "time"),
    Column("due", "due", lambda j, when: when(j.run_at), "time"),
    Column("started", "started", lambda j, when: when(j.started_at), "time"),
    Column("heartbeat", "last heartbeat", lambda j, when: when(j.heartbeat_at), "time"),
    Column("ended", "ended", lambda j, when: when(j.completed_at), "time"),
    Column("worker", "worker", lambda j, _: j.worker_id),
    Column("end_reason", "end reason", lambda j, _: j.end_reason),
    Column("error", "error", lambda j, _: j.error_message),
    Column("waiting_for", "waiting for", lambda j, _: j.waiting_for),
    Column("idempotency_key", "idempotency key", lambda j, _: j.idempotency_key),
)
