"""The status pages without a database: user text escaped everywhere, the style allowed by its
hash alone, bad parameters and outages answered plainly; the command line's text cells."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from http.server import ThreadingHTTPServer
from typing import Any

import pytest

from mobvibe import columns
from mobvibe.cli.stats import progress_line
from mobvibe.cli.tables import aligned, table
from mobvibe.columns import Holder, head
from mobvibe.errors import DatabaseUnavailableError
from mobvibe.sql.store import (
    AttemptRow,
    Event,
    JobDetail,
    JobRow,
    JobSummary,
    MinuteCount,
    QueueStats,
    RunningJobRow,
)
from mobvibe.vocabulary import JobStatus
from mobvibe.web import pages
from mobvibe.web.data import Overview
from mobvibe.web.handler import SiteHandler
from mobvibe.web.site import StatusSite

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'
NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
JOB, SESSION = uuid.uuid4(), uuid.uuid4()


class Tags(HTMLParser):
    def __init__(self, markup: str) -> None:
        super().__init__()
        self.found: list[str] = []
        self.feed(markup)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append(tag)


def assert_inert(markup: str) -> None:
    tags = Tags(markup).found
    assert "script" not in tags and "img" not in tags
    assert "&lt;script&gt;" in markup


def summary(**overrides: Any) -> JobSummary:
    fields: dict[str, Any] = {
        "id": JOB,
        "session_id": SESSION,
        "status": "failed",
        "priority": 0,
        "attempt": 2,
        "retry_count": 2,
        "max_retries": 2,
        "created_at": NOW,
        "updated_at": NOW,
        "run_at": NOW,
        "completed_at": NOW,
        "worker_id": EVIL,
        "end_reason": EVIL,
        "error_head": EVIL,
        "waiting_for": None,
        "cancel_requested_at": None,
        "prompt_head": EVIL,
    }
    return JobSummary(**{**fields, **overrides})


def overview() -> Overview:
    running = RunningJobRow(EVIL, JOB, SESSION, 1, NOW, NOW, 99.0, None, EVIL)
    minutes = [MinuteCount(NOW + timedelta(minutes=i), i, 1, 0) for i in range(15)]
    return Overview(
        at=NOW,
        stats=QueueStats(1, 1, 105, 15, timedelta(seconds=42), 1, NOW, 3),
        minutes=minutes,
        running=[Holder(running, silent=True)],
        heartbeat_timeout=30.0,
        dead_letters=[summary()],
        cancellations=[summary(status="cancelled")],
        last_sweep=NOW,
    )


def detail() -> JobDetail:
    row = JobRow(
        id=JOB,
        session_id=SESSION,
        prompt=EVIL,
        priority=0,
        status=JobStatus.FAILED,
        retry_count=1,
        max_retries=1,
        error_message=EVIL,
        created_at=NOW,
        started_at=NOW,
        completed_at=NOW,
        updated_at=NOW,
        run_at=NOW,
        heartbeat_at=None,
        worker_id=EVIL,
        attempt=1,
        end_reason=EVIL,
        idempotency_key=EVIL,
        output=EVIL,
    )
    attempt = AttemptRow(JOB, 1, EVIL, NOW, NOW + timedelta(seconds=2), EVIL, EVIL)
    event = Event(7, JOB, SESSION, 1, EVIL, {"text": EVIL}, NOW)
    return JobDetail(row, [attempt], [event], False)


def test_every_page_shows_user_text_as_text() -> None:
    ov = overview()
    assert_inert(pages.overview_page(ov))
    assert_inert(pages.jobs_page([summary()], JobStatus.FAILED, EVIL, 50))
    page = pages.job_page(detail())
    assert_inert(page)
    assert_inert(pages.error_page(400, EVIL))


def test_the_overview_shows_the_counts_and_flags_a_silent_attempt() -> None:
    page = pages.overview_page(overview())
    for ident, value in (
        ("count-pending", "1"),
        ("count-completed", "105"),
        ("count-cancelled", "3"),
        ("oldest-pending", "42 s"),
        ("window-completed", str(sum(range(15)))),
        ("window-dead-lettered", "15"),
        ("running-count", "1"),
    ):
        assert re.search(f'id="{ident}">{re.escape(value)}<', page), ident
    assert re.search(r'<span class="warn">silent: the reaper requeues it</span>', page)


def test_the_style_sheet_is_the_only_one_the_policy_allows() -> None:
    page = pages.overview_page(overview())
    (style,) = re.findall(r"<style>(.*?)</style>", page, re.S)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in pages.CSP
    assert "script-src" not in pages.CSP and "default-src 'none'" in pages.CSP
    assert " style=" not in page  # no inline style attribute: the policy would block it


class Outage:
    """A connection that is never reached."""

    @contextlib.contextmanager
    def use(self, wait: float | None = None) -> Iterator[Any]:
        raise DatabaseUnavailableError("cannot connect to the database: refused")
        yield


@pytest.mark.parametrize(
    ("target", "code", "words"),
    [
        ("/jobs?status=lost", 400, "status must be one of"),
        ("/api/jobs?limit=5000", 400, "limit must be a number from 1 to 1000"),
        ("/api/jobs/12", 400, "a job id must be a UUID"),
        ("/nothing", 404, "no page at /nothing"),
        ("/", 503, "the database did not answer: cannot connect to the database: refused"),
        ("/api/stats", 503, "the database did not answer"),
    ],
)
def test_bad_requests_and_outages_are_answered_plainly(target: str, code: int, words: str) -> None:
    reply = StatusSite(Outage()).answer(target)  # type: ignore[arg-type]
    assert reply.code == code
    if target.startswith("/api/"):
        assert words in json.loads(reply.body)["error"]
    else:
        assert words in reply.body.decode()
        assert reply.content_type == "text/html; charset=utf-8"


@pytest.fixture
def outage_site() -> Iterator[int]:
    """The pages served over HTTP on a free port, their database out of reach."""

    class Handler(SiteHandler):
        site = StatusSite(Outage())  # type: ignore[arg-type]

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    thread.join(10)
    server.server_close()


def request(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=b"x" * 20000 if method == "POST" else None)
        reply = conn.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        conn.close()


def test_head_is_a_get_without_its_body_and_other_methods_are_not_allowed(
    outage_site: int,
) -> None:
    code, headers, body = request(outage_site, "GET", "/")
    assert code == 503 and b"the database did not answer" in body
    head_code, head_headers, head_body = request(outage_site, "HEAD", "/")
    assert (head_code, head_body) == (503, b"")
    assert head_headers["Content-Length"] == headers["Content-Length"] == str(len(body))
    assert head_headers["Content-Security-Policy"] == pages.CSP
    for method, path in (("POST", "/"), ("PUT", "/jobs"), ("DELETE", "/api/jobs"), ("PATCH", "/")):
        code, headers, body = request(outage_site, method, path)
        assert code == 405, (method, path)
        assert headers["Allow"] == "GET, HEAD"
        assert f"{method} is not allowed here" in body.decode()
        api = path.startswith("/api/")
        assert headers["Content-Type"] == (
            "application/json" if api else "text/html; charset=utf-8"
        )
    assert request(outage_site, "BREW", "/")[0] == 501  # a method no one knows


def words(line: str) -> list[str]:
    return line.lower().split()


def test_the_page_and_the_terminal_show_the_same_columns_of_the_same_cells() -> None:
    job = summary(prompt_head="p" * 500, worker_id="host:0:1:abc", status="processing")
    page = pages.jobs_page([job], None, None, 50)
    shown = [re.sub(r"<[^>]+>", "", h) for h in re.findall(r"<th[^>]*>(.*?)</th>", page)]
    header, row = table(columns.JOBS, [job]).splitlines()
    assert [h.removesuffix(" (UTC)") for h in shown] == [c.header for c in columns.JOBS]
    assert words(header) == words(" ".join(shown).replace(" (UTC)", ""))
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", page)]
    time_column = [c.kind for c in columns.JOBS].index("time")
    assert [c for i, c in enumerate(cells) if i != time_column] == [
        c.cell(job, str) for i, c in enumerate(columns.JOBS) if i != time_column
    ]
    assert "p" * 59 + "…" in row and "p" * 59 + "…" in cells  # one width for both
    assert "attempt 2 on host:0:1:abc" in row and "attempt 2 on host:0:1:abc" in cells


def test_a_command_lines_table_aligns_its_columns() -> None:
    text = aligned(["ID", "N", "NOTE"], [["a", "1", "x"], ["bbb", "100", "long note"]], [0, 1, 0])
    assert text.splitlines() == ["ID     N  NOTE", "a      1  x", "bbb  100  long note"]
    assert head("two\nlines   here", 8) == "two lin…"
    assert head(None, 5) == "-"


def test_the_progress_line_says_when_the_next_retry_is_due() -> None:
    retry = NOW + timedelta(seconds=8)
    stats = QueueStats(1, 0, 4, 0, None, 1, retry, 0, next_retry_at=retry)
    line = progress_line(stats, NOW)
    assert line.endswith(
        "pending 1 (1 waiting for a retry, the next due in 8 s), processing 0, completed 4, "
        "failed 0, cancelled 0"
    )
