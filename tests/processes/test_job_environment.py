"""What a job's command is given: an allow-listed environment, never a database credential;
and what a forged notification can do to a supervisor: nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from mobvibe.client import JobQueue
from tests.support.supervisor import FAST, Running
from tests.support.waiting import wait_for


def test_the_job_command_gets_the_allow_list_and_what_exec_env_names_only(
    queue: JobQueue, conn: Any, supervisor: Callable[..., Running]
) -> None:
    job_id = queue.enqueue("print your environment")
    supervisor(
        "--exec",
        "env",
        "--exec-env",
        "AGENT_API_KEY",
        "--drain",
        "--workers",
        "1",
        *FAST,
        env={
            "PGPASSWORD": "S3cret",
            "PGUSER": "postgres",
            "MOBVIBE_SECRET_THING": "x",
            "AGENT_API_KEY": "key-for-the-agent",
            "UNLISTED_VARIABLE": "y",
            "LANG": "C.UTF-8",
        },
    ).wait_exit(30)
    job = queue.get(job_id)
    assert job is not None and job.status == "completed", job
    env = dict(line.split("=", 1) for line in (job.output or "").splitlines() if "=" in line)
    leaked = [name for name in env if name == "DATABASE_URL" or name.startswith(("PG", "MOBVIBE_"))]
    assert leaked == ["MOBVIBE_PROGRESS_FD"], leaked  # the one the job needs
    assert env["MOBVIBE_PROGRESS_FD"] == "3"
    assert "UNLISTED_VARIABLE" not in env
    assert env["AGENT_API_KEY"] == "key-for-the-agent"
    assert (env["JOB_ID"], env["ATTEMPT"]) == (str(job_id), "1")
    assert {"SESSION_ID", "PATH", "LANG"} <= env.keys()
    # the sandbox's own home and temporary directory, whatever the supervisor's are
    assert (env["HOME"], env["TMPDIR"]) == ("/home/job", "/tmp")


def test_a_forged_notification_only_wakes_the_workers(
    queue: JobQueue, conn: psycopg.Connection[Any], supervisor: Callable[..., Running]
) -> None:
    running = supervisor("--handler", "tests.processes.handlers:by_prompt", "--workers", "2", *FAST)
    running.wait_workers(2)
    for payload in (
        "not json",
        '{"job_id": "00000000-0000-0000-0000-000000000000"}',
        '{"job_id": 1, "priority": "x"}',
        "x" * 7000,
    ):
        conn.execute("SELECT pg_notify('new_job', %s)", [payload])
    job_id = queue.enqueue("ok")
    wait_for(
        lambda: getattr(queue.get(job_id), "status", None) == "completed",
        timeout=15,
        message="a real job done after the forged notifications",
    )
    assert running.proc.poll() is None
    assert not running.events("worker_exited")
