"""Job and session ids as a person types them: whole, or their first hex digits, as `jobs list`
shows a session. parse() checks the text before any connection (a usage error); resolve()
finds the one id a start names, or says in one line that none or several do."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from mobvibe.errors import InvalidJobError, NotFoundError
from mobvibe.sql import store
from mobvibe.sql.jobs import parse_uuid, prefix_bounds
from mobvibe.sql.store import IdKind


@dataclass(frozen=True)
class IdStart:
    """The first hex digits of a job's or a session's id, and the ids they span."""

    kind: IdKind
    text: str
    low: uuid.UUID
    high: uuid.UUID


Wanted = uuid.UUID | IdStart


def parse(text: str, kind: IdKind) -> Wanted:
    """A whole id, or the start of one; InvalidJobError (a usage error) for anything else."""
    try:
        return parse_uuid(text, f"{kind} id")
    except InvalidJobError:
        low, high = prefix_bounds(text, f"{kind} id")
        return IdStart(kind, text.strip(), low, high)


def resolve(conn: psycopg.Connection[Any], wanted: Wanted) -> uuid.UUID:
    """The id: a whole one as it is, or the one id with this start."""
    if isinstance(wanted, uuid.UUID):
        return wanted
    found = store.ids_starting(conn, wanted.kind, wanted.low, wanted.high)
    if not found:
        raise NotFoundError(f"no {wanted.kind} id starts with {wanted.text!r}")
    if len(found) > 1:
        raise InvalidJobError(
            f"more than one {wanted.kind} id starts with {wanted.text!r}: give more of it"
        )
    return found[0]


def job_id(text: str) -> Wanted:
    return parse(text, "job")


def session_id(text: str | None) -> Wanted | None:
    return None if text is None else parse(text, "session")
