"""mobvibe-queue cancel, enqueue --idempotency-key, stats and watch for the session features."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Callable
from typing import Any

from click.testing import Result

from mobvibe.client import JobQueue
from mobvibe.sql import store
from tests.support.commands import start_command
from tests.support.rows import WORKER, job_row
from tests.support.waiting import wait_for

Cli = Callable[..., Result]
UNKNOWN = "00000000-0000-4000-8000-000000000000"


def test_cancel_says_what_became_of_each_job(queue: JobQueue, conn: Any, cli: Cli) -> None:
    session = queue.create_session()
    running = queue.enqueue("running", session_id=session)
    waiting = queue.enqueue("waiting", session_id=session)
    done = queue.enqueue("done")
    for _ in range(2):  # the first of each session
        assert store.claim(conn, WORKER) is not None
    assert queue.complete(done, job_row(conn, done)["lease_token"]) is True

    result = cli("cancel", str(waiting), str(running), str(done))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{waiting} cancelled",
        f"{running} cancel requested",
        f"{done} already finished (completed)",
    ]
    again = cli("cancel", str(running), str(waiting))
    assert again.stdout.splitlines() == [
        f"{running} cancel already requested",
        f"{waiting} already finished (cancelled)",
    ]


def test_cancel_an_unknown_job_says_so_and_exits_1_after_cancelling_the_others(
    queue: JobQueue, conn: Any, cli: Cli
) -> None:
    job = queue.enqueue("pending")
    result = cli("cancel", UNKNOWN, str(job))
    assert result.exit_code == 1
    assert result.stdout.strip() == f"{job} cancelled"
    assert result.stderr.strip() == f"Error: job {UNKNOWN} not found"
    assert job_row(conn, job)["status"] == "cancelled"


def test_cancel_a_whole_session(queue: JobQueue, conn: Any, cli: Cli) -> None:
    session = queue.create_session()
    first, second, third = (queue.enqueue(p, session_id=session) for p in "abc")
    assert store.claim(conn, WORKER) is not None
    result = cli("cancel", "--session", str(session))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [  # the latest first
        f"{third} cancelled",
        f"{second} cancelled",
        f"{first} cancel requested",
    ]
    assert cli("cancel", "--session", str(uuid.uuid4())).exit_code == 1
    empty = queue.create_session()
    nothing = cli("cancel", "--session", str(empty))
    assert (nothing.exit_code, nothing.stdout.strip()) == (
        0,
        f"session {empty}: no unfinished job",
    )


def test_cancel_needs_ids_or_a_session_and_checks_them_first(
    queue: JobQueue, conn: Any, cli: Cli
) -> None:
    job = queue.enqueue("untouched")
    assert cli("cancel").exit_code == 2
    both = cli("cancel", str(job), "--session", UNKNOWN)
    assert both.exit_code == 2 and "or --session" in both.stderr
    bad = cli("cancel", str(job), "not-a-uuid")
    assert bad.exit_code == 2
    assert (
        bad.stderr.strip()
        == "Error: job id must be a UUID or the start of one (at least 4 hex digits), "
        "got 'not-a-uuid'"
    )
    assert job_row(conn, job)["status"] == "pending"


def test_enqueue_with_an_idempotency_key_prints_the_same_id_twice(
    queue: JobQueue, conn: Any, cli: Cli
) -> None:
    session = str(queue.create_session())
    args = ("enqueue", "--session", session, "--idempotency-key", "tap-1", "build it")
    first, second = cli(*args), cli(*args)
    assert first.exit_code == second.exit_code == 0
    assert first.stdout == second.stdout
    assert [uuid.UUID(word) for word in first.stdout.split()][1] == uuid.UUID(session)
    assert conn.execute("SELECT count(*) FROM coding_jobs").fetchone() == (1,)


def test_an_idempotency_key_names_one_job_of_one_session(cli: Cli, queue: JobQueue) -> None:
    session = str(queue.create_session())
    two = cli("enqueue", "--session", session, "--idempotency-key", "k", "a", "b")
    assert two.exit_code == 2 and "one PROMPT" in two.stderr
    counted = cli("enqueue", "--session", session, "--idempotency-key", "k", "--count", "2", "a")
    assert counted.exit_code == 2
    no_session = cli("enqueue", "--idempotency-key", "k", "a")
    assert no_session.exit_code == 2 and "--session" in no_session.stderr
    too_long = cli("enqueue", "--session", session, "--idempotency-key", "k" * 201, "a")
    assert too_long.exit_code == 2 and "idempotency key" in too_long.stderr


def test_stats_show_the_cancelled_jobs(queue: JobQueue, cli: Cli) -> None:
    assert queue.cancel(queue.enqueue("never mind")) is True
    assert "  Cancelled:  1" in cli("stats").stdout.splitlines()
    assert json.loads(cli("stats", "--json").stdout)["cancelled_count"] == 1


def test_watch_follows_cancel_requests_and_progress(
    queue: JobQueue, conn: Any, db_url: str
) -> None:
    job = queue.enqueue("running")
    claimed = store.claim(conn, WORKER)
    assert claimed is not None
    channels = ["--channel", "job_cancel", "--channel", "job_progress"]
    lines: list[dict[str, Any]] = []
    with start_command(
        "mobvibe-queue", "watch", *channels, url=db_url, stderr=subprocess.DEVNULL
    ) as watch:
        assert watch.stdout is not None
        out = watch.stdout
        reader = threading.Thread(target=lambda: lines.extend(json.loads(x) for x in out))
        reader.start()
        try:
            # the last of its LISTEN statements shows until its first ping, 5 s later
            listening = (
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = 'mobvibe-listener' "
                "AND query LIKE 'LISTEN%%job_progress%%'"
            )
            wait_for(lambda: conn.execute(listening).fetchone()[0] == 1, message="LISTEN")
            assert queue.cancel(job) is True
            with queue.connection() as c:
                c.execute(
                    "SELECT queue_add_events(%s, %s, ARRAY['log'], ARRAY['{}'::jsonb])",
                    [job, claimed.lease_token],
                )
            wait_for(lambda: len(lines) >= 2, message="two notifications printed")
        finally:
            watch.terminate()
            reader.join(10)
    session = str(job_row(conn, job)["session_id"])
    assert lines[0] == {"channel": "job_cancel", "job_id": str(job), "session_id": session}
    assert lines[1]["channel"] == "job_progress" and lines[1]["kind"] == "log"
