"""The status pages' tests: a headless Chromium, the DOM it rendered, and a queue with jobs in
every state behind a live supervisor."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mobvibe.client import JobQueue
from mobvibe.sql.jobs import NewJob
from mobvibe.vocabulary import JobStatus
from tests.processes.conftest import supervisor  # noqa: F401
from tests.support.commands import free_port, queue_output, start_command
from tests.support.http import get
from tests.support.supervisor import FAST, Running
from tests.support.waiting import wait_for

AGENT = ["--handler", "tests.web.handlers:agent"]
# Chromium as root, with no sandbox, no network of its own and a profile per run.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class Dom(HTMLParser):
    """What a test reads of a rendered page: the text of each element with an id, and the
    elements with data-* attributes (table rows), in document order."""

    VOID = frozenset({"meta", "link", "input", "br", "img", "hr", "source", "wbr", "col"})

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.markup = markup
        self.texts: dict[str, str] = {}
        self.rows: list[dict[str, str]] = []
        self.tags: list[str] = []
        self._open: list[tuple[str, str | None, dict[str, str] | None]] = []
        self.feed(markup)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag in self.VOID:
            return
        values = {k: v or "" for k, v in attrs}
        ident = values.get("id")
        if ident is not None:
            self.texts[ident] = ""
        row = values if any(k.startswith("data-") for k in values) else None
        if row is not None:
            row["text"] = ""
            self.rows.append(row)
        self._open.append((tag, ident, row))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, ident, row in self._open:
            if ident is not None:
                self.texts[ident] += data
            if row is not None:
                row["text"] += data

    def text(self, ident: str) -> str:
        return self.texts[ident].strip()

    def ids(self, attribute: str = "data-job") -> list[str]:
        return [row[attribute] for row in self.rows if attribute in row]


class DevTools:
    """Chromium driven through its DevTools protocol over --remote-debugging-pipe: commands
    go to its fd 3 and answers and events come from its fd 4, as JSON ended by a NUL byte
    (no WebSocket client needed). The page's policy forbids scripts; the protocol's
    evaluation is not the page's script, so it may measure the page."""

    def __init__(self, binary: str, profile: str) -> None:
        # The shell gives Chromium our pipes as its fds 3 and 4.
        self.proc = subprocess.Popen(
            [
                "bash",
                "-c",
                'exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null',
                binary,
                *CHROMIUM_FLAGS,
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._last_id = 0
        self._buffer = b""
        self._unread: list[dict[str, Any]] = []

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Run one command (in a page's session); its result."""
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\0")
        self.proc.stdin.flush()
        answer = self.wait(lambda m, n=self._last_id: m.get("id") == n)
        assert "error" not in answer, answer
        return answer["result"]  # type: ignore[no-any-return]

    def wait(self, wanted: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        """The first message that is `wanted`; the others are kept for a later wait."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self._unread:
                if wanted(message):
                    self._unread.remove(message)
                    return message
            self._unread.append(self._read(deadline))

    def _read(self, deadline: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            assert ready, "Chromium did not answer in time"
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            assert chunk, "Chromium closed its pipe"
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)  # type: ignore[no-any-return]

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=20)
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()


class Browser:
    """Headless Chromium: the DOM of a page once loaded, measures of it, and screenshots."""

    def __init__(self, binary: str, profiles: Path) -> None:
        self.binary = binary
        self.profiles = profiles

    def _run(self, *args: str) -> str:
        profile = tempfile.mkdtemp(dir=self.profiles)  # a new empty profile each time
        done = subprocess.run(
            [self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    def dom(self, url: str) -> Dom:
        return Dom(self._run("--dump-dom", url))

    def evaluate(self, url: str, expression: str, width: int = 1280, height: int = 900) -> Any:
        """The value of a JavaScript `expression` in the page at `url` once loaded, in a
        viewport `width` x `height` pixels."""
        tools = DevTools(self.binary, tempfile.mkdtemp(dir=self.profiles))
        try:
            target = tools.call("Target.createTarget", url="about:blank")["targetId"]
            session = tools.call("Target.attachToTarget", targetId=target, flatten=True)
            page = session["sessionId"]
            tools.call(
                "Emulation.setDeviceMetricsOverride",
                page,
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            tools.call("Page.enable", page)
            tools.call("Page.navigate", page, url=url)
            tools.wait(
                lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == page
            )
            found = tools.call("Runtime.evaluate", page, expression=expression, returnByValue=True)
            assert "exceptionDetails" not in found, found
            return found["result"]["value"]
        finally:
            tools.close()

    def screenshot(self, url: str, path: Path, size: str = "1280,900") -> Path:
        self._run(f"--screenshot={path}", f"--window-size={size}", url)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is no PNG"
        return path


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Browser:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("chromium is not installed: `make chromium` installs Debian's (as root)")
    return Browser(binary, tmp_path_factory.mktemp("chromium"))


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: MOBVIBE_SCREENSHOTS (make screenshots: docs/screenshots), else
    a temporary directory."""
    target = os.environ.get("MOBVIBE_SCREENSHOTS")
    directory = Path(target) if target else tmp_path / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def web(db_url: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`mobvibe-queue web` on a free port: the process, and its port once it answers."""
    port = free_port()
    proc = start_command("mobvibe-queue", "web", "--port", str(port), url=db_url)
    wait_for(lambda: get(port, "/api/stats")[0] == 200, timeout=20, message="the pages")
    yield proc, port
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def status(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> tuple[str, int]:
    row = conn.execute("SELECT status, attempt FROM coding_jobs WHERE id = %s", [job_id]).fetchone()
    assert row is not None
    return row[0], row[1]


@dataclass
class EveryState:
    """A queue with jobs in every state, behind a live supervisor (`running`)."""

    supervisor: Running
    session: uuid.UUID
    completed: list[uuid.UUID]  # three, each with progress events and an output
    dead: uuid.UUID  # failed, retried by an operator, failed again: two attempts
    running: uuid.UUID  # processing, until the test ends
    waiting: uuid.UUID  # pending behind `running`, in its session
    scheduled: uuid.UUID  # pending, due in an hour
    retrying: uuid.UUID  # pending, its first attempt failed: a retry waiting
    cancelled: list[uuid.UUID] = field(default_factory=list)  # one before it ran, one running
    resubmitted: uuid.UUID | None = None  # cancelled, retried by an operator, completed

    @property
    def port(self) -> int:
        return self.supervisor.port


@pytest.fixture
def every_state(
    queue: JobQueue,
    conn: psycopg.Connection[Any],
    db_url: str,
    supervisor: Callable[..., Running],  # noqa: F811 - the fixture imported above
) -> EveryState:
    """Pending (behind its session, scheduled, a retry waiting), processing, completed,
    failed with two attempts, cancelled before and while running."""
    # Retries come back an hour later: the retry waiting stays one for the test.
    conn.execute("UPDATE queue_config SET backoff_base = '1 hour', backoff_cap = '2 hours'")
    session = queue.create_session()
    running, waiting = queue.enqueue_many(
        [
            NewJob("Port the app to Android tablets (long running)", session_id=session),
            NewJob("Add a splash screen", session_id=session),
        ]
    )
    completed = queue.enqueue_many(
        [
            NewJob("Build a todo app with React Native", priority=5),
            NewJob("Add dark mode to the settings screen", priority=5),
            NewJob("Write unit tests for the login form", priority=5),
        ]
    )
    dead = queue.enqueue("Migrate the local storage to Realm (fails)", max_retries=1)
    retrying = queue.enqueue("Fix the crash on startup (fails)", priority=10)
    scheduled = queue.enqueue("Upgrade to React Native 0.76", delay=3600)
    never_ran = queue.enqueue("Rename the app to MobVibe Pro", delay=3600)
    resubmitted = queue.enqueue("Update the app icon", delay=3600)
    stopped = queue.enqueue("Refactor the navigation stack (long running)")
    assert queue.cancel(never_ran) and queue.cancel(resubmitted)

    running_supervisor = supervisor("--workers", "3", *AGENT, *FAST, metrics=True)
    wait_for(lambda: status(conn, stopped)[0] == "processing", message="a job to cancel running")
    assert queue.cancel(stopped)
    wait_for(lambda: status(conn, dead) == ("failed", 1), message="the first dead letter")
    queue_output(db_url, "jobs", "retry", str(dead))
    queue_output(db_url, "jobs", "retry", str(resubmitted))
    wait_for(
        lambda: (
            status(conn, dead) == ("failed", 2)
            and status(conn, stopped)[0] == "cancelled"
            and status(conn, running)[0] == "processing"
            and status(conn, retrying) == ("pending", 1)
            and all(status(conn, j)[0] == "completed" for j in [*completed, resubmitted])
        ),
        timeout=30,
        message="every state",
    )
    return EveryState(
        running_supervisor,
        session,
        completed,
        dead,
        running,
        waiting,
        scheduled,
        retrying,
        [never_ran, stopped],
        resubmitted,
    )


def db_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = conn.execute("SELECT status, count(*) FROM coding_jobs GROUP BY status").fetchall()
    found = dict.fromkeys(JobStatus, 0)
    return {**found, **{s: int(n) for s, n in rows}}
