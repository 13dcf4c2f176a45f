"""The JSON API behind the status pages, on a live supervisor: the database's numbers and rows,
clear refusals, read-only, and one connection however many requests arrive."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import psycopg

from mobvibe.client import JobQueue
from mobvibe.sql import store
from tests.support.http import get
from tests.web.conftest import EveryState, db_counts


def api(state: EveryState, path: str) -> Any:
    code, headers, body = get(state.port, path)
    assert code == 200, body
    assert headers["Content-Type"] == "application/json"
    return json.loads(body)


def connections(conn: psycopg.Connection[Any], application: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
        "AND datname = current_database()",
        [application],
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_the_api_answers_with_the_database_numbers_and_rows(
    every_state: EveryState, conn: psycopg.Connection[Any]
) -> None:
    stats = api(every_state, "/api/stats")
    counts = db_counts(conn)
    assert {name: stats[f"{name}_count"] for name in counts} == counts
    assert stats["waiting_retry_count"] == 1  # the retry
    assert stats["delayed_count"] == 1  # the job scheduled for later, never attempted
    assert (
        stats["completed_in_window"],
        stats["dead_lettered_in_window"],
        stats["cancelled_in_window"],
    ) == (4, 1, 2)
    assert stats["window_minutes"] == len(stats["per_minute"]) == 15
    assert sum(m["completed"] for m in stats["per_minute"]) == 4
    assert stats["running_count"] == 1 and stats["last_reaper_sweep"]

    (running,) = api(every_state, "/api/workers")["running"]
    assert running["job_id"] == str(every_state.running) and running["silent"] is False

    pending = api(every_state, "/api/jobs?status=pending")["jobs"]
    assert {j["id"] for j in pending} == {
        str(every_state.waiting),
        str(every_state.scheduled),
        str(every_state.retrying),
    }
    limited = api(every_state, f"/api/jobs?session={every_state.session}&limit=1")
    assert [j["id"] for j in limited["jobs"]] == [str(every_state.waiting)]
    assert limited["limit"] == 1

    dead = api(every_state, f"/api/jobs/{every_state.dead}")
    assert dead["job"]["status"] == "failed" and "lease_token" not in dead["job"]
    assert [a["attempt"] for a in dead["attempts"]] == [1, 2]
    done = api(every_state, f"/api/jobs/{every_state.completed[0]}")
    assert [e["kind"] for e in done["events"]] == ["step", "step", "done"]
    assert done["job"]["output"].startswith("Changed 3 files.")


def test_refusals_are_clear_and_the_pages_are_read_only(every_state: EveryState) -> None:
    for path, code, words in (
        ("/api/jobs?status=done", 400, "status must be one of pending"),
        ("/api/jobs?limit=0", 400, "limit must be a number from 1 to 1000"),
        ("/api/jobs?session=s1", 400, "session must be a UUID"),
        ("/api/jobs/nope", 400, "a job id must be a UUID"),
        (f"/api/jobs/{uuid.uuid4()}", 404, "not found"),
        ("/api/nothing", 404, "no page at /api/nothing"),
    ):
        status, headers, body = get(every_state.port, path)
        assert status == code, path
        assert headers["Content-Type"] == "application/json"
        assert words in json.loads(body)["error"], path
    status, headers, body = get(every_state.port, "/jobs/nope")
    assert status == 400 and headers["Content-Type"].startswith("text/html")
    assert b"a job id must be a UUID" in body
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    for method in ("POST", "PUT", "DELETE"):
        for path in ("/", "/api/stats", "/metrics"):
            code, headers, _ = get(every_state.port, path, method)
            assert (code, headers["Allow"]) == (405, "GET, HEAD"), (method, path)
    for path in ("/", "/jobs", "/api/stats", "/metrics", "/readyz"):
        code, headers, body = get(every_state.port, path, "HEAD")
        assert (code, body) == (200, b""), path
        assert int(headers["Content-Length"]) > 0, path


def test_every_page_and_scrape_shares_the_http_childs_one_connection(
    every_state: EveryState, conn: psycopg.Connection[Any]
) -> None:
    paths = ["/", "/jobs", "/api/stats", "/api/jobs", "/metrics", "/readyz"] * 5
    codes: list[int] = []
    threads = [
        threading.Thread(target=lambda p=p: codes.append(get(every_state.port, p)[0]))
        for p in paths
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert codes == [200] * len(paths)
    assert connections(conn, "mobvibe-metrics") == 1


def test_the_users_waiting_for_their_limit_are_on_the_api_and_the_front_page(
    queue: JobQueue, conn: psycopg.Connection[Any], web: tuple[Any, int]
) -> None:
    _, port = web
    user = uuid.uuid4()
    for n in range(3):
        queue.enqueue(f"prompt {n}", session_id=queue.create_session(user_id=user))
    queue.enqueue("the backend's")
    conn.execute("SELECT queue_set_user_limit(%s, 1)", [user])
    assert store.claim(conn, "host:0:1:abc") is not None  # the user's first
    code, _, body = get(port, "/api/stats")
    assert code == 200, body
    assert json.loads(body)["users_waiting"] == [{"user_id": str(user), "waiting": 2, "running": 1}]
    code, _, page = get(port, "/")
    assert code == 200 and b'id="users-waiting"' in page and str(user).encode() in page
