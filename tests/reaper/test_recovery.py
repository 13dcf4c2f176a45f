"""How long a dead worker's job waits for the reaper: heartbeat timeout + one interval."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mobvibe.client import JobQueue
from mobvibe.sql.jobs import NewJob
from tests.reaper.conftest import Daemon
from tests.support.commands import BIN, command_env
from tests.support.rows import count
from tests.support.waiting import wait_for

TIMEOUT, INTERVAL, HEARTBEAT = 1.5, 0.2, 0.2
REAPER = ["--interval", str(INTERVAL)]


def configure_timeout(conn: Any) -> None:
    """The reaper's heartbeat timeout is the database's (the supervisor's own flag fences)."""
    conn.execute("UPDATE queue_config SET heartbeat_timeout = %s * interval '1 second'", [TIMEOUT])


SLACK = 0.5  # process scheduling and the test's own polling


def test_an_attempt_is_requeued_within_timeout_plus_interval_of_its_last_heartbeat(
    queue: JobQueue, conn: Any, db_url: str, daemon: Callable[..., Daemon]
) -> None:
    configure_timeout(conn)
    running = daemon(db_url, *REAPER)
    running.wait_event("reaper_swept")
    job_id = queue.enqueue("silent from the start")
    assert queue.claim() is not None
    claimed = time.monotonic()  # the claim is the attempt's last heartbeat
    wait_for(
        lambda: (job := queue.get(job_id)) and job.status == "pending",
        timeout=10,
        interval=0.01,
        message="the job requeued",
    )
    recovery = time.monotonic() - claimed
    assert TIMEOUT <= recovery + 0.05 <= TIMEOUT + INTERVAL * 1.1 + SLACK
    print(
        f"requeued {recovery:.2f} s after the last heartbeat "
        f"(timeout {TIMEOUT} s, interval {INTERVAL} s)"
    )


def test_kill_9_of_a_whole_supervisor_is_recovered_by_the_standalone_reaper(
    queue: JobQueue, conn: Any, db_url: str, daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    configure_timeout(conn)
    queue.enqueue_many([NewJob("sleep:30")] * 3)
    log = tmp_path / "supervisor.log"
    with log.open("wb") as out:
        pod = subprocess.Popen(
            [
                str(BIN / "mobvibe-supervisor"),
                "--workers",
                "3",
                "--no-reaper",
                "--handler",
                "tests.processes.handlers:by_prompt",
                "--metrics-port",
                "0",
                "--heartbeat-interval",
                str(HEARTBEAT),
                "--poll-interval",
                "0.5",
            ],
            env=command_env(db_url),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: count(conn, "processing") == 3, timeout=15, message="3 jobs running")
        running = daemon(db_url, *REAPER)
        running.wait_event("reaper_swept")
        os.killpg(pod.pid, signal.SIGKILL)  # the whole pod: no fast path, only the reaper
        killed = time.monotonic()
        wait_for(
            lambda: count(conn, "pending") == 3,
            timeout=10,
            interval=0.01,
            message="3 jobs requeued by the reaper",
        )
        recovery = time.monotonic() - killed
    finally:
        if pod.poll() is None:
            os.killpg(pod.pid, signal.SIGKILL)
        pod.wait(10)
    assert recovery <= TIMEOUT + INTERVAL * 1.1 + SLACK
    rows = conn.execute("SELECT retry_count, end_reason FROM coding_jobs").fetchall()
    assert rows == [(1, "heartbeat_expired")] * 3
    print(
        f"kill -9 of the pod: jobs requeued {recovery:.2f} s later "
        f"(timeout {TIMEOUT} s + interval {INTERVAL} s)"
    )
