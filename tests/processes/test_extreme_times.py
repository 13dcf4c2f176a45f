"""Every reader of the queue's time survives whatever the database holds.

PostgreSQL keeps times from 4713 BC to 294276 AD and 'infinity'; Python from year 1 to
9999. A producer can no longer insert such a run_at (test_insert_rules.py), but rows
stored before, or by the owner, still hold them. With the triggers off (the owner's way
of making any row the CHECKs allow), jobs in every status get the extremes in every time
column; then the hub (its next-run-at, behind a live supervisor), the embedded reaper,
`mobvibe-reaper --once`, get_queue_stats(), `stats`, `jobs list`, `jobs show`, `workers`,
`dlq list`, `doctor`, the status pages and /readyz all keep working.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import Result

from mobvibe.sql import db, store
from tests.reaper.conftest import cli  # noqa: F401 - a fixture
from tests.support.commands import run_command
from tests.support.http import get
from tests.support.rows import triggers_off
from tests.support.supervisor import FAST
from tests.support.waiting import wait_for

HANDLER = ["--handler", "tests.processes.handlers:by_prompt"]
# The ends of PostgreSQL's time, and the first years past Python's.
TIMES = {
    "high": "infinity",
    "low": "-infinity",
    "far": "294276-12-31 23:59:59+00",
    "ancient": "4713-01-01 00:00:00+00 BC",
    "y10k": "10000-01-01 00:00:00+00",
}

JOBS = """
INSERT INTO coding_jobs (id, session_id, prompt, status, run_at, created_at, updated_at,
                         started_at, heartbeat_at, completed_at, worker_id, lease_token,
                         attempt, retry_count, max_retries, end_reason, error_message,
                         cancel_requested_at)
VALUES
  -- pending, never due: the hub's next-run-at and the statistics read these
  (%(pending_high)s, %(session)s, 'never due', 'pending', %(high)s, %(low)s, %(high)s,
   NULL, NULL, NULL, NULL, NULL, 0, 0, 3, NULL, NULL, NULL),
  (%(pending_far)s, %(session)s, 'never due either', 'pending', %(far)s, %(high)s, %(low)s,
   NULL, NULL, NULL, NULL, NULL, 0, 0, 3, NULL, NULL, NULL),
  -- processing on a worker of no pod: silent since the dawn of time (the reaper's)
  (%(dead)s, %(session)s, 'dead worker', 'processing', %(low)s, %(low)s, %(low)s,
   %(low)s, %(low)s, NULL, 'nowhere:0:1:x', gen_random_uuid(), 1, 0, 3, NULL, NULL, %(low)s),
  -- processing, renewed at the end of time: never reaped, shown by `workers`
  (%(alive)s, %(session)s, 'alive forever', 'processing', %(high)s, %(high)s, %(high)s,
   %(high)s, %(high)s, NULL, 'nowhere:1:2:x', gen_random_uuid(), 1, 0, 3, NULL, NULL, NULL),
  -- finished at either end of time
  (%(done_high)s, %(session)s, 'done', 'completed', %(high)s, %(low)s, %(high)s,
   %(low)s, NULL, %(high)s, NULL, gen_random_uuid(), 1, 0, 3, 'completed', NULL, NULL),
  (%(done_low)s, %(session)s, 'done long ago', 'completed', %(ancient)s, %(ancient)s,
   %(ancient)s, %(ancient)s, NULL, %(ancient)s, NULL, gen_random_uuid(), 1, 0, 3, 'completed',
   NULL, NULL),
  (%(dead_letter)s, %(session)s, 'failed', 'failed', %(far)s, %(low)s, %(y10k)s,
   %(far)s, NULL, %(y10k)s, NULL, NULL, 3, 3, 3, 'error', 'boom', NULL),
  (%(cancelled)s, %(session)s, 'cancelled', 'cancelled', %(low)s, %(far)s, %(high)s,
   NULL, NULL, %(high)s, NULL, NULL, 0, 0, 3, 'cancelled', NULL, %(high)s)
"""
ATTEMPTS_AND_EVENTS = [
    """INSERT INTO coding_job_attempts (job_id, attempt, worker_id, started_at, ended_at,
                                        end_reason)
       VALUES (%(done_high)s, 1, 'w', %(low)s, %(high)s, 'completed'),
              (%(done_low)s, 1, 'w', %(ancient)s, %(y10k)s, 'completed'),
              (%(dead)s, 1, 'nowhere:0:1:x', %(low)s, NULL, NULL),
              (%(dead_letter)s, 3, 'w', %(far)s, %(far)s, 'error')""",
    """INSERT INTO coding_job_events (job_id, session_id, attempt, kind, payload, created_at)
       VALUES (%(done_high)s, %(session)s, 1, 'step', '{"at": "the end"}', %(high)s),
              (%(done_high)s, %(session)s, 1, 'step', '{"at": "the start"}', %(low)s)""",
    # kept: the finished jobs stay for every reader
    "UPDATE queue_config SET retain_completed = NULL, retain_failed = NULL",
]


@pytest.fixture
def extremes(conn: Any) -> dict[str, Any]:
    """The jobs, their attempts and events, with times at the ends of PostgreSQL's range."""
    ids: dict[str, Any] = {
        name: uuid.uuid4()
        for name in [
            "session",
            "pending_high",
            "pending_far",
            "dead",
            "alive",
            "done_high",
            "done_low",
            "dead_letter",
            "cancelled",
        ]
    }
    times = TIMES
    conn.execute("INSERT INTO coding_sessions (id) VALUES (%s)", [ids["session"]])
    with triggers_off(conn):
        conn.execute(JOBS, {**ids, **times})
        for statement in ATTEMPTS_AND_EVENTS:
            conn.execute(statement, {**ids, **times})
    return ids


def run(invoke: Callable[..., Result], *args: str) -> str:
    """Run mobvibe-queue: exit 0 (1 for the doctor, which finds these rows odd), no
    traceback (the cli fixture raises one); its standard output."""
    result = invoke(*args)
    assert result.exit_code in ((0, 1) if args[0] == "doctor" else (0,)), result.output
    return result.stdout


def test_the_tools_read_times_beyond_pythons_range(
    db_url: str,
    extremes: dict[str, Any],
    cli: Callable[..., Result],  # noqa: F811 - the fixture
) -> None:
    with db.connect(db_url) as conn:
        assert store.next_run(conn).next_run_at == db.TIME_MAX  # the hub's question
        stats = store.stats(conn)
        # neither pending job is ever due: no age of a due job, two delayed
        assert stats.pending_count == 2 and stats.oldest_pending_age is None
        assert stats.delayed_count == 2
        assert store.get_job(conn, extremes["pending_high"]) is not None
        assert len(store.running_jobs(conn)) == 2
    once = run_command("mobvibe-reaper", "--once", url=db_url)
    assert once.returncode == 0 and "Traceback" not in once.stderr, once.stderr
    # the attempt silent since -infinity, its cancel asked then: ended cancelled
    assert json.loads(once.stdout)["cancelled"] == 1, once.stdout
    assert json.loads(run(cli, "stats", "--json"))["cancelled_count"] == 2
    run(cli, "stats")
    assert str(extremes["alive"]) in run(cli, "jobs", "list")
    assert len(run(cli, "jobs", "list", "--json").splitlines()) == 8
    for job in ("done_high", "done_low", "dead_letter", "cancelled", "alive", "pending_high"):
        assert str(extremes[job]) in run(cli, "jobs", "show", str(extremes[job]))
        json.loads(run(cli, "jobs", "show", str(extremes[job]), "--json"))
    assert "nowhere:1:2:x" in run(cli, "workers")
    assert str(extremes["dead_letter"]) in run(cli, "dlq", "list")
    run(cli, "doctor")


def test_a_supervisor_serves_and_sweeps_over_times_beyond_pythons_range(
    db_url: str, extremes: dict[str, Any], supervisor: Any
) -> None:
    running = supervisor("--workers", "1", *HANDLER, *FAST, metrics=True)
    running.wait_event("reaper_swept", count=5, timeout=20)
    assert wait_for(lambda: get(running.port, "/readyz")[0] == 200, message="ready")
    pages = ["/", "/jobs", "/jobs?status=failed", "/api/stats", "/api/jobs", "/metrics"]
    pages += [f"/jobs/{extremes[j]}" for j in ("done_high", "dead_letter", "alive", "cancelled")]
    pages += [f"/api/jobs/{extremes['done_high']}"]
    for page in pages:
        assert get(running.port, page)[0] == 200, page
    assert not running.events("child_exited"), running.log()[-3000:]
    assert running.proc.poll() is None
