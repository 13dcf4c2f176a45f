"""The image, built and run for real: migrate, work, /metrics, SIGTERM, the reaper in cron mode."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import psycopg
import pytest

from mobvibe.client import JobQueue
from tests.deploy.conftest import MEASURES
from tests.deploy.support import ROOT, SECCOMP_PROFILE
from tests.support.commands import free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.docker

SHUTDOWN_TIMEOUT = 3
GRACE = SHUTDOWN_TIMEOUT + 5  # terminationGracePeriodSeconds, as in the Deployment
# The prompt decides how long a job runs: "slow" jobs outlive any test.
EXEC = "python3 -c \"import sys, time; time.sleep(600 if 'slow' in sys.stdin.read() else 0.2)\""
HANDLERS = ROOT / "tests" / "deploy" / "container_handlers"
PYTHON_HANDLER = {
    "args": ["--handler", "deploy_test_handlers:run"],
    "volumes": {str(HANDLERS): {"bind": "/handlers", "mode": "ro"}},
    "environment": {"PYTHONPATH": "/handlers"},
}
# As Kubernetes runs it: non-root, read-only root, writable tmpfs only where needed.
SANDBOX_SECCOMP = f"seccomp={SECCOMP_PROFILE.read_text()}"
HARDENED: dict[str, Any] = {
    "network_mode": "host",
    "read_only": True,
    "user": "10001:10001",
    "tmpfs": {"/tmp": ""},
}


def run_once(client: Any, image: str, entrypoint: str, args: list[str], url: str) -> str:
    """Run a command in a hardened container to its end; its stdout, or fail with its logs."""
    container = client.containers.create(
        image, args, entrypoint=[entrypoint], environment={"DATABASE_URL": url}, **HARDENED
    )
    try:
        container.start()
        status = container.wait(timeout=120)["StatusCode"]
        out = container.logs(stdout=True, stderr=False).decode()
        assert status == 0, f"{entrypoint} {args} exited {status}:\n{container.logs().decode()}"
        return out
    finally:
        container.remove(force=True, v=True)


def events(container: Any, name: str) -> list[dict[str, Any]]:
    found = []
    for line in container.logs().decode(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == name:
            found.append(record)
    return found


def status_of(url: str, job_id: Any) -> tuple[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT status, retry_count FROM coding_jobs WHERE id = %s", [job_id]
        ).fetchone()
    assert row is not None, f"job {job_id} is lost"
    return str(row[0]), int(row[1])


def test_image_runs_as_a_numeric_user_with_the_supervisor_as_entry_point(
    docker_client: Any, image: str
) -> None:
    config = docker_client.images.get(image).attrs["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["mobvibe-supervisor"]
    assert config["StopSignal"] == "SIGTERM"
    assert "9400/tcp" in config["ExposedPorts"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    for command in ("mobvibe-supervisor", "mobvibe-reaper", "mobvibe-queue"):
        container = docker_client.containers.create(
            image,
            ["--version"],
            entrypoint=[command],
            network_mode="none",
            read_only=True,
            tmpfs=HARDENED["tmpfs"],
        )
        try:
            container.start()
            assert container.wait(timeout=60)["StatusCode"] == 0
            assert b"version" in container.logs().lower()
        finally:
            container.remove(force=True, v=True)


def start_supervisor(
    client: Any,
    image: str,
    url: str,
    port: int,
    handler: dict[str, Any],
    healthcheck: dict[str, Any] | None = None,
) -> Any:
    """The supervisor container, hardened, on the host network, metrics on `port`."""
    return client.containers.run(
        image,
        [
            "--workers",
            "2",
            "--no-reaper",
            "--poll-interval",
            "1",
            "--shutdown-timeout",
            str(SHUTDOWN_TIMEOUT),
            *handler["args"],
        ],
        environment={
            "DATABASE_URL": url,
            "MOBVIBE_METRICS_PORT": str(port),
            **handler.get("environment", {}),
        },
        volumes=handler.get("volumes", {}),
        healthcheck=healthcheck,
        detach=True,
        # An --exec command's sandbox needs the seccomp profile the Deployment ships.
        security_opt=[f"seccomp={SECCOMP_PROFILE.read_text()}"]
        if "--exec" in handler["args"]
        else [],
        **HARDENED,
    )


def stop_with_a_slow_job_running(container: Any, url: str) -> tuple[Any, float]:
    """Enqueue a job that outlives the test, wait until it runs, `docker stop` the container;
    (the job's id, seconds the stop took)."""
    with JobQueue(url) as queue:
        slow = queue.enqueue("a slow coding job")
    wait_for(lambda: status_of(url, slow)[0] == "processing", 30, 0.1, "the slow job running")
    stopping = time.monotonic()
    container.stop(timeout=GRACE)  # SIGTERM, then SIGKILL after the grace period
    took = time.monotonic() - stopping
    container.reload()
    assert container.attrs["State"]["ExitCode"] == 0, container.logs().decode()[-3000:]
    assert took < GRACE, f"stopped after {took:.1f} s: killed at the end of the grace period?"
    return slow, took


def test_container_migrates_works_serves_metrics_and_stops_on_sigterm_losing_no_job(
    docker_client: Any, image: str, fresh_database: str, containers: list[Any]
) -> None:
    started = time.monotonic()
    out = run_once(docker_client, image, "mobvibe-queue", ["migrate"], fresh_database)
    assert "applied" in out

    with JobQueue(fresh_database) as queue:
        quick = [queue.enqueue(f"quick job {i}") for i in range(6)]

    port = free_port()
    image_check = docker_client.images.get(image).attrs["Config"]["Healthcheck"]
    # The image's own health command, checked every second instead of every 30 s.
    healthcheck = {
        "test": image_check["Test"],
        "interval": 1_000_000_000,
        "timeout": 5_000_000_000,
        "retries": 3,
    }
    supervisor = start_supervisor(
        docker_client, image, fresh_database, port, PYTHON_HANDLER, healthcheck
    )
    containers.append(supervisor)

    def all_completed() -> bool:
        return all(status_of(fresh_database, j)[0] == "completed" for j in quick)

    wait_for(all_completed, 60, 0.2, "the quick jobs completed by the container")
    (record,) = events(supervisor, "supervisor_started")
    assert record["pid"] == 1, "the supervisor is PID 1 of the container"

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert "mobvibe_jobs_completed_total 6.0" in metrics
    assert 'mobvibe_queue_jobs{status="completed"} 6.0' in metrics
    assert "mobvibe_workers_alive 2.0" in metrics

    def healthy() -> bool:
        supervisor.reload()
        return bool(supervisor.attrs["State"]["Health"]["Status"] == "healthy")

    wait_for(healthy, 30, 0.5, "the image's HEALTHCHECK to pass")

    slow, took = stop_with_a_slow_job_running(supervisor, fresh_database)
    assert status_of(fresh_database, slow) == ("pending", 0), (
        "the interrupted job goes back to pending without counting a failed attempt"
    )
    assert events(supervisor, "job_released")
    assert all(status_of(fresh_database, j)[0] == "completed" for j in quick)
    MEASURES["container test (migrate, 6 jobs, /metrics, health, SIGTERM)"] = (
        f"{time.monotonic() - started:.1f} s; docker stop took {took:.1f} s"
    )


def test_sigterm_gives_a_running_exec_command_back_without_counting_an_attempt(
    docker_client: Any, image: str, fresh_database: str, containers: list[Any]
) -> None:
    run_once(docker_client, image, "mobvibe-queue", ["migrate"], fresh_database)
    supervisor = start_supervisor(
        docker_client, image, fresh_database, free_port(), {"args": ["--exec", EXEC]}
    )
    containers.append(supervisor)
    slow, _ = stop_with_a_slow_job_running(supervisor, fresh_database)
    assert status_of(fresh_database, slow) == ("pending", 0), (
        "the interrupted command's job goes back to pending without counting a failed attempt"
    )


def test_reaper_once_in_a_container_prints_a_json_summary(
    docker_client: Any, image: str, fresh_database: str
) -> None:
    run_once(docker_client, image, "mobvibe-queue", ["migrate"], fresh_database)
    out = run_once(docker_client, image, "mobvibe-reaper", ["--once"], fresh_database)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["requeued"] == 0 and summary["dead_lettered"] == 0
