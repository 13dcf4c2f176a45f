"""mobvibe-queue jobs list / show / retry and workers: the queue as an operator browses it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from click.testing import Result

from mobvibe.client import JobQueue
from mobvibe.sql import store
from mobvibe.sql.jobs import NewJob
from mobvibe.vocabulary import EndReason
from tests.support.rows import WORKER, job_row
from tests.support.sqlclock import Clock

Cli = Callable[..., Result]
UNKNOWN = "00000000-0000-4000-8000-000000000000"


def twice_tried(conn: psycopg.Connection[Any], clock: Clock, queue: JobQueue) -> uuid.UUID:
    """A job whose first attempt reported progress and failed, and whose second completed."""
    job_id = queue.enqueue("Build a todo app")
    first = store.claim(conn, "host:0:100:abc")
    assert first is not None and first.id == job_id
    store.add_events(conn, job_id, first.lease_token, [("step", {"text": "reading <files>"})])
    assert store.end_attempt(
        conn, job_id, first.lease_token, EndReason.ERROR, "npm failed", "log 1"
    )
    clock.advance(3600)
    second = store.claim(conn, "host:1:101:abc")
    assert second is not None and second.id == job_id
    store.add_events(conn, job_id, second.lease_token, [("step", {"n": 1}), ("done", {"n": 2})])
    assert store.end_attempt(
        conn, job_id, second.lease_token, EndReason.COMPLETED, None, "all done"
    )
    return job_id


def test_jobs_list_shows_the_newest_submitted_first_with_what_each_does(
    queue: JobQueue, conn: Any, cli: Cli
) -> None:
    session = queue.create_session()
    running = queue.enqueue("Fix the crash on startup", session_id=session)
    waiting = queue.enqueue("Add dark mode", session_id=session)
    later = queue.enqueue("Write the tests", delay=3600)
    assert store.claim(conn, "host:0:7:abc") is not None

    result = cli("jobs", "list")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split()[:4] == ["JOB", "ID", "SESSION", "STATUS"]
    assert [row.split()[0] for row in rows] == [str(later), str(waiting), str(running)]
    assert "attempt 1 on host:0:7:abc" in rows[2] and "Fix the crash on startup" in rows[2]
    assert "waits for its session" in rows[1]
    assert rows[0].split()[2] == "pending" and "ready" not in rows[0]


def test_jobs_list_filters_by_status_and_session_and_says_when_there_are_more(
    queue: JobQueue, conn: Any, cli: Cli
) -> None:
    session = queue.create_session(max_concurrency=5)
    mine = queue.enqueue_many([NewJob(f"prompt {i}", session_id=session) for i in range(3)])
    queue.enqueue_many([NewJob("another session")] * 2)
    assert queue.cancel(mine[0]) is True

    by_session = cli("jobs", "list", "--session", str(session), "--json")
    assert [json.loads(line)["id"] for line in by_session.stdout.splitlines()] == [
        str(j) for j in reversed(mine)
    ]
    cancelled = cli("jobs", "list", "--status", "cancelled", "--json").stdout.splitlines()
    assert [json.loads(line)["id"] for line in cancelled] == [str(mine[0])]
    assert cli("jobs", "list", "--status", "failed").stdout.strip() == "no failed job"

    limited = cli("jobs", "list", "--limit", "2")
    assert len(limited.stdout.splitlines()) == 3  # a header and two jobs, for a pipe
    assert limited.stderr == "showing the newest 2: --limit shows more\n"  # for the person


def test_jobs_list_json_has_the_row_and_heads_of_prompt_and_error(
    queue: JobQueue, cli: Cli
) -> None:
    job_id = queue.enqueue("x" * 500, priority=7)
    (line,) = cli("jobs", "list", "--json").stdout.splitlines()
    record = json.loads(line)
    assert record["id"] == str(job_id) and record["status"] == "pending"
    assert record["priority"] == 7 and record["prompt_head"] == "x" * 80
    assert {"session_id", "created_at", "run_at", "worker_id", "error_head", "waiting_for"} <= set(
        record
    )


def test_jobs_show_prints_the_fields_every_attempt_the_output_and_the_events(
    queue: JobQueue, conn: Any, clock: Clock, cli: Cli
) -> None:
    job_id = twice_tried(conn, clock, queue)
    result = cli("jobs", "show", str(job_id))
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.startswith(f"Job {job_id}\n")
    assert "  status:           completed" in text
    assert "  failed attempts:  1 of at most 3" in text
    attempts = text.split("Attempts:\n")[1].split("Output")[0].splitlines()
    assert attempts[0].split() == [
        "#",
        "WORKER",
        "STARTED",
        "ENDED",
        "TOOK",
        "END",
        "REASON",
        "EVENTS",
        "ERROR",
    ]
    assert attempts[1].split()[:2] == ["1", "host:0:100:abc"] and "npm failed" in attempts[1]
    assert attempts[2].split()[:2] == ["2", "host:1:101:abc"] and "completed" in attempts[2]
    assert "Output (its end):\n  all done" in text
    events = text.split("Progress events:\n")[1].splitlines()
    assert len(events) == 4  # a header and three events, in order
    assert "reading <files>" in events[1] and '"n": 2' in events[3]


def test_jobs_show_json_is_the_database_without_the_lease(
    queue: JobQueue, conn: Any, clock: Clock, cli: Cli
) -> None:
    job_id = twice_tried(conn, clock, queue)
    shown = json.loads(cli("jobs", "show", str(job_id), "--json").stdout)
    row = job_row(conn, job_id)
    assert shown["job"]["id"] == str(job_id) and shown["job"]["status"] == row["status"]
    assert shown["job"]["output"] == "all done" and "lease_token" not in shown["job"]
    assert [(a["attempt"], a["end_reason"], a["error_message"]) for a in shown["attempts"]] == [
        (1, "error", "npm failed"),
        (2, "completed", None),
    ]
    assert [(e["attempt"], e["kind"], e["payload"]) for e in shown["events"]] == [
        (1, "step", {"text": "reading <files>"}),
        (2, "step", {"n": 1}),
        (2, "done", {"n": 2}),
    ]
    assert shown["events_truncated"] is False


def test_jobs_show_of_an_unknown_job_is_one_line_and_exit_1(cli: Cli) -> None:
    result = cli("jobs", "show", UNKNOWN)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: job {UNKNOWN} not found"
    assert cli("jobs", "show", "nope").stderr.strip() == (
        "Error: job id must be a UUID or the start of one (at least 4 hex digits), got 'nope'"
    )


def test_jobs_retry_submits_a_failed_or_cancelled_job_again(
    queue: JobQueue, conn: Any, cli: Cli
) -> None:
    dead = queue.enqueue("dead", max_retries=1)
    job = store.claim(conn, WORKER)
    assert job is not None
    assert store.fail(conn, dead, "boom", job.lease_token) is False  # dead-lettered
    cancelled = queue.enqueue("cancelled")
    assert queue.cancel(cancelled) is True

    for job_id in (dead, cancelled):
        result = cli("jobs", "retry", str(job_id))
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == f"{job_id} retried: pending, at the back of its session"
        after = job_row(conn, job_id)
        assert (after["status"], after["retry_count"]) == ("pending", 0)
    assert queue.cancel(cancelled) is True
    as_json = cli("jobs", "retry", str(cancelled), "--json")
    assert json.loads(as_json.stdout) == {"job_id": str(cancelled), "status": "pending"}


def test_jobs_retry_refuses_an_unfinished_or_completed_job_and_an_unknown_one(
    queue: JobQueue, conn: Any, cli: Cli
) -> None:
    pending = queue.enqueue("pending")
    result = cli("jobs", "retry", str(pending))
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: job {pending} is pending: only a failed or cancelled job can be retried "
        "(`mobvibe-queue cancel` stops an unfinished one)"
    )
    assert job_row(conn, pending)["status"] == "pending"
    unknown = cli("jobs", "retry", UNKNOWN)
    assert unknown.exit_code == 1 and unknown.stderr.strip() == f"Error: job {UNKNOWN} not found"


def test_workers_shows_what_each_worker_runs_since_when_and_its_heartbeat(
    queue: JobQueue, conn: Any, cli: Cli
) -> None:
    assert cli("workers").stdout.strip() == "no job is running (an idle worker holds none)"
    first, second = queue.enqueue("first job"), queue.enqueue("second job")
    assert (
        store.claim(conn, "host:0:10:abc") is not None
        and store.claim(conn, "host:1:11:abc") is not None
    )
    conn.execute(
        "UPDATE coding_jobs SET heartbeat_at = now() - interval '5 minutes' WHERE id = %s",
        [second],
    )
    header, *rows = cli("workers").stdout.splitlines()
    assert header.split()[:3] == ["WORKER", "JOB", "ID"]
    assert [row.split()[:3] for row in rows] == [
        ["host:0:10:abc", str(first), "1"],
        ["host:1:11:abc", str(second), "1"],
    ]
    assert "alive" in rows[0] and "silent: the reaper requeues it" in rows[1]

    records = [json.loads(line) for line in cli("workers", "--json").stdout.splitlines()]
    assert [(r["worker_id"], r["job_id"], r["silent"]) for r in records] == [
        ("host:0:10:abc", str(first), False),
        ("host:1:11:abc", str(second), True),
    ]
    assert records[1]["heartbeat_age_seconds"] > 290 and records[0]["started_at"]


def test_jobs_show_prints_the_head_of_a_long_prompt_and_its_size(queue: JobQueue, cli: Cli) -> None:
    prompt = "".join(f"line {i} " + "x" * 1000 + "\n" for i in range(1000))
    job_id = queue.enqueue(prompt)
    shown = cli("jobs", "show", str(job_id)).stdout
    assert len(shown) < 5000 and "line 1 xxx" in shown and "line 2 " not in shown
    assert (
        f"Prompt (its first 2,000 of {len(prompt):,} characters, {len(prompt):,} bytes: "
        "--full shows it whole, --json too):"
    ) in shown
    whole = cli("jobs", "show", "--full", str(job_id)).stdout
    assert "line 999 " in whole and len(whole) > len(prompt)
    assert json.loads(cli("jobs", "show", "--json", str(job_id)).stdout)["job"]["prompt"] == prompt
    short = cli("jobs", "show", str(queue.enqueue("Fix the crash\non startup"))).stdout
    assert "Prompt:\n  Fix the crash\n  on startup\nAttempts:" in short
