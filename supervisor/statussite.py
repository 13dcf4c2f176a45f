"""The status pages and their JSON API: routes, parameters, and the one connection they read.

Served by the supervisor's HTTP child beside /metrics, and by `mobvibe-queue
web` on a host with no supervisor. Read-only: every route is a GET that runs
SELECTs only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg

from mobvibe.errors import DatabaseUnavailableError
from mobvibe.logs import event
from mobvibe.sql import db, store
from mobvibe.supervisor import statuspage
from mobvibe.supervisor.statusdata import overview_json, read_overview, running_json

log = logging.getLogger(__name__)
LIMIT_DEFAULT, LIMIT_MAX = 50, 1000
STATEMENT_TIMEOUT_MS = 2000  # a page waits no longer for the database
_JOB_PATH = re.compile(r"^/(api/)?jobs/([^/]+)$")
Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status code, body, content type."""

    code: int
    body: bytes
    content_type: str

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


class ConnectionBusyError(Exception):
    """Another request holds the one connection."""


class OneConnection:
    """One connection shared by an HTTP server's threads, one user at a time: a process
    that serves pages holds a single connection, however many requests arrive. Opened at
    first use, and again after it broke."""

    def __init__(self, url: str, application_name: str, *, pooled: bool = False) -> None:
        self.url = url
        self.application_name = application_name
        self.pooled = pooled  # behind PgBouncer in transaction mode: no session state
        self._conn: Conn | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def use(self, wait: float | None = None) -> Iterator[Conn]:
        """The connection, for this thread alone until the block ends; ConnectionBusyError when
        another thread kept it for longer than `wait` seconds (None: wait as long)."""
        if not self._lock.acquire(timeout=-1 if wait is None else wait):
            raise ConnectionBusyError("the connection is busy")
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._open()
            yield self._conn
        finally:
            if self._conn is not None and self._conn.broken:
                self._conn.close()
                self._conn = None
            self._lock.release()

    def _open(self) -> Conn:
        if self.pooled:
            conn = db.connect(self.url, application_name=self.application_name, connect_timeout=2)
            conn.prepare_threshold = None
            return conn
        return db.connect(
            self.url,
            application_name=self.application_name,
            connect_timeout=2,
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class StatusSite:
    """Answers a GET of the status pages or the JSON API."""

    def __init__(self, database: OneConnection) -> None:
        self.database = database

    def answer(self, target: str) -> Reply:
        """The reply to GET `target` (path and query string)."""
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        api = path.startswith("/api/")
        try:
            return self._route(path, parse_qs(parts.query))
        except BadRequestError as exc:
            return _error(api, 400, str(exc))
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction):
            return _error(
                api, 503, "the database schema is not up to date: run `mobvibe-queue migrate`"
            )
        except psycopg.errors.InsufficientPrivilege as exc:
            return _error(
                api,
                403,
                f"{db.first_line(exc)}: the pages need a role that reads "
                "the jobs (mobvibe_worker or mobvibe_operator)",
            )
        except (DatabaseUnavailableError, psycopg.OperationalError) as exc:
            return _error(api, 503, f"the database did not answer: {db.first_line(exc)}")
        except psycopg.Error as exc:
            event(
                log,
                logging.ERROR,
                "status_page_failed",
                "a status page failed",
                path=path,
                error=db.first_line(exc),
            )
            return _error(api, 500, f"the page failed: {db.first_line(exc)}")

    def _route(self, path: str, query: dict[str, list[str]]) -> Reply:
        routes: dict[str, Callable[[dict[str, list[str]]], Reply]] = {
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
        return _error(path.startswith("/api/"), 404, f"no page at {path}")

    def _overview(self, query: dict[str, list[str]]) -> Reply:
        with self.database.use() as conn:
            return Reply.html(200, statuspage.overview_page(read_overview(conn)))

    def _api_stats(self, query: dict[str, list[str]]) -> Reply:
        with self.database.use() as conn:
            return Reply.json(200, overview_json(read_overview(conn)))

    def _api_workers(self, query: dict[str, list[str]]) -> Reply:
        with self.database.use() as conn:
            running = store.running_jobs(conn)
            timeout = store.queue_settings(conn).heartbeat_timeout.total_seconds()
        return Reply.json(200, {"running": [running_json(job, timeout) for job in running]})

    def _jobs(self, query: dict[str, list[str]]) -> Reply:
        status, session, limit = _filters(query)
        with self.database.use() as conn:
            found = store.list_jobs(conn, status=status, session_id=session, limit=limit)
        return Reply.html(200, statuspage.jobs_page(found, status, session, limit))

    def _api_jobs(self, query: dict[str, list[str]]) -> Reply:
        status, session, limit = _filters(query)
        with self.database.use() as conn:
            found = store.list_jobs(conn, status=status, session_id=session, limit=limit)
        return Reply.json(200, {"jobs": [job.as_dict() for job in found], "limit": limit})

    def _job(self, job_id: uuid.UUID, *, api: bool) -> Reply:
        with self.database.use() as conn:
            detail = store.job_detail(conn, job_id)
        if detail is None:
            return _error(api, 404, f"job {job_id} not found")
        if api:
            return Reply.json(200, detail.as_dict())
        return Reply.html(200, statuspage.job_page(detail))


def _error(api: bool, code: int, message: str) -> Reply:
    if api:
        return Reply.json(code, {"error": message})
    return Reply.html(code, statuspage.error_page(code, message))


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = [v.strip() for v in query.get(name, []) if v.strip()]
    return values[-1] if values else None


def _filters(query: dict[str, list[str]]) -> tuple[str | None, uuid.UUID | None, int]:
    status = _one(query, "status")
    if status is not None and status not in statuspage.STATUSES:
        raise BadRequestError(f"status must be one of {', '.join(statuspage.STATUSES)}")
    session = _one(query, "session")
    limit = _one(query, "limit") or str(LIMIT_DEFAULT)
    if not limit.isdigit() or not 1 <= int(limit) <= LIMIT_MAX:
        raise BadRequestError(f"limit must be a number from 1 to {LIMIT_MAX}")
    return status, None if session is None else _uuid(session, "session"), int(limit)


def _uuid(text: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise BadRequestError(f"{what} must be a UUID") from None


class SiteHandler(BaseHTTPRequestHandler):
    """Serves a StatusSite (the class attribute `site`); answer() may add routes."""

    site: StatusSite

    def version_string(self) -> str:
        return "mobvibe"  # no Python version for the curious

    def do_GET(self) -> None:
        self.send(self.answer(self.path))

    def answer(self, target: str) -> Reply:
        return self.site.answer(target)

    def send(self, reply: Reply) -> None:
        self.send_response(reply.code)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        if reply.content_type.startswith("text/html"):
            self.send_header("Content-Security-Policy", statuspage.CSP)
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # scrapes and page refreshes every few seconds would drown the log
