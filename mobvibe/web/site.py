"""The status pages and their JSON API: routes, parameters, and the answers to a GET.

Served by the supervisor's HTTP child beside /metrics, and by `mobvibe-queue
web` on a host with no supervisor. Read-only: every route is a GET that runs
SELECTs only.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import parse_qs, urlsplit

import psycopg

from mobvibe.columns import holders
from mobvibe.errors import DatabaseUnavailableError
from mobvibe.logs import event
from mobvibe.sql import db, store
from mobvibe.vocabulary import JobStatus
from mobvibe.web import pages
from mobvibe.web.connection import OneConnection
from mobvibe.web.data import overview_json, read_overview

log = logging.getLogger(__name__)
LIMIT_DEFAULT, LIMIT_MAX = 50, 1000
_JOB_PATH = re.compile(r"^/(api/)?jobs/([^/]+)$")
Query = dict[str, list[str]]


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status code, body, content type, and headers of its own."""

    code: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()

    @staticmethod
    def html(code: int, page: str) -> Reply:
        return Reply(code, page.encode(), "text/html; charset=utf-8")

    @staticmethod
    def json(code: int, value: object) -> Reply:
        text = json.dumps(value, default=_jsonable, ensure_ascii=False)
        return Reply(code, text.encode() + b"\n", "application/json")


def _jsonable(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


class BadRequestError(Exception):
    """A parameter the pages cannot use; its message says which."""


class StatusSite:
    """Answers a GET of the status pages or the JSON API."""

    def __init__(self, database: OneConnection) -> None:
        self.database = database

    def answer(self, target: str) -> Reply:
        """The reply to GET `target` (path and query string)."""
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        api = is_api(path)
        try:
            return self._route(path, parse_qs(parts.query))
        except BadRequestError as exc:
            return error(api, 400, str(exc))
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction):
            return error(
                api, 503, "the database schema is not up to date: run `mobvibe-queue migrate`"
            )
        except psycopg.errors.InsufficientPrivilege as exc:
            return error(
                api,
                403,
                f"{db.first_line(exc)}: the pages need a role that reads "
                "the jobs (mobvibe_worker or mobvibe_operator)",
            )
        except (DatabaseUnavailableError, psycopg.OperationalError) as exc:
            return error(api, 503, f"the database did not answer: {db.first_line(exc)}")
        except psycopg.Error as exc:
            reason = db.first_line(exc)
            event(
                log,
                logging.ERROR,
                "status_page_failed",
                "a status page failed",
                path=path,
                error=reason,
            )
            return error(api, 500, f"the page failed: {reason}")

    def _route(self, path: str, query: Query) -> Reply:
        routes: dict[str, Callable[[Query], Reply]] = {
            "/": self._overview,
            "/jobs": self._jobs,
            "/api/stats": self._api_stats,
            "/api/workers": self._api_workers,
            "/api/jobs": self._api_jobs,
        }
        if path in routes:
            return routes[path](query)
        match = _JOB_PATH.match(path)
        if match:
            return self._job(_uuid(match.group(2), "a job id"), api=bool(match.group(1)))
        return error(is_api(path), 404, f"no page at {path}")

    def _overview(self, query: Query) -> Reply:
        with self.database.use() as conn:
            return Reply.html(200, pages.overview_page(read_overview(conn)))

    def _api_stats(self, query: Query) -> Reply:
        with self.database.use() as conn:
            return Reply.json(200, overview_json(read_overview(conn)))

    def _api_workers(self, query: Query) -> Reply:
        with self.database.use() as conn:
            running = store.running_jobs(conn)
            timeout = store.queue_settings(conn).heartbeat_timeout.total_seconds()
        return Reply.json(200, {"running": [h.as_dict() for h in holders(running, timeout)]})

    def _jobs(self, query: Query) -> Reply:
        status, session, limit = _filters(query)
        with self.database.use() as conn:
            found = store.list_jobs(conn, status=status, session_id=session, limit=limit)
        return Reply.html(200, pages.jobs_page(found, status, session, limit))

    def _api_jobs(self, query: Query) -> Reply:
        status, session, limit = _filters(query)
        with self.database.use() as conn:
            found = store.list_jobs(conn, status=status, session_id=session, limit=limit)
        return Reply.json(200, {"jobs": [job.as_dict() for job in found], "limit": limit})

    def _job(self, job_id: uuid.UUID, *, api: bool) -> Reply:
        with self.database.use() as conn:
            detail = store.job_detail(conn, job_id)
        if detail is None:
            return error(api, 404, f"job {job_id} not found")
        if api:
            return Reply.json(200, detail.as_dict())
        return Reply.html(200, pages.job_page(detail))


def is_api(path: str) -> bool:
    """The path is the JSON API's, whose answers (errors too) are JSON."""
    return path.startswith("/api/")


def error(api: bool, code: int, message: str) -> Reply:
    """An error as JSON for the API, as a page elsewhere."""
    if api:
        return Reply.json(code, {"error": message})
    return Reply.html(code, pages.error_page(code, message))


def _one(query: Query, name: str) -> str | None:
    values = [v.strip() for v in query.get(name, []) if v.strip()]
    return values[-1] if values else None


def _filters(query: Query) -> tuple[JobStatus | None, uuid.UUID | None, int]:
    status = _status(_one(query, "status"))
    session = _one(query, "session")
    limit = _one(query, "limit") or str(LIMIT_DEFAULT)
    if not limit.isdigit() or not 1 <= int(limit) <= LIMIT_MAX:
        raise BadRequestError(f"limit must be a number from 1 to {LIMIT_MAX}")
    return status, None if session is None else _uuid(session, "session"), int(limit)


def _status(text: str | None) -> JobStatus | None:
    try:
        return None if text is None else JobStatus(text)
    except ValueError:
        raise BadRequestError(f"status must be one of {', '.join(JobStatus)}") from None


def _uuid(text: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise BadRequestError(f"{what} must be a UUID") from None
