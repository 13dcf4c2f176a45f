"""A hostile job: an agent steered by its prompt attacks the queue from inside its attempt.

The supervisor runs as the queue runs it, with a worker login that has a password
(in DATABASE_URL and PGPASSWORD), a ~/.pgpass, and beside it the socket of the
embedded server that `make run` starts. The job (tests/faults/hostile_job.py) looks
for the password in every process's environment and command line, reads the
supervisor's and the workers' /proc files, connects to every database socket it
can find, SIGKILLs a sibling worker running another session's job, and leaves a
double-forked daemon that SIGKILLs its supervisor and lives on. Every row of the
hostile-job matrix (printed at the end of the run) says what the attack reached
and what stopped it: nothing may be reached, no two attempts of a job may overlap,
and no process of a job may outlive its attempt.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

from mobvibe.client import JobQueue
from tests.faults.conftest import findings, job_processes, matrix_row
from tests.faults.test_containment import gone_within, ledger_runs, overlaps
from tests.support.supervisor import (
    FAST,
    FAST_HEARTBEAT_TIMEOUT,
    Running,
    set_heartbeat_timeout,
)
from tests.support.waiting import wait_for

HOSTILE = str(Path(__file__).resolve().parent / "hostile_job.py")
# What stopped each attack, in the sandbox every --exec attempt runs in.
STOPPED_BY = {
    "environ": "PID namespace: the job's /proc shows its own processes only",
    "proc_of_supervisor": "PID namespace: no such process; supervisor non-dumpable",
    "proc_of_workers": "PID namespace: no such process; workers non-dumpable",
    "credential_files": "the sandbox shows /usr and /etc only; HOME is its own tmpfs",
    "database_sockets": "no socket directory in the sandbox: /tmp is its own, no /run",
    "signal_sibling": "PID namespace: no pid outside the attempt can be named",
}
ATTACKS = {
    "environ": "read every process's environ and cmdline for the password",
    "proc_of_supervisor": "read the password in the supervisor's /proc/PID/environ, cmdline",
    "proc_of_workers": "read the password in the workers' /proc/PID/environ, cmdline",
    "credential_files": "read the supervisor's ~/.pgpass",
    "database_sockets": "connect to the database's, make run's and /var/run/postgresql's sockets",
    "signal_sibling": "SIGKILL a sibling worker running another session's job",
}


@pytest.fixture
def secret_login(conn: psycopg.Connection[Any], db_url: str) -> Iterator[tuple[str, str]]:
    """A worker login with a password: (the password, its URL with the password in it)."""
    name = f"mobvibe_hostile_{secrets.token_hex(4)}"
    password = f"pw-{secrets.token_hex(12)}"
    conn.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE mobvibe_worker").format(
            sql.Identifier(name), sql.Literal(password)
        )
    )
    yield password, conninfo.make_conninfo(db_url, user=name, password=password)
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [name]
    )
    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def home(secret_login: tuple[str, str]) -> Iterator[Path]:
    """The supervisor's HOME: a ~/.pgpass with the password, and where `make run`'s embedded
    server keeps its socket, a listening socket (a short path: Unix socket paths are short)."""
    path = Path(tempfile.mkdtemp(prefix="mv-home-"))
    pgpass = path / ".pgpass"
    pgpass.write_text(f"*:*:*:*:{secret_login[0]}\n")
    pgpass.chmod(0o600)
    embedded = path / ".local" / "share" / "mobvibe" / "pgdata"
    embedded.mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(embedded / ".s.PGSQL.5432"))
    listener.listen(16)
    yield path
    listener.close()
    shutil.rmtree(path, ignore_errors=True)


def database_sockets(url: str, home: Path) -> list[str]:
    """Every database socket the job must not reach: the URL's, make run's, the system's."""
    host = str(conninfo.conninfo_to_dict(url).get("host") or "")
    port = str(conninfo.conninfo_to_dict(url).get("port") or "5432")
    found = [f"{host}/.s.PGSQL.{port}"] if host.startswith("/") else []
    found.append(str(home / ".local" / "share" / "mobvibe" / "pgdata" / ".s.PGSQL.5432"))
    found += [f"{d}/.s.PGSQL.5432" for d in ("/var/run/postgresql", "/run/postgresql")]
    return [path for path in found if os.path.exists(path)]


@pytest.fixture
def hostile(
    supervisor: Callable[..., Running],
    ledger: Path,
    secret_login: tuple[str, str],
    home: Path,
    db_url: str,
) -> Callable[..., Running]:
    """start(*args) runs the supervisor as the queue runs it, with the hostile job."""
    set_heartbeat_timeout(db_url, FAST_HEARTBEAT_TIMEOUT)  # as the owner

    def start(*args: str) -> Running:
        password, url = secret_login
        return supervisor(
            "--exec",
            HOSTILE,
            "--exec-env",
            "TEST_LEDGER",
            *FAST,
            *args,
            env={
                "TEST_LEDGER": str(ledger),
                "DATABASE_URL": url,
                "PGPASSWORD": password,
                "HOME": str(home),
            },
            url=url,
            heartbeat_timeout=None,
        )

    return start


def summary(reached: list[Any] | None, roles: dict[int, str]) -> str:
    """What an attack reached, in a few words for the matrix."""
    if reached is None:
        return "(the attack did not run)"
    if not reached:
        return "nothing"
    named = [roles.get(r, "another process") if isinstance(r, int) else r for r in reached]
    counted = {name: named.count(name) for name in named}
    text = ", ".join(f"{n} x {name}" if n > 1 else name for name, n in counted.items())
    return text if len(text) <= 60 else text[:57] + "..."


def status(queue: JobQueue, job_id: Any) -> str | None:
    return getattr(queue.get(job_id), "status", None)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"


def test_a_hostile_job_finds_no_credential_reaches_no_socket_and_signals_no_sibling(
    queue: JobQueue,
    hostile: Callable[..., Running],
    ledger: Path,
    secret_login: tuple[str, str],
    home: Path,
    db_url: str,
) -> None:
    running = hostile("--workers", "2")
    workers = sorted(running.wait_workers(2))
    victim = queue.enqueue(json.dumps({"mode": "work", "seconds": 60}))
    wait_for(lambda: status(queue, victim) == "processing", message="the victim's job running")
    plan = {
        "mode": "probe",
        "secret": secret_login[0],
        "supervisor": running.pid,
        "workers": workers,
        "files": [str(home / ".pgpass")],
        "sockets": database_sockets(db_url, home),
    }
    job = queue.enqueue(json.dumps(plan))
    wait_for(
        lambda: status(queue, job) in ("completed", "failed") or not alive(running.pid),
        timeout=30,
        message="the hostile job done",
    )
    found = findings(ledger)
    roles = {running.pid: "the supervisor", **dict.fromkeys(workers, "a worker")}
    for attack, description in ATTACKS.items():
        matrix_row(description, summary(found.get(attack), roles), STOPPED_BY[attack])
    victim_row = queue.get(victim)
    assert victim_row is not None
    queue.cancel(victim)
    assert alive(running.pid), "the hostile job killed its supervisor"
    assert set(found) == set(ATTACKS), found
    assert all(reached == [] for reached in found.values()), found
    assert (victim_row.status, victim_row.retry_count) == ("processing", 0), victim_row
    assert not running.events("worker_exited")
    assert status(queue, job) == "completed"


def test_a_double_forked_daemon_neither_kills_its_supervisor_nor_outlives_its_attempt(
    queue: JobQueue,
    hostile: Callable[..., Running],
    ledger: Path,
) -> None:
    first = hostile("--workers", "1")
    workers = sorted(first.wait_workers(1))
    plan = {"mode": "daemon", "seconds": 1.0, "supervisor": first.pid, "workers": workers}
    job = queue.enqueue(json.dumps(plan), max_retries=3)
    wait_for(
        lambda: status(queue, job) == "completed" or not alive(first.pid),
        timeout=30,
        message="the job done, or its supervisor gone",
    )
    supervisor_alive = alive(first.pid)
    _, left_at_end = gone_within(ledger, 1)
    # Another pod: it runs the job again only if the first attempt was lost.
    second = hostile("--workers", "1", "--drain")
    assert second.wait_exit(60) == 0, second.log()[-3000:]
    runs = ledger_runs(ledger)
    clashes = len(overlaps(runs))
    left = len(job_processes(ledger))
    killed = findings(ledger).get("kill_supervisor")
    roles = {first.pid: "the supervisor", **dict.fromkeys(workers, "its worker")}
    outlived = "; outlived its attempt" if left_at_end or clashes else ""
    reached = f"killed {summary(killed, roles)}{outlived}"
    matrix_row(
        "a setsid double-forked grandchild SIGKILLs its worker and supervisor, lives on",
        "nothing" if reached == "killed nothing" else reached,
        "PID namespace; the namespace ends when the attempt's command exits",
        clashes,
        max(left, left_at_end),
    )
    assert killed == [], f"the daemon signalled {killed}"
    assert supervisor_alive, "the job's daemon killed its supervisor"
    assert left_at_end == 0 and left == 0, "the daemon outlived its attempt"
    assert clashes == 0
    assert [a.attempt for a in queue.attempts(job)] == [1]


def test_with_the_network_off_a_job_reaches_nothing_on_the_hosts_loopback(
    queue: JobQueue, supervisor: Callable[..., Running], ledger: Path
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        plan = {"mode": "network", "tcp": list(listener.getsockname())}
        job = queue.enqueue(json.dumps(plan))
        running = supervisor(
            "--exec",
            HOSTILE,
            "--exec-env",
            "TEST_LEDGER",
            "--sandbox-network",
            "off",
            "--workers",
            "1",
            "--drain",
            *FAST,
            env={"TEST_LEDGER": str(ledger)},
        )
        assert running.wait_exit(30) == 0, running.log()[-3000:]
    row = queue.get(job)
    assert row is not None and row.status == "completed", row
    reached = json.loads(row.output or "{}")["reached"]
    matrix_row(
        "--sandbox-network off: TCP to a database on 127.0.0.1, abstract Unix sockets",
        "nothing" if not reached else ", ".join(reached),
        "a network namespace of its own, with a loopback of its own",
    )
    assert reached == []


def test_a_job_that_ignores_sigterm_is_gone_soon_after_its_cancel(
    queue: JobQueue, supervisor: Callable[..., Running], ledger: Path
) -> None:
    """What held before the sandbox and must still hold: a cancel ends a job that ignores
    SIGTERM (its whole tree, a setsid daemon included) within the worker's grace."""
    job = queue.enqueue("60")
    supervisor(
        "--exec",
        "trap '' TERM; setsid sleep 600 & exec sleep \"$(cat)\"",
        "--exec-env",
        "TEST_LEDGER",
        "--workers",
        "1",
        *FAST,
        env={"TEST_LEDGER": str(ledger)},
    )
    wait_for(lambda: len(job_processes(ledger)) >= 2, timeout=20, message="the job running")
    asked = time.monotonic()
    assert queue.cancel(job)
    wait_for(
        lambda: status(queue, job) == "cancelled" and not job_processes(ledger),
        timeout=15,
        interval=0.01,
        message="the job cancelled and gone",
    )
    took = time.monotonic() - asked
    matrix_row(
        "ignore SIGTERM (and leave a setsid daemon), then be cancelled",
        f"nothing: gone {took:.2f} s after the cancel",
        "SIGKILL after the grace ends the namespace",
    )
    assert took < 7
