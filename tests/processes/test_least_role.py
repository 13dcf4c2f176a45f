"""The tools run with the least role they need: the supervisor, the reaper and the doctor as a
member of mobvibe_worker (no read of queue_migrations), mobvibe-queue enqueue as a producer."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

from mobvibe.client import JobQueue
from tests.helpers import count
from tests.processes.conftest import BIN, ROOT


@pytest.fixture
def login(conn: psycopg.Connection[Any], db_url: str) -> Iterator[Callable[[str], str]]:
    """login(group) makes a login role in `group` and returns its URL; dropped at the end."""
    made: list[str] = []

    def make(group: str) -> str:
        name = f"mobvibe_tool_{secrets.token_hex(4)}"
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                sql.Identifier(name), sql.Identifier(group)
            )
        )
        made.append(name)
        return conninfo.make_conninfo(db_url, user=name)

    yield make
    for name in made:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [name]
        )
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def run(command: str, *args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOBVIBE_")}
    return subprocess.run(
        [str(BIN / command), *args],
        env={**env, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_worker_login_runs_the_supervisor_the_reaper_and_the_doctor(
    queue: JobQueue, conn: Any, login: Callable[[str], str]
) -> None:
    worker = login("mobvibe_worker")
    producer = login("mobvibe_producer")
    made = run("mobvibe-queue", "enqueue", "one", "two", url=producer)
    assert made.returncode == 0, made.stderr
    done = run(
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
    swept = run("mobvibe-reaper", "--once", url=worker)
    assert swept.returncode == 0, swept.stderr
    assert json.loads(swept.stdout)["requeued"] == 0
    checked = run("mobvibe-queue", "doctor", url=worker)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Traceback" not in checked.stdout + checked.stderr


def test_a_role_of_the_wrong_kind_gets_one_line(login: Callable[[str], str]) -> None:
    monitor = login("mobvibe_monitor")
    refused = run("mobvibe-queue", "enqueue", "a prompt", url=monitor)
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert refused.stderr.strip().count("\n") == 0 and "mobvibe_producer" in refused.stderr
