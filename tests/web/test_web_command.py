"""mobvibe-queue web: the supervisor's status pages on a host with no supervisor, on one
connection, stopped by Ctrl-C with exit code 0."""

from __future__ import annotations

import signal
import subprocess
import threading
from typing import Any

import psycopg

from mobvibe.client import JobQueue
from tests.support.http import get
from tests.web.conftest import Browser, db_counts
from tests.web.test_api import connections


def test_web_serves_the_same_pages_on_one_connection_and_ctrl_c_exits_0(
    queue: JobQueue,
    conn: psycopg.Connection[Any],
    web: tuple[subprocess.Popen[str], int],
    browser: Browser,
) -> None:
    proc, port = web
    first = queue.enqueue("Build a todo app with React Native")
    queue.enqueue("Add dark mode")
    assert queue.cancel(first)
    page = browser.dom(f"http://127.0.0.1:{port}/")
    for name, value in db_counts(conn).items():
        assert page.text(f"count-{name}") == str(value), name
    assert browser.dom(f"http://127.0.0.1:{port}/jobs/{first}").text("prompt") == (
        "Build a todo app with React Native"
    )

    threads = [
        threading.Thread(target=get, args=(port, path))
        for path in ["/", "/jobs", f"/api/jobs/{first}", "/api/workers"] * 5
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert connections(conn, "mobvibe-web") == 1
    assert get(port, "/metrics")[0] == 404  # the supervisor's own: not served here

    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert err.startswith(f"status pages on http://127.0.0.1:{port}/ (Ctrl-C stops)")
    assert "Traceback" not in err and "Aborted" not in err
