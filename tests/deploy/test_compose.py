"""deploy/docker-compose.yml: its shape, `config` of the compose CLI, and a real `up`."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from mobvibe.client import JobQueue
from tests.deploy.conftest import MEASURES
from tests.deploy.support import COMPOSE, ROOT, SECCOMP_PROFILE, option
from tests.support.waiting import wait_for

MOBVIBE_SERVICES = ("migrate", "supervisor", "reaper")


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def compose_cli() -> list[str] | None:
    """`docker compose` (v2 plugin) or `docker-compose` (Debian's 1.29), whichever runs."""
    if (
        shutil.which("docker")
        and subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False
        ).returncode
        == 0
    ):
        return ["docker", "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def needs_cli() -> list[str]:
    cli = compose_cli()
    if cli is None:
        pytest.skip(
            "no compose CLI (neither `docker compose` nor `docker-compose`; Debian: "
            "apt-get install docker-compose)"
        )
    return cli


def test_services_start_in_order_postgres_migrate_then_workers_and_reaper() -> None:
    services = compose()["services"]
    # The monitoring services start only with `--profile monitoring` (test_grafana.py).
    assert {n for n, s in services.items() if not s.get("profiles")} == {
        "postgres",
        *MOBVIBE_SERVICES,
    }
    assert services["postgres"]["image"] == "postgres:16"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["entrypoint"] == ["mobvibe-queue"]
    assert services["migrate"]["command"] == ["migrate"]
    for name in ("supervisor", "reaper"):
        assert (
            services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        )
    assert services["reaper"]["entrypoint"] == ["mobvibe-reaper"]
    args = services["supervisor"]["command"]
    assert option(args, "--workers") == "8"
    assert "--no-reaper" in args, "the reaper service sweeps; the supervisor does not"
    assert "entrypoint" not in services["supervisor"], "the image's entry point is the supervisor"


def test_queue_services_run_read_only_with_tmpfs_for_the_writable_dirs() -> None:
    services = compose()["services"]
    for name in MOBVIBE_SERVICES:
        service = services[name]
        assert service["read_only"] is True
        assert service["user"] == "10001:10001"
        mounts = [t.split(":")[0] for t in service["tmpfs"]]
        assert "/tmp" in mounts
    grace = int(services["supervisor"]["stop_grace_period"].rstrip("s"))
    assert grace >= float(option(services["supervisor"]["command"], "--shutdown-timeout") or 25) + 5


def test_the_supervisor_runs_with_the_seccomp_profile_its_jobs_sandboxes_need() -> None:
    (opt,) = compose()["services"]["supervisor"]["security_opt"]
    assert opt == f"seccomp={SECCOMP_PROFILE.relative_to(ROOT)}"


def test_compose_cli_accepts_the_file_and_rejects_a_misspelt_field(tmp_path: Path) -> None:
    cli = needs_cli()
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    broken = compose()
    broken["services"]["supervisor"]["read_onyl"] = True
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(yaml.safe_dump(broken))
    result = subprocess.run(
        [*cli, "-f", str(bad), "config", "-q"], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0


def for_this_machine(base_image: str, image: str, url: str) -> dict[str, Any]:
    """The compose file as it must run here: no registry (postgres:16 cannot be pulled, so a
    stand-in that is healthy at once while the machine's own PostgreSQL serves), and containers
    reach that server only on the host network. The queue's services run the image the
    other container tests built from the same Dockerfile, rather than building it three
    times over."""
    doc = compose()
    doc["services"]["postgres"] = {
        "image": base_image,
        "command": ["sleep", "infinity"],
        "healthcheck": {"test": ["CMD", "true"], "interval": "1s"},
    }
    # The file is written elsewhere: the seccomp profile by its full path.
    doc["services"]["supervisor"]["security_opt"] = [f"seccomp={SECCOMP_PROFILE}"]
    for name in MOBVIBE_SERVICES:
        service = doc["services"][name]
        assert service["build"]["dockerfile"].endswith("Dockerfile")
        service.pop("build")
        service["image"] = image
        service["network_mode"] = "host"
        service.pop("ports", None)
        service["environment"] = {**service["environment"], "DATABASE_URL": url}
    doc["services"]["supervisor"]["environment"]["MOBVIBE_METRICS_PORT"] = "0"
    doc["services"]["supervisor"]["command"] = [
        *doc["services"]["supervisor"]["command"],
        "--poll-interval",
        "1",
    ]
    return doc


@pytest.mark.docker
def test_compose_up_gives_a_working_queue(
    docker_client: Any, base_image: str, image: str, fresh_database: str, tmp_path: Path
) -> None:
    cli = needs_cli()
    started = time.monotonic()
    file = tmp_path / "docker-compose.yml"
    file.write_text(yaml.safe_dump(for_this_machine(base_image, image, fresh_database)))
    project = f"mobvibe-test-{os.getpid()}"
    run = [*cli, "-p", project, "-f", str(file)]
    try:
        up = subprocess.run(
            [*run, "up", "-d"], capture_output=True, text=True, check=False, timeout=600
        )
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
        with JobQueue(fresh_database) as queue:
            jobs = [queue.enqueue(f"compose job {i}") for i in range(8)]

        def completed() -> bool:
            with psycopg.connect(fresh_database, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM coding_jobs WHERE id = ANY(%s) AND status = 'completed'",
                    [jobs],
                ).fetchone()
            return row is not None and row[0] == len(jobs)

        wait_for(completed, 60, 0.5, "the compose supervisor to complete the jobs")
        ps = subprocess.run([*run, "ps"], capture_output=True, text=True, check=False)
        assert "Exit 0" in ps.stdout or "exited (0)" in ps.stdout.lower(), ps.stdout
        with psycopg.connect(fresh_database, autocommit=True) as conn:
            sweeps = conn.execute("SELECT count(*) FROM queue_reaper_runs").fetchone()
        assert sweeps is not None and sweeps[0] >= 1, "the reaper service has swept"
        MEASURES["compose up to 8 completed jobs"] = f"{time.monotonic() - started:.1f} s"
    finally:
        down = subprocess.run(
            [*run, "down", "-v", "--timeout", "30"],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert down.returncode == 0, down.stderr[-2000:]
