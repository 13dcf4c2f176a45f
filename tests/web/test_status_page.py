"""The status pages of a live supervisor, loaded in headless Chromium: the numbers shown are
the database's, user text is shown and never run, and the pages are photographed for the
README (`make screenshots` writes them to docs/screenshots)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg

from mobvibe.client import JobQueue
from mobvibe.sql import store
from tests.support.rows import scalar
from tests.support.supervisor import FAST
from tests.support.waiting import wait_for
from tests.web.conftest import AGENT, Browser, EveryState, db_counts, status

# The jobs of one status that ended within the page's 15 minutes (the current one included).
WINDOW = (
    "SELECT count(*) FROM coding_jobs WHERE status = %s "
    "AND completed_at >= date_trunc('minute', now()) - interval '14 minutes'"
)


def url(state: EveryState, path: str) -> str:
    return f"http://127.0.0.1:{state.port}{path}"


def seconds(shown: str) -> float:
    """A shown age ("42 s", "3 min", "1.5 h") in seconds."""
    number, unit = shown.split()
    return float(number) * {"s": 1, "min": 60, "h": 3600, "d": 86400}[unit]


def test_the_front_page_shows_the_numbers_the_database_holds(
    every_state: EveryState, conn: psycopg.Connection[Any], browser: Browser, shots: Path
) -> None:
    page = browser.dom(url(every_state, "/"))
    counts = db_counts(conn)
    assert counts == {"pending": 3, "processing": 1, "completed": 4, "failed": 1, "cancelled": 2}
    for name, value in counts.items():
        assert page.text(f"count-{name}") == str(value), name
    oldest = scalar(  # the job due longest, since it came due
        conn,
        "SELECT extract(epoch FROM now() - min(run_at)) FROM coding_jobs "
        "WHERE status = 'pending' AND run_at <= now()",
    )
    assert abs(seconds(page.text("oldest-pending")) - float(oldest)) <= 5
    assert page.text("retries-waiting") == "1"  # the retry
    assert page.text("delayed") == "1"  # the job scheduled for later, never attempted

    for shown, kind in (
        ("completed", "completed"),
        ("dead-lettered", "failed"),
        ("cancelled", "cancelled"),
    ):
        ended = scalar(conn, WINDOW, [kind])
        assert page.text(f"window-{shown}") == str(ended), shown

    assert page.text("running-count") == "1"
    running_rows = [r for r in page.rows if r.get("data-job") == str(every_state.running)]
    assert len(running_rows) == 1 and "Port the app to Android tablets" in running_rows[0]["text"]
    worker = scalar(conn, "SELECT worker_id FROM coding_jobs WHERE id = %s", [every_state.running])
    assert worker in running_rows[0]["text"]

    dead_section = page.markup.split('id="dead-letters"')[1].split('id="cancellations"')[0]
    assert str(every_state.dead) in dead_section
    cancelled = [
        str(j)
        for (j,) in conn.execute(
            "SELECT id FROM coding_jobs WHERE status = 'cancelled' ORDER BY completed_at DESC"
        )
    ]
    assert page.ids()[-len(cancelled) :] == cancelled
    assert "meta" in page.tags  # the page refreshes itself (<meta http-equiv="refresh">)
    assert 'http-equiv="refresh" content="5"' in page.markup
    browser.screenshot(url(every_state, "/"), shots / "status-overview.png", "1280,1000")


def test_the_job_list_shows_every_row_and_filters_by_status_and_session(
    every_state: EveryState, conn: psycopg.Connection[Any], browser: Browser, shots: Path
) -> None:
    page = browser.dom(url(every_state, "/jobs"))
    in_db = {str(j): s for j, s in conn.execute("SELECT id, status FROM coding_jobs")}
    shown = {row["data-job"]: row["data-status"] for row in page.rows if "data-status" in row}
    assert shown == in_db and page.text("jobs-shown") == str(len(in_db))
    newest_first = [str(j) for (j,) in conn.execute("SELECT id FROM coding_jobs ORDER BY seq DESC")]
    assert page.ids() == newest_first

    pending = browser.dom(url(every_state, "/jobs?status=pending"))
    assert set(pending.ids()) == {
        str(j) for j in (every_state.waiting, every_state.scheduled, every_state.retrying)
    }
    waiting_row = next(r for r in pending.rows if r["data-job"] == str(every_state.waiting))
    assert "waits for its session" in waiting_row["text"]

    session = browser.dom(url(every_state, f"/jobs?session={every_state.session}&limit=10"))
    assert session.ids() == [str(every_state.waiting), str(every_state.running)]
    browser.screenshot(url(every_state, "/jobs"), shots / "status-jobs.png")


def test_a_jobs_page_shows_its_fields_attempts_output_and_events(
    every_state: EveryState, conn: psycopg.Connection[Any], browser: Browser, shots: Path
) -> None:
    done = every_state.completed[0]
    detail = store.job_detail(conn, done)
    assert detail is not None and detail.job.output
    page = browser.dom(url(every_state, f"/jobs/{done}"))
    assert page.text("job-id") == str(done)
    assert page.text("prompt") == detail.job.prompt
    assert page.text("output") == detail.job.output.strip()
    assert page.ids("data-attempt") == [str(a.attempt) for a in detail.attempts] == ["1"]
    assert page.ids("data-event") == [str(e.id) for e in detail.events]
    assert len(detail.events) == 3 and "reading the project" in page.markup

    dead = browser.dom(url(every_state, f"/jobs/{every_state.dead}"))
    attempts = [r for r in dead.rows if "data-attempt" in r]
    assert [r["data-attempt"] for r in attempts] == ["1", "2"]
    assert all("could not resolve the dependency tree" in r["text"] for r in attempts)
    assert status(conn, every_state.dead) == ("failed", 2)
    browser.screenshot(url(every_state, f"/jobs/{done}"), shots / "status-job.png", "1280,1060")


INJECTED = '<script>document.title="pwned"</script><img src=x onerror="alert(1)"> & "quotes"'


def test_prompts_outputs_and_errors_are_shown_as_text_and_never_run(
    queue: JobQueue,
    conn: psycopg.Connection[Any],
    supervisor: Any,
    browser: Browser,
) -> None:
    worked = queue.enqueue(f"{INJECTED} (worked)")
    failed = queue.enqueue(f"{INJECTED} (fails)", max_retries=1)
    running = supervisor("--workers", "1", *AGENT, *FAST, metrics=True)
    wait_for(
        lambda: status(conn, worked)[0] == "completed" and status(conn, failed)[0] == "failed",
        message="both jobs to end",
    )
    conn.execute(
        "UPDATE coding_jobs SET error_message = %s, end_reason = %s WHERE id = %s",
        [INJECTED, INJECTED, failed],
    )
    for path in ("/", "/jobs", f"/jobs/{worked}", f"/jobs/{failed}"):
        page = browser.dom(f"http://127.0.0.1:{running.port}{path}")
        assert "script" not in page.tags and "img" not in page.tags, path
        assert re.search(r"<title>[^<]*MobVibe queue</title>", page.markup), path
        assert "&lt;script&gt;" in page.markup, path
    shown = browser.dom(f"http://127.0.0.1:{running.port}/jobs/{worked}")
    assert shown.text("prompt") == f"{INJECTED} (worked)"


# A prompt of one long word (a URL, a stack trace's path, base64): nowhere to break a line.
LONG_WORD = "https://github.com/mobvibe/app/blob/main/" + "WideWordsWithoutSpaces" * 40
# How far the page and its widest table reach, against the viewport's width.
REACH = """({
  viewport: window.innerWidth,
  page: document.documentElement.scrollWidth,
  tables: Math.max(...[...document.querySelectorAll("table, pre, dl")]
    .map(e => Math.ceil(e.getBoundingClientRect().right))),
})"""


def test_a_prompt_without_spaces_wraps_inside_the_page(
    queue: JobQueue, web: tuple[Any, int], browser: Browser
) -> None:
    _, port = web
    job = queue.enqueue(LONG_WORD, idempotency_key=LONG_WORD[-200:])
    queue.enqueue("Add dark mode to the settings screen", delay=3600)
    for path in ("/jobs", f"/jobs/{job}"):
        reach = browser.evaluate(f"http://127.0.0.1:{port}{path}", REACH, width=1024)
        assert reach["page"] <= reach["viewport"], (path, reach)
        assert reach["tables"] <= reach["viewport"], (path, reach)
