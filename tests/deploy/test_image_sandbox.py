"""The image's jobs in their sandbox, under the settings the Deployment ships, reproduced in
Docker: the seccomp profile, no capability, a non-root user, /proc unmasked (procMount:
Unmasked) or masked (a cluster without it), and, on an AppArmor host, the AppArmor profile.

Without the profile (Docker's default, as RuntimeDefault) the supervisor refuses to start,
in one line. With it, a hostile job (tests/faults/hostile_job.py) finds no credential and
no database socket, and signals no one.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

from mobvibe.client import JobQueue
from tests.deploy.support import ROOT, SECCOMP_PROFILE
from tests.deploy.test_image import events, run_once, status_of
from tests.faults.conftest import findings, ledger, matrix_row  # noqa: F401 - a fixture
from tests.support.waiting import wait_for

pytestmark = pytest.mark.docker

HOSTILE = ROOT / "tests" / "faults" / "hostile_job.py"
SYSTEM_SOCKET_DIR = Path("/var/run/postgresql")
# As the Deployment runs the supervisor (the probes aside).
HARDENED = [
    "--network=host",
    "--read-only",
    "--tmpfs=/tmp",
    "--user=10001:10001",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
]


def apparmor_flags() -> list[str]:
    """On an AppArmor host, the shipped profile (loaded by the operator, as on a node)."""
    enabled = Path("/sys/module/apparmor/parameters/enabled")
    if not enabled.exists() or enabled.read_text().strip() != "Y":
        return []
    loaded = Path("/sys/kernel/security/apparmor/profiles")
    if "mobvibe-sandbox" not in (loaded.read_text() if loaded.exists() else ""):
        pytest.skip(
            "AppArmor is on: load deploy/kubernetes/apparmor/mobvibe-sandbox "
            "(apparmor_parser -r) to run the sandbox's image tests"
        )
    return ["--security-opt=apparmor=mobvibe-sandbox"]


def sandbox_flags(unmasked: bool) -> list[str]:
    flags = [f"--security-opt=seccomp={SECCOMP_PROFILE}", *apparmor_flags()]
    return [*flags, "--security-opt=systempaths=unconfined"] if unmasked else flags


def docker_run(flags: list[str], image: str, args: list[str]) -> str:
    """`docker run -d` (the CLI: docker-py has no way to unmask /proc); the container's id."""
    done = subprocess.run(
        ["docker", "run", "-d", *HARDENED, *flags, image, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def migrated(docker_client: Any, image: str, fresh_database: str) -> str:
    """The fresh database, migrated by the image."""
    run_once(docker_client, image, "mobvibe-queue", ["migrate"], fresh_database)
    return fresh_database


@pytest.fixture
def secret_login(container_pg: str, migrated: str) -> Iterator[tuple[str, str]]:
    """A worker login with a password: (the password, the database's URL with it)."""
    name = f"mobvibe_sandbox_{secrets.token_hex(4)}"
    password = f"pw-{secrets.token_hex(12)}"
    with psycopg.connect(container_pg, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
    run_grants(migrated, name)
    yield password, conninfo.make_conninfo(migrated, user=name, password=password)
    with psycopg.connect(container_pg, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [name]
        )
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def run_grants(url: str, name: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT mobvibe_worker TO {}").format(sql.Identifier(name)))


def test_with_the_runtimes_default_seccomp_profile_the_supervisor_refuses_to_start(
    docker_client: Any, image: str
) -> None:
    flags = [f for f in HARDENED if "network" not in f]
    url = "--env=DATABASE_URL=postgresql://nobody@127.0.0.1:1/none"
    done = subprocess.run(
        ["docker", "run", "--rm", "--network=none", *flags, url, image, "--exec", "true"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "cannot sandbox --exec commands" in done.stderr
    assert "seccomp" in done.stderr and "--unsandboxed" in done.stderr


def probe_in_a_container(
    client: Any,
    image: str,
    flags: list[str],
    database: str,
    login: tuple[str, str],
    ledger_dir: Path,
) -> tuple[dict[str, list[Any]], Any]:
    """Run the hostile probe as the one job of a supervisor container with 2 workers that
    connects with `login` (password, URL): (what it reached, the container, still there:
    the caller removes it)."""
    password, url = login
    volumes = [f"--volume={HOSTILE}:/opt/hostile/hostile_job:ro"]
    if SYSTEM_SOCKET_DIR.is_dir():  # the supervisor sees it; its jobs must not
        volumes.append(f"--volume={SYSTEM_SOCKET_DIR}:{SYSTEM_SOCKET_DIR}:ro")
    env = [f"--env={n}={v}" for n, v in (("DATABASE_URL", url), ("PGPASSWORD", password))]
    args = ["--exec", "/opt/hostile/hostile_job", "--exec-env", "TEST_LEDGER", "--workers", "2"]
    args += ["--no-reaper", "--metrics-port", "0", "--poll-interval", "1"]
    flags = [*flags, *volumes, *env, f"--env=TEST_LEDGER={ledger_dir}"]
    container = client.containers.get(docker_run(flags, image, args))
    wait_for(lambda: len(events(container, "worker_started")) == 2, 30, 0.2, "2 workers")
    plan = {
        "mode": "probe",
        "secret": password,
        "supervisor": 1,
        "workers": [e["pid"] for e in events(container, "worker_started")],
        "files": [],
        "sockets": [str(SYSTEM_SOCKET_DIR / ".s.PGSQL.5432")],
    }
    with JobQueue(database) as queue:
        job = queue.enqueue(json.dumps(plan))
    wait_for(lambda: status_of(database, job)[0] == "completed", 60, 0.2, "the job done")
    return findings(ledger_dir), container


@pytest.mark.parametrize("proc", ["unmasked", "masked"])
def test_a_hostile_job_in_the_container_finds_no_credential_no_socket_and_no_one_to_signal(
    docker_client: Any,
    image: str,
    fresh_database: str,
    secret_login: tuple[str, str],
    ledger: Path,  # noqa: F811 - the fixture
    proc: str,
) -> None:
    flags = sandbox_flags(proc == "unmasked")
    found, container = probe_in_a_container(
        docker_client, image, flags, fresh_database, secret_login, ledger
    )
    try:
        reached = sorted({f"{attack}: {what}" for attack, w in found.items() for what in w})
        matrix_row(
            f"all the probe's attacks, in the image as the Deployment runs it (/proc {proc})",
            "; ".join(reached)[:60] or "nothing",
            "the sandbox, under the shipped seccomp profile",
        )
        (ready,) = events(container, "sandbox_ready")
        assert ready["proc"] == ("fresh" if proc == "unmasked" else "empty"), ready
        assert set(found) >= {"environ", "proc_of_supervisor", "database_sockets"}, found
        assert all(reached == [] for reached in found.values()), found
        container.reload()
        assert container.status == "running"
        assert not events(container, "worker_exited")
    finally:
        container.remove(force=True, v=True)


def test_unsandboxed_in_the_image_a_job_still_cannot_read_the_supervisors_environment(
    docker_client: Any,
    image: str,
    fresh_database: str,
    secret_login: tuple[str, str],
    ledger: Path,  # noqa: F811 - the fixture
) -> None:
    """Defence in depth: the supervisor and its workers are non-dumpable, so a process of
    the same user (a job run --unsandboxed) cannot read their /proc/PID/environ."""
    flags = ["--env=MOBVIBE_UNSANDBOXED=1"]
    found, container = probe_in_a_container(
        docker_client, image, flags, fresh_database, secret_login, ledger
    )
    try:
        peeked = [*found["environ"], *found["proc_of_supervisor"], *found["proc_of_workers"]]
        matrix_row(
            "read the supervisor's environ, --unsandboxed in the image (same user)",
            "nothing" if not peeked else ", ".join(map(str, peeked))[:60],
            "the supervisor and its workers are non-dumpable",
        )
        assert events(container, "sandbox_off")
        assert found["environ"] == [] and found["proc_of_supervisor"] == [], found
        assert found["proc_of_workers"] == [], found
    finally:
        container.remove(force=True, v=True)
