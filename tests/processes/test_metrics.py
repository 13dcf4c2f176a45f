"""/metrics, /healthz and /readyz of a running supervisor."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mobvibe.client import JobQueue
from mobvibe.sql.jobs import NewJob
from mobvibe.sql.migrate import migrate
from tests.support.http import get_text
from tests.support.rows import count
from tests.support.supervisor import FAST
from tests.support.waiting import wait_for

HANDLER = ["--handler", "tests.processes.handlers:by_prompt"]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def test_metrics_match_the_database_and_never_go_down(
    queue: JobQueue, conn: Any, supervisor: Any
) -> None:
    queue.enqueue_many([NewJob("ok")] * 50 + [NewJob("fail", max_retries=1)] * 2)
    assert queue.cancel(queue.enqueue("never runs", delay=3600))
    # what the database's caps turned away, whoever wrote it
    conn.execute(
        "UPDATE queue_counters SET events_dropped = 7, event_bytes_dropped = 7000, "
        "releases_counted = 2"
    )
    running = supervisor("--workers", "2", *HANDLER, *FAST, metrics=True)
    wait_for(lambda: get_text(running.port, "/metrics")[0] == 200, message="the metrics endpoint")
    wait_for(
        lambda: count(conn, "completed") == 50 and count(conn, "failed") == 2,
        message="the jobs to finish",
    )
    text = wait_for(
        lambda: (
            (t := get_text(running.port, "/metrics")[1])
            and value(t, "mobvibe_jobs_completed_total") == 50
            and value(t, "mobvibe_queue_jobs", status="completed") == 50
            and t
        ),
        message="the scrape to show 50 completions (queue gauges cache 2 s)",
    )
    assert value(text, "mobvibe_queue_jobs", status="completed") == 50
    assert value(text, "mobvibe_queue_jobs", status="failed") == 2
    assert value(text, "mobvibe_queue_jobs", status="cancelled") == 1
    assert value(text, "mobvibe_queue_jobs", status="pending") == 0
    assert value(text, "mobvibe_jobs_dead_lettered_total") == 2
    assert value(text, "mobvibe_attempts_ended_total", reason="error") == 2
    assert value(text, "mobvibe_jobs_claimed_total") == 52
    assert value(text, "mobvibe_workers_alive") == 2
    assert value(text, "mobvibe_database_up") == 1
    assert value(text, "mobvibe_queue_events_dropped_total") == 7
    assert value(text, "mobvibe_queue_event_bytes_dropped_total") == 7000
    assert value(text, "mobvibe_queue_releases_counted_total") == 2
    assert "mobvibe_job_duration_seconds_bucket" in text
    assert "job_id" not in text and "session_id" not in text

    for pid in running.worker_pids():
        os.kill(pid, signal.SIGKILL)
    running.wait_workers(2)
    queue.enqueue_many([NewJob("ok")] * 10)
    wait_for(lambda: count(conn, "completed") == 60, message="10 more completions")
    after = wait_for(
        lambda: (
            (t := get_text(running.port, "/metrics")[1])
            and value(t, "mobvibe_jobs_completed_total") == 60
            and t
        ),
        message="counters carried across worker restarts",
    )
    assert value(after, "mobvibe_worker_restarts_total") >= 2
    assert value(after, "mobvibe_jobs_claimed_total") >= 62


def test_promtool_finds_nothing_on_a_live_scrape(queue: JobQueue, supervisor: Any) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make test unpacks it from Debian's prometheus)")
    queue.enqueue_many([NewJob("ok")] * 5)
    running = supervisor("--workers", "1", *HANDLER, *FAST, metrics=True)
    text = wait_for(
        lambda: (t := get_text(running.port, "/metrics")[1]) and "mobvibe_queue_jobs" in t and t,
        message="a scrape",
    )
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def stop_server(server: Any) -> None:
    from pgserver import pg_ctl

    pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=server.pgdata, user=server.system_user)


def test_health_and_readiness(own_server: Any, supervisor: Any, tmp_path: Path) -> None:
    url = str(own_server.get_uri())
    with psycopg.connect(url, autocommit=True) as admin:
        migrate(admin)
    running = supervisor("--workers", "1", *HANDLER, *FAST, metrics=True, url=url)
    wait_for(lambda: get_text(running.port, "/readyz")[0] == 200, message="ready")
    assert get_text(running.port, "/healthz")[0] == 200
    stop_server(own_server)
    _status, body = wait_for(
        lambda: (r := get_text(running.port, "/readyz"))[0] == 503 and r,
        message="unready once the database is gone",
    )
    assert "database" in body
    assert get_text(running.port, "/healthz")[0] == 200  # a database outage is not a restart reason
    assert get_text(running.port, "/nothing")[0] == 404
