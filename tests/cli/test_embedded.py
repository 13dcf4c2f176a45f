"""The embedded PostgreSQL of a local run (no DATABASE_URL) is stopped however the last
command using it ends: normally, by a signal, or killed outright (the next one stops it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mobvibe.sql.files import migrations
from tests.support.commands import free_port, run_command, start_command
from tests.support.waiting import wait_for

pytest.importorskip("pgserver")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The embedded server's directory, migrated once; stopped at the end whatever happened."""
    directory = tmp_path_factory.mktemp("embedded") / "pgdata"
    done = run("migrate", data=directory)
    assert done.returncode == 0, done.stderr
    yield directory
    pidfile = directory / "postmaster.pid"
    if pidfile.exists():  # a test failed with the server up: stop the one we started
        os.kill(int(pidfile.read_text().split()[0]), signal.SIGINT)


def run(*args: str, data: Path) -> subprocess.CompletedProcess[str]:
    """mobvibe-queue with no DATABASE_URL: on the embedded PostgreSQL kept in `data`."""
    env = {"MOBVIBE_EMBEDDED_DIR": str(data)}
    return run_command("mobvibe-queue", *args, url=None, env=env, timeout=120)


def start(*args: str, data: Path) -> subprocess.Popen[str]:
    return start_command("mobvibe-queue", *args, url=None, env={"MOBVIBE_EMBEDDED_DIR": str(data)})


def holders(data: Path) -> list[int]:
    """The pids pgserver counts as holding the server."""
    path = data / ".handle_pids.json"

    for _ in range(100):
        try:
            return list(json.loads(path.read_text())) if path.exists() else []
        except ValueError:
            time.sleep(0.01)  # caught between pgserver's truncate and write: read again
    raise AssertionError(f"{path} holds no JSON")


def running(data: Path) -> bool:
    return (data / "postmaster.pid").exists()


def wait_stopped(data: Path) -> None:
    wait_for(lambda: not running(data), timeout=20, message="the embedded server to stop")


@pytest.mark.parametrize(
    "command", [["stats", "--watch", "--interval", "0.2"], ["watch"], ["web", "--port", "0"]]
)
def test_sigterm_ends_the_command_and_stops_the_embedded_server(
    data_dir: Path, command: list[str]
) -> None:
    wait_stopped(data_dir)
    if command[0] == "web":
        command = ["web", "--port", str(free_port())]
    proc = start(*command, data=data_dir)
    wait_for(lambda: proc.pid in holders(data_dir), timeout=60, message="the command to start")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err
    wait_stopped(data_dir)
    assert holders(data_dir) == []


def test_a_holder_killed_outright_is_forgotten_and_the_next_command_stops_the_server(
    data_dir: Path,
) -> None:
    proc = start("stats", "--watch", "--interval", "0.2", data=data_dir)
    wait_for(lambda: proc.pid in holders(data_dir), timeout=60, message="the command to start")
    proc.kill()  # no exit handler runs: its pid stays in the list
    proc.communicate(timeout=10)
    assert running(data_dir) and holders(data_dir) == [proc.pid]

    done = run("stats", data=data_dir)
    assert done.returncode == 0, done.stderr
    wait_stopped(data_dir)
    assert holders(data_dir) == []


def test_migrate_says_where_the_server_lives_and_psql_opens_it(data_dir: Path) -> None:
    done = run("migrate", data=data_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        f"the embedded PostgreSQL keeps its data in {data_dir}; `mobvibe-queue psql` opens "
        "psql on it (set DATABASE_URL for another server)"
    )
    psql = run("psql", "-Atc", "SELECT count(*) FROM queue_migrations", data=data_dir)
    assert psql.returncode == 0, psql.stderr
    assert psql.stdout.strip() == str(len(migrations()))
    wait_stopped(data_dir)
