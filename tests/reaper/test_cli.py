"""mobvibe-reaper as a real process: cron mode, the daemon, signals, database outages."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

import pytest

from mobvibe.client import JobQueue
from tests.reaper.conftest import Daemon
from tests.support.commands import run_command
from tests.support.waiting import wait_for

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/x"
FAST = ["--interval", "0.2"]


def short_timeout(conn: Any) -> None:
    """A heartbeat timeout of 1 s, the shortest the database accepts, for every reaper."""
    conn.execute("UPDATE queue_config SET heartbeat_timeout = '1 second'")


def expire(conn: Any, job_id: Any, seconds: float = 5) -> None:
    conn.execute(
        "UPDATE coding_jobs SET heartbeat_at = now() - %s * interval '1 second' WHERE id = %s",
        [seconds, job_id],
    )


def test_once_against_an_unreachable_database_prints_one_line_and_exits_1() -> None:
    done = run_command("mobvibe-reaper", "--once", url=UNREACHABLE)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: cannot connect to the database")
    assert "Traceback" not in done.stderr


def test_once_sweeps_and_prints_a_json_summary(queue: JobQueue, conn: Any, db_url: str) -> None:
    job_id = queue.enqueue("orphaned")
    assert queue.claim() is not None
    expire(conn, job_id, 60)
    done = run_command("mobvibe-reaper", "--once", url=db_url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert {"requeued", "dead_lettered", "pruned", "duration_ms"} <= summary.keys()
    assert (summary["requeued"], summary["dead_lettered"], summary["pruned"]) == (1, 0, 0)
    assert summary["waiting_retries"] == 1 and summary["next_retry_at"]
    # the limits it applied are the database's
    assert summary["heartbeat_timeout_s"] == 30 and summary["retain_failed_s"] == 30 * 86400
    requeued = [json.loads(line) for line in done.stderr.splitlines() if '"job_requeued"' in line]
    assert [(e["job_id"], e["reason"]) for e in requeued] == [(str(job_id), "heartbeat_expired")]


def test_once_on_an_unmigrated_database_says_to_migrate(new_database: Any) -> None:
    done = run_command("mobvibe-reaper", "--once", url=new_database("mobvibe_unmigrated"))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "Error: the database schema is not up to date: run `mobvibe-queue migrate`"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--interval", "7x"], "'7x' is not a duration"),
        (["--interval", "0"], "'0' must be greater than 0"),
        (["--batch-size", "0"], "--batch-size"),
        (["--heartbeat-timeout", "5s"], "`mobvibe-queue config --heartbeat-timeout ...`"),
        (["--retain-completed", "7d"], "`mobvibe-queue config --retain-completed ...`"),
        (["--retain-failed", "0"], "`mobvibe-queue config --retain-failed ...`"),
        (["--heartbeat-interval", "5s"], "No such option"),
    ],
)
def test_bad_settings_are_one_clear_line_and_exit_2(args: list[str], message: str) -> None:
    done = run_command("mobvibe-reaper", "--once", *args, url=UNREACHABLE)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.startswith("Error:")]) == 1


def test_the_supervisors_heartbeat_variables_do_not_reach_the_reaper(
    db_url: str, conn: Any
) -> None:
    """A ConfigMap shared with the supervisor sets MOBVIBE_HEARTBEAT_TIMEOUT: ignored here."""
    done = run_command(
        "mobvibe-reaper",
        "--once",
        url=db_url,
        env={"MOBVIBE_HEARTBEAT_TIMEOUT": "1", "MOBVIBE_RETAIN_FAILED": "0"},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["heartbeat_timeout_s"] == 30


def test_daemon_requeues_an_expired_job_and_exits_0_on_sigterm(
    queue: JobQueue, conn: Any, db_url: str, daemon: Callable[..., Daemon]
) -> None:
    short_timeout(conn)
    running = daemon(db_url, *FAST)
    running.wait_event("reaper_swept")
    job_id = queue.enqueue("orphaned")
    assert queue.claim() is not None
    expire(conn, job_id)
    wait_for(
        lambda: (job := queue.get(job_id)) and job.retry_count == 1,
        timeout=5,
        message="the job requeued by the daemon",
    )
    assert running.wait_event("job_requeued")[0]["job_id"] == str(job_id)

    running.proc.send_signal(signal.SIGTERM)
    assert running.proc.wait(5) == 0
    assert running.events("reaper_stopped")


def test_daemon_survives_losing_its_connection(
    queue: JobQueue, conn: Any, db_url: str, daemon: Callable[..., Daemon]
) -> None:
    short_timeout(conn)
    running = daemon(db_url, *FAST)
    running.wait_event("reaper_swept")
    killed = conn.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'mobvibe-reaper' "
        "AND datname = current_database()"
    ).fetchone()[0]
    assert killed == 1
    running.wait_event("reaper_sweep_failed")
    job_id = queue.enqueue("orphaned after the outage")
    assert queue.claim() is not None
    expire(conn, job_id)
    wait_for(
        lambda: (job := queue.get(job_id)) and job.retry_count == 1,
        timeout=10,
        message="the job requeued after the reconnect",
    )
    running.proc.send_signal(signal.SIGINT)
    assert running.proc.wait(5) == 0


def test_daemon_waits_out_an_unreachable_database_and_still_stops_cleanly(
    daemon: Callable[..., Daemon],
) -> None:
    running = daemon(UNREACHABLE, *FAST)
    failures = running.wait_event("reaper_sweep_failed", count=2)
    assert failures[1]["retry_in_s"] > failures[0]["retry_in_s"]  # backing off
    assert running.proc.poll() is None
    running.proc.send_signal(signal.SIGTERM)
    assert running.proc.wait(5) == 0
