"""The tools run with the least role they need: the supervisor, the reaper and the doctor as a
member of mobvibe_worker (no read of queue_migrations), mobvibe-queue enqueue as a producer."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mobvibe.client import JobQueue
from tests.support.commands import run_command
from tests.support.rows import count


def test_a_worker_login_runs_the_supervisor_the_reaper_and_the_doctor(
    queue: JobQueue, conn: Any, login_role: Callable[..., str]
) -> None:
    worker = login_role("mobvibe_worker")
    producer = login_role("mobvibe_producer")
    made = run_command("mobvibe-queue", "enqueue", "one", "two", url=producer)
    assert made.returncode == 0, made.stderr
    done = run_command(
        "mobvibe-supervisor",
        "--demo",
        "--drain",
        "--workers",
        "2",
        "--metrics-port",
        "0",
        url=worker,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert count(conn, "completed") == 2
    swept = run_command("mobvibe-reaper", "--once", url=worker)
    assert swept.returncode == 0, swept.stderr
    assert json.loads(swept.stdout)["requeued"] == 0
    checked = run_command("mobvibe-queue", "doctor", url=worker)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Traceback" not in checked.stdout + checked.stderr


def test_a_role_of_the_wrong_kind_gets_one_line(login_role: Callable[..., str]) -> None:
    monitor = login_role("mobvibe_monitor")
    refused = run_command("mobvibe-queue", "enqueue", "a prompt", url=monitor)
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert refused.stderr.strip().count("\n") == 0 and "mobvibe_producer" in refused.stderr
