"""The supervisor behind PgBouncer in transaction mode: the workers and the reaper through the
pooler (no prepared statement, no session state), the hub's LISTEN straight to PostgreSQL.

Debian's pgbouncer (1.18: no prepared statements in transaction mode); `make test`
installs it as root, and the tests skip with a reason where it is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

from mobvibe.client import JobQueue
from mobvibe.sql.jobs import NewJob
from tests.support.commands import free_port
from tests.support.processes import command_processes
from tests.support.rows import count
from tests.support.supervisor import FAST, Running
from tests.support.waiting import wait_for

REAPER = str(Path(sys.executable).with_name("mobvibe-reaper"))

CONFIG = """\
[databases]
{dbname} = {server}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
admin_users = postgres
auth_file = {directory}/users.txt
pool_mode = transaction
max_client_conn = 200
default_pool_size = 20
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = {directory}/pgbouncer.log
pidfile = {directory}/pgbouncer.pid
"""


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if found is None:
        pytest.skip("pgbouncer is not installed (`make test` installs Debian's as root)")
    return found


def _server_and_user(url: str) -> tuple[str, str]:
    """PgBouncer's connection string for the server, and the OS user to run it as."""
    params = conninfo.conninfo_to_dict(url)
    host = str(params.get("host") or "127.0.0.1")
    port = str(params.get("port") or 5432)
    server = (
        f"host={host} port={port} dbname={params['dbname']} user={params.get('user', 'postgres')}"
    )
    # It will not run as root; a server on a Unix socket is reached as the socket's owner.
    owner = pwd.getpwuid(os.stat(host).st_uid).pw_name if host.startswith("/") else "nobody"
    return server, owner


@dataclass(frozen=True)
class Bouncer:
    url: str
    log: Path
    admin_url: str

    def logins(self) -> int:
        """Client connections PgBouncer has accepted so far."""
        return self.log.read_text(errors="replace").count("login attempt")

    def server_pids(self) -> set[int]:
        """The backends PgBouncer holds (SHOW SERVERS; its console speaks the simple
        protocol only)."""
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            result = admin.pgconn.exec_(b"SHOW SERVERS")
            names = [result.fname(i) for i in range(result.nfields)]
            column = names.index(b"remote_pid")
            return {int(result.get_value(row, column) or 0) for row in range(result.ntuples)}


def direct_pod_connections(conn: psycopg.Connection[Any], bouncer: Bouncer) -> list[str]:
    """The pod's connections to PostgreSQL that do not go through PgBouncer."""
    rows = conn.execute(
        "SELECT pid, application_name FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name LIKE 'mobvibe-%'"
        " AND application_name <> 'mobvibe-client'"
    ).fetchall()
    pooled = bouncer.server_pids()
    return sorted(name for pid, name in rows if pid not in pooled)


@pytest.fixture
def bouncer(db_url: str) -> Iterator[Bouncer]:
    """A PgBouncer in transaction mode in front of the test database."""
    binary = pgbouncer_binary()
    # Not under pytest's tmp_path: its directories are private to root, and pgbouncer
    # runs as another user.
    directory = Path(tempfile.mkdtemp(prefix="mobvibe-pgbouncer-"))
    directory.chmod(0o777)
    server, user = _server_and_user(db_url)
    dbname = str(conninfo.conninfo_to_dict(db_url)["dbname"])
    port = free_port()
    (directory / "users.txt").write_text('"postgres" ""\n')
    config = directory / "pgbouncer.ini"
    config.write_text(CONFIG.format(dbname=dbname, server=server, port=port, directory=directory))
    command = [binary, str(config)] + (["-u", user] if os.getuid() == 0 else [])
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"postgresql://postgres@127.0.0.1:{port}/{dbname}"

    def ready() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(ready, timeout=10, message="pgbouncer listening")
        admin_url = f"postgresql://postgres@127.0.0.1:{port}/pgbouncer"
        yield Bouncer(url, directory / "pgbouncer.log", admin_url)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(directory, ignore_errors=True)


def supervisor_behind(
    supervisor: Callable[..., Running],
    bouncer: Bouncer,
    db_url: str,
    *args: str,
    env: dict[str, str] | None = None,
) -> Running:
    return supervisor(
        *args,
        env={"DATABASE_URL": bouncer.url, "MOBVIBE_LISTEN_URL": db_url, **(env or {})},
        url=db_url,
    )


def test_drain_kill_and_shutdown_through_pgbouncer_in_transaction_mode(
    queue: JobQueue,
    conn: psycopg.Connection[Any],
    supervisor: Callable[..., Running],
    bouncer: Bouncer,
    db_url: str,
    tmp_path: Path,
) -> None:
    marks = tmp_path / "marks"
    ids = queue.enqueue_many([NewJob(f"mark:{marks}", max_retries=5) for _ in range(300)])
    running = supervisor_behind(
        supervisor,
        bouncer,
        db_url,
        "--handler",
        "tests.processes.handlers:by_prompt",
        "--workers",
        "3",
        "--drain",
        *FAST,
    )
    wait_for(lambda: count(conn, "completed") >= 50, timeout=30, message="50 jobs done")
    # One connection of the pod goes around the pooler: the hub's, which LISTENs.
    assert direct_pod_connections(conn, bouncer) == ["mobvibe-hub"]
    victim = sorted(running.worker_pids())[0]
    os.kill(victim, signal.SIGKILL)  # through the pooler too, the fast path ends its attempt
    assert running.wait_exit(60) == 0, running.log()[-3000:]
    assert count(conn, "completed") == len(ids)
    runs = marks.read_text().split("\n")
    assert len({line.split()[0] for line in runs if line}) == len(ids)
    # the workers came through the pooler (three, and the one started after the kill)
    assert bouncer.logins() >= 4
    assert not [
        e
        for e in running.events()
        if e.get("level") == "ERROR" and e.get("event") not in ("job_dead_lettered",)
    ]


def test_sigterm_through_pgbouncer_releases_running_jobs(
    queue: JobQueue,
    conn: psycopg.Connection[Any],
    supervisor: Callable[..., Running],
    bouncer: Bouncer,
    db_url: str,
) -> None:
    queue.enqueue_many([NewJob("sleep:30") for _ in range(2)])
    running = supervisor_behind(
        supervisor,
        bouncer,
        db_url,
        "--handler",
        "tests.processes.handlers:by_prompt",
        "--workers",
        "2",
        *FAST,
        "--shutdown-timeout",
        "1",
    )
    wait_for(lambda: count(conn, "processing") == 2, timeout=20, message="2 jobs running")
    started = time.monotonic()
    running.signal(signal.SIGTERM)
    assert running.wait_exit(30) == 0, running.log()[-3000:]
    assert time.monotonic() - started < 15
    assert count(conn, "pending") == 2  # given back, not failed
    assert conn.execute("SELECT max(retry_count) FROM coding_jobs").fetchone()[0] == 0


def test_cancel_through_pgbouncer_ends_the_running_command(
    queue: JobQueue,
    supervisor: Callable[..., Running],
    bouncer: Bouncer,
    db_url: str,
) -> None:
    job = queue.enqueue("60")
    running = supervisor_behind(
        supervisor,
        bouncer,
        db_url,
        "--exec",
        'exec sleep "$(cat)"',
        "--workers",
        "1",
        *FAST,
    )
    wait_for(lambda: command_processes(job), timeout=20, message="the job running")
    assert queue.cancel(job)
    wait_for(
        lambda: getattr(queue.get(job), "status", None) == "cancelled",
        timeout=10,
        message="cancelled",
    )
    wait_for(lambda: not command_processes(job), timeout=5, message="its command gone")
    assert running.proc.poll() is None


def _expire(conn: psycopg.Connection[Any], job_id: Any) -> None:
    conn.execute(
        "UPDATE coding_jobs SET heartbeat_at = now() - interval '5 seconds' WHERE id = %s",
        [job_id],
    )


def test_the_reaper_sweeps_through_pgbouncer(
    queue: JobQueue, conn: psycopg.Connection[Any], bouncer: Bouncer, tmp_path: Path
) -> None:
    """`--once` (the CronJob) and the daemon: no startup option, no prepared statement (the
    daemon sweeps more often than psycopg's threshold of five), nothing on the session."""
    conn.execute("UPDATE queue_config SET heartbeat_timeout = '1 second'")
    first, second = queue.enqueue("orphaned"), queue.enqueue("orphaned too")
    assert queue.claim() is not None and queue.claim() is not None
    env = {**os.environ, "DATABASE_URL": bouncer.url}
    _expire(conn, first)
    once = subprocess.run(
        [REAPER, "--once"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert once.returncode == 0, once.stderr
    assert json.loads(once.stdout)["requeued"] == 1

    log = tmp_path / "reaper.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [REAPER, "--interval", "0.1", "--log-format", "json", "--log-level", "debug"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _expire(conn, second)

        def swept() -> int:
            return log.read_text(errors="replace").count('"reaper_swept"')

        wait_for(lambda: swept() >= 10, timeout=30, message="ten sweeps through the pooler")
        assert getattr(queue.get(second), "retry_count", None) == 1
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
    failures = [line for line in log.read_text().splitlines() if '"level": "ERROR"' in line]
    assert not failures and '"reaper_sweep_failed"' not in log.read_text(), log.read_text()[-2000:]


def test_a_producer_enqueues_through_pgbouncer_without_preparing(
    conn: psycopg.Connection[Any], bouncer: Bouncer
) -> None:
    """One-by-one enqueues past psycopg's threshold of five, each on whichever server
    connection the pooler gives: nothing prepared, nothing lost. Another client holds
    the server connection the producer used last, every other time, so that the
    producer's statements move between server connections."""
    ids = []
    with (
        JobQueue(bouncer.url, max_size=1, prepare=False) as producer,
        psycopg.connect(bouncer.url, autocommit=True, prepare_threshold=None) as other,
    ):
        session = producer.create_session()
        for i in range(20):
            with contextlib.ExitStack() as held:
                if i % 2:
                    held.enter_context(other.transaction())
                    other.execute("SELECT 1")
                ids.append(producer.enqueue(f"prompt {i}", session_id=session))
    assert len(set(ids)) == 20
    assert count(conn, "pending") == 20


@contextlib.contextmanager
def quiet_role(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """The connecting role sends no job_status_changed in this database, meanwhile."""
    role_in_db = sql.SQL("ALTER ROLE {} IN DATABASE {} ").format(
        sql.Identifier(conn.info.user), sql.Identifier(conn.info.dbname)
    )
    conn.execute(role_in_db + sql.SQL("SET mobvibe.status_notify = off"))
    try:
        yield
    finally:
        conn.execute(role_in_db + sql.SQL("RESET mobvibe.status_notify"))


def test_status_notifications_are_turned_off_behind_pgbouncer_by_the_login_roles_setting(
    queue: JobQueue,
    conn: psycopg.Connection[Any],
    supervisor: Callable[..., Running],
    bouncer: Bouncer,
    db_url: str,
) -> None:
    """--no-status-notifications is a session setting, which a transaction pooler does not
    keep; the same setting on the supervisors' login role does reach PgBouncer's server
    connections (here for this database only)."""
    with (
        quiet_role(conn),
        psycopg.connect(db_url, autocommit=True) as listener,
    ):
        listener.execute("LISTEN job_status_changed")
        ids = queue.enqueue_many([NewJob("mark:/dev/null") for _ in range(20)])
        running = supervisor_behind(
            supervisor, bouncer, db_url, "--handler", "tests.processes.handlers:by_prompt",
            "--workers", "2", "--drain", *FAST,
        )  # fmt: skip
        assert running.wait_exit(30) == 0, running.log()[-3000:]
        assert count(conn, "completed") == len(ids)
        # The listener works: a transition by a session that turns the setting back on.
        conn.execute("SET mobvibe.status_notify = on")
        control = queue.enqueue("mark:/dev/null")
        conn.execute("SELECT cancel_job(%s)", [control])
        heard = [json.loads(n.payload) for n in listener.notifies(timeout=2, stop_after=1)]
    assert [(n["job_id"], n["new_status"]) for n in heard] == [(str(control), "cancelled")]
