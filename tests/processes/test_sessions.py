"""A coding session with a live supervisor: one prompt at a time and in order, a cancel from
the phone that ends the whole process tree, the agent's output and its progress."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from mobvibe.client import JobQueue
from mobvibe.sql import store
from tests.support.processes import command_processes
from tests.support.supervisor import FAST, Running
from tests.support.waiting import wait_for

HANDLERS = "tests.processes.handlers"
# A command that reports progress on descriptor 3, says something on stdout and then
# sleeps until it is killed (or the prompt's seconds are up).
AGENT = (
    'echo \'{"kind": "step", "text": "thinking"}\' >&3; '
    "echo 'not json, kept as text' >&3; "
    'echo "agent output for $JOB_ID"; '
    'exec sleep "$(cat)"'
)


def status(queue: JobQueue, job_id: Any) -> str | None:
    return getattr(queue.get(job_id), "status", None)


def agent(supervisor: Callable[..., Running], *args: str) -> Running:
    return supervisor("--exec", AGENT, *FAST, *args)


def test_a_running_command_is_cancelled_and_gone_and_the_next_prompt_starts_after_it(
    queue: JobQueue,
    conn: psycopg.Connection[Any],
    supervisor: Callable[..., Running],
) -> None:
    session = queue.create_session()
    first = queue.enqueue("60", session_id=session)
    second = queue.enqueue("0.2", session_id=session)
    running = agent(supervisor, "--workers", "2")
    wait_for(
        lambda: status(queue, first) == "processing" and command_processes(first),
        timeout=20,
        message="the first prompt running",
    )
    time.sleep(0.5)  # two idle-looking workers: the second prompt must still wait
    assert status(queue, second) == "pending"
    assert queue.cancel(first) is True
    asked = time.monotonic()
    wait_for(
        lambda: status(queue, first) == "cancelled" and not command_processes(first),
        timeout=10,
        interval=0.01,
        message="the first prompt cancelled and its command gone",
    )
    gone = time.monotonic() - asked
    wait_for(
        lambda: status(queue, second) == "completed",
        timeout=20,
        message="the session's next prompt done",
    )
    started_second = queue.attempts(second)[0].started_at
    cancelled_at = queue.get(first).completed_at  # type: ignore[union-attr]
    assert started_second >= cancelled_at, "the next prompt started before the end"
    assert gone < 1.0, f"cancel took {gone:.2f} s"
    assert running.events("job_cancelled")
    attempts = queue.attempts(first)
    assert [(a.attempt, a.end_reason) for a in attempts] == [(1, "cancelled")]
    assert queue.get(first).retry_count == 0  # type: ignore[union-attr]


def test_the_output_and_the_progress_of_a_command_are_kept(
    queue: JobQueue, supervisor: Callable[..., Running]
) -> None:
    job = queue.enqueue("0")
    agent(supervisor, "--workers", "1", "--drain").wait_exit(30)
    row = queue.get(job)
    assert row is not None and row.status == "completed"
    assert row.output == f"agent output for {job}\n"
    events = queue.events(job)
    assert [(e.kind, e.payload) for e in events] == [
        ("step", {"kind": "step", "text": "thinking"}),
        ("text", {"text": "not json, kept as text"}),
    ]
    assert all(e.attempt == 1 for e in events)


def test_a_chatty_command_is_rate_limited_and_never_blocked(
    queue: JobQueue,
    conn: psycopg.Connection[Any],
    supervisor: Callable[..., Running],
    tmp_path: Path,
) -> None:
    flood = tmp_path / "flood.py"  # a program of its own: the sandbox shows its file
    flood.write_text(
        "#!/usr/bin/env python3\n"
        "import os, sys\n"
        "out = os.fdopen(int(os.environ['MOBVIBE_PROGRESS_FD']), 'w')\n"
        "for i in range(200_000):\n"
        "    out.write(f'line {i}\\n')\n"
        "out.flush()\n"
        "sys.stdout.write('x' * 200_000)\n"  # more than the 64 KiB kept
    )
    flood.chmod(0o755)
    job = queue.enqueue("flood")
    started = time.monotonic()
    supervisor("--exec", str(flood), "--workers", "1", "--drain", *FAST).wait_exit(60)
    took = time.monotonic() - started
    row = queue.get(job)
    assert row is not None and row.status == "completed", row
    assert row.output is not None and len(row.output.encode()) == 64 * 1024
    events = store.events(conn, job, limit=100_000)
    kept = [e for e in events if e.kind != "dropped"]
    dropped = sum(e.payload["lines"] for e in events if e.kind == "dropped")
    assert 100 <= len(kept) < 1000  # a burst of 100, then 20 a second
    assert len(kept) + dropped == 200_000  # every line kept or counted, none queued
    assert took < 30


def test_a_python_handler_reports_progress_and_returns_its_output(
    queue: JobQueue, supervisor: Callable[..., Running]
) -> None:
    job = queue.enqueue("the prompt")
    supervisor("--handler", f"{HANDLERS}:talk", "--workers", "1", "--drain", *FAST).wait_exit(30)
    row = queue.get(job)
    assert row is not None and row.output == "done with the prompt"
    assert [(e.kind, e.payload) for e in queue.events(job)] == [
        ("step", {"kind": "step", "text": "reading"}),
        ("text", {"text": "plain words"}),
        ("done", {"kind": "done", "files": 2}),
    ]


def test_a_python_handler_sees_the_cancel(
    queue: JobQueue, conn: Any, supervisor: Callable[..., Running]
) -> None:
    job = queue.enqueue("wait for the cancel")
    supervisor("--handler", f"{HANDLERS}:polite", "--workers", "1", *FAST)
    wait_for(lambda: status(queue, job) == "processing", timeout=20, message="running")
    queue.cancel(job)
    wait_for(lambda: status(queue, job) == "cancelled", timeout=10, message="cancelled")
    assert queue.get(job).output == "stopped as asked"  # type: ignore[union-attr]


def test_a_python_handler_that_ignores_the_cancel_is_stopped_like_a_timed_out_one(
    queue: JobQueue, supervisor: Callable[..., Running]
) -> None:
    job = queue.enqueue("ignore the cancel")
    running = supervisor("--handler", f"{HANDLERS}:stubborn", "--workers", "1", *FAST)
    wait_for(lambda: status(queue, job) == "processing", timeout=20, message="running")
    queue.cancel(job)
    wait_for(lambda: status(queue, job) == "cancelled", timeout=20, message="cancelled")
    exits = running.wait_event("worker_exited")
    assert exits[0]["cause"] == "cancelled"
    assert queue.get(job).retry_count == 0  # type: ignore[union-attr]


def test_a_forged_cancel_notification_stops_nothing(
    queue: JobQueue,
    conn: psycopg.Connection[Any],
    supervisor: Callable[..., Running],
) -> None:
    job = queue.enqueue("2")
    agent(supervisor, "--workers", "1", "--drain")
    wait_for(lambda: command_processes(job), timeout=20, message="running")
    conn.execute("SELECT pg_notify('job_cancel', %s)", [f'{{"job_id": "{job}"}}'])
    wait_for(lambda: status(queue, job) == "completed", timeout=20, message="done anyway")


def test_sigterm_of_a_supervisor_ends_the_command_of_a_job_it_gives_back(
    queue: JobQueue, supervisor: Callable[..., Running]
) -> None:
    job = queue.enqueue("60")
    running = agent(supervisor, "--workers", "1", "--shutdown-timeout", "0.5")
    wait_for(lambda: command_processes(job), timeout=20, message="running")
    running.signal(signal.SIGTERM)
    assert running.wait_exit(30) == 0
    assert not command_processes(job)
    assert status(queue, job) == "pending"
