"""Faults injected into a running supervisor: the queue loses nothing and recovers.

Real supervisor and reaper processes, a real PostgreSQL, real signals. Each
test prints one `FAULT name: figure=value ...` line with what it measured.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from supervisor.jobs import NewJob
from supervisor.queue import JobQueue
from tests.faults.handlers import executions
from tests.helpers import count, wait_for
from tests.processes.conftest import Running

HANDLER = ["--handler", "tests.faults.handlers:run"]
# Quick detection, but with room for a loaded 2-core machine: a heartbeat gap
# of 3 s under load would be a lease lost for no fault of the test's.
QUICK = ["--log-level", "info", "--poll-interval", "0.5", "--heartbeat-interval", "0.2",
         "--heartbeat-timeout", "3", "--reaper-interval", "0.5", "--shutdown-timeout", "5"]
KILL_EVERY = 1.0
STORM_JOBS = 5000


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Callable[..., None]:
    """report(name, figure=value, ...) prints the test's figures past pytest's capture."""

    def say(name: str, **figures: Any) -> None:
        line = " ".join(f"{key}={value}" for key, value in figures.items())
        with capsys.disabled():
            print(f"\nFAULT {name}: {line}")

    return say


def quick_backoff(conn: psycopg.Connection[Any]) -> None:
    conn.execute("UPDATE queue_config SET backoff_base = '0.1 s', backoff_cap = '0.5 s'")


def completed(conn: psycopg.Connection[Any]) -> int:
    return count(conn, "completed")


def final_rows(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, int, str | None]]:
    rows = conn.execute("SELECT id::text, status, attempt, error_message FROM coding_jobs")
    return {job_id: (status, attempt, error) for job_id, status, attempt, error in rows}


def duplicates(log: Path) -> list[tuple[str, int, int]]:
    """Executions of a job other than its last one: (job id, attempt, worker pid)."""
    per_job: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for job_id, attempt, pid in executions(log):
        per_job[job_id].append((attempt, pid))
    return [(job_id, attempt, pid) for job_id, runs in per_job.items()
            for attempt, pid in sorted(runs)[:-1]]


def seconds_until_more_complete(conn: psycopg.Connection[Any], more: int) -> float:
    """From now until `more` further jobs have completed: how long processing took to resume."""
    start, begun = completed(conn), time.monotonic()
    wait_for(lambda: completed(conn) >= start + more, timeout=60,
             message=f"{more} more jobs completing after the fault")
    return time.monotonic() - begun


def all_completed_once_or_explained(conn: psycopg.Connection[Any], ids: set[str], log: Path,
                                    running: Running) -> int:
    """Every job completed, none lost or added; the number of repeated executions."""
    assert running.wait_exit(120) == 0, running.log()[-3000:]
    rows = final_rows(conn)
    assert set(rows) == ids, "a job disappeared or appeared"
    assert {status for status, _, _ in rows.values()} == {"completed"}
    again = duplicates(log)
    assert not unexplained(again, running)
    return len(again)


def unexplained(again: list[tuple[str, int, int]], running: Running,
                killed: set[int] = frozenset()) -> list[tuple[str, int, int]]:  # type: ignore[assignment]
    """The repeated executions that no lost attempt explains.

    An execution may be repeated only when its attempt was lost: its worker was
    killed, was told or found out that its lease was gone, or the job was
    handed back by the reaper or the supervisor's rescue.
    """
    lost_pids = killed | {int(e["pid"]) for name in ("lease_lost", "self_fenced")
                          for e in running.events(name) if "pid" in e}
    taken_back = {e.get("job_id") for name in ("job_requeued", "job_rescued")
                  for e in running.events(name)}
    return [(job_id, attempt, pid) for job_id, attempt, pid in again
            if pid not in lost_pids and job_id not in taken_back]


def test_kill_9_storm_while_5000_jobs_drain_loses_nothing(
        queue: JobQueue, conn: Any, supervisor: Any, tmp_path: Path, report: Any) -> None:
    quick_backoff(conn)
    log = tmp_path / "executions"
    session = queue.create_session()
    ids = {str(i) for i in queue.enqueue_many([NewJob(f"rec:{log}:0.005", session)] * STORM_JOBS)}
    started = time.monotonic()
    running = supervisor("--workers", "4", "--drain", "--crash-loop-limit", "100000",
                         *HANDLER, *QUICK)
    killed: set[int] = set()
    pick = random.Random(STORM_JOBS)
    while running.proc.poll() is None:
        assert time.monotonic() - started < 300, f"drain unfinished after {len(killed)} kills"
        alive = sorted(running.worker_pids() - killed)
        if alive:
            victim = pick.choice(alive)
            try:
                os.kill(victim, signal.SIGKILL)
                killed.add(victim)
            except ProcessLookupError:
                pass
        try:  # the storm's cadence; the loop ends when the drain does
            running.proc.wait(KILL_EVERY)
        except subprocess.TimeoutExpired:
            pass
    seconds = time.monotonic() - started
    assert running.proc.returncode == 0, running.log()[-3000:]

    rows = final_rows(conn)
    assert set(rows) == ids, "a job disappeared or appeared"
    statuses = Counter(status for status, _, _ in rows.values())
    assert set(statuses) <= {"completed", "failed"}, statuses
    assert all(error for status, _, error in rows.values() if status == "failed")
    assert {job_id for job_id, _, _ in executions(log)} == ids, "a job never ran"
    again = duplicates(log)
    assert not unexplained(again, running, killed)
    report("kill9-storm", jobs=len(ids), completed=statuses["completed"],
           dead_lettered=statuses["failed"], kills=len(killed), duplicates=len(again),
           explained=len(again), seconds=f"{seconds:.1f}")
    assert len(killed) >= 3, "the storm must have hit some workers"


def test_every_worker_connection_terminated_mid_run(
        queue: JobQueue, conn: Any, supervisor: Any, tmp_path: Path, report: Any) -> None:
    log = tmp_path / "executions"
    session = queue.create_session()
    ids = {str(i) for i in queue.enqueue_many([NewJob(f"rec:{log}:0.005", session)] * 1500)}
    running = supervisor("--workers", "4", "--drain", *HANDLER, *QUICK)
    wait_for(lambda: completed(conn) >= 300, timeout=60, message="300 jobs completed")
    terminated = conn.execute(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name IN "
        "('mobvibe-worker', 'mobvibe-heartbeat') AND pid <> pg_backend_pid()").fetchone()[0]
    recovery = seconds_until_more_complete(conn, 50)
    again = all_completed_once_or_explained(conn, ids, log, running)
    assert running.events("db_reconnected"), "the workers reconnected"
    report("terminate-backends", jobs=len(ids), terminated=terminated,
           duplicates=again, recovery_s=f"{recovery:.2f}")
    assert terminated >= 4


@pytest.fixture
def own_server() -> Iterator[Any]:
    """A PostgreSQL of this test's own, to stop and start: never the shared one."""
    import pgserver  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="mobvibe-fault-pg-") as directory:
        server = pgserver.get_server(directory, cleanup_mode="delete")
        yield server
        server.cleanup()


RESTART_RECOVERY_BOUND = 12.0  # reconnect backoff (at most 5 s) + a poll + slack
OUTAGE_SEEN = ("finish_retrying", "db_connection_lost", "heartbeat_failed")


def test_postgres_immediate_stop_and_restart_mid_run(
        own_server: Any, supervisor: Any, tmp_path: Path, report: Any) -> None:
    import pgserver  # noqa: PLC0415

    url = own_server.get_uri()
    log = tmp_path / "executions"
    running = supervisor("--workers", "2", "--drain", "--migrate", *HANDLER, "--log-level", "info",
                         "--poll-interval", "0.5", "--heartbeat-interval", "0.5",
                         "--heartbeat-timeout", "10", "--reaper-interval", "0.5", url=url)
    with JobQueue(url) as queue:
        session = queue.create_session()
        ids = {str(i) for i in queue.enqueue_many([NewJob(f"rec:{log}:0.01", session)] * 800)}
    with psycopg.connect(url, autocommit=True) as watch:
        wait_for(lambda: completed(watch) >= 100, timeout=60, message="100 jobs completed")
    pgserver.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=own_server.pgdata,
                    user=own_server.system_user)
    stopped = time.monotonic()
    wait_for(lambda: any(running.events(name) for name in OUTAGE_SEEN), timeout=30,
             message="a worker to see the outage")
    # An outage of a few seconds, long enough for the workers' reconnect backoff
    # to grow: it ends once the embedded reaper has failed three sweeps.
    running.wait_event("reaper_sweep_failed", count=3, timeout=30)
    own_server.ensure_postgres_running()
    restarted = time.monotonic()
    assert running.proc.poll() is None, "the supervisor survived the outage"
    with psycopg.connect(url, autocommit=True) as watch:
        recovery = seconds_until_more_complete(watch, 10)
        again = all_completed_once_or_explained(watch, ids, log, running)
    report("postgres-restart", jobs=len(ids), duplicates=again,
           outage_s=f"{restarted - stopped:.2f}", recovery_s=f"{recovery:.2f}",
           bound_s=RESTART_RECOVERY_BOUND, supervisor_pid_kept=running.proc.pid)
    assert recovery <= RESTART_RECOVERY_BOUND


SILENT_POLL = 1.0


def both_idle(conn: psycopg.Connection[Any]) -> bool:
    """Both workers are waiting: their last statement asked when the next job is due."""
    row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND application_name = 'mobvibe-worker' AND state = 'idle' "
                       "AND query LIKE '%queue_next_run_at%'").fetchone()
    return row is not None and row[0] == 2


def test_jobs_start_within_the_poll_interval_when_notifications_are_lost(
        db_url: str, conn: Any, supervisor: Any, tmp_path: Path, report: Any) -> None:
    log = tmp_path / "executions"
    running = supervisor("--workers", "2", *HANDLER, "--log-level", "info",
                         "--poll-interval", str(SILENT_POLL), "--heartbeat-interval", "0.2",
                         "--heartbeat-timeout", "3")
    running.wait_workers(2)
    # A silently dropped LISTEN connection looks, to the worker, like no
    # notification ever arriving: these inserts fire no trigger, so no NOTIFY.
    latencies = []
    with psycopg.connect(db_url, autocommit=True) as silent:
        silent.execute("SET session_replication_role = replica")
        session = silent.execute("INSERT INTO coding_sessions DEFAULT VALUES RETURNING id"
                                 ).fetchone()[0]
        for n in range(5):
            wait_for(lambda: both_idle(conn), timeout=10, message="both workers waiting")
            job_id = silent.execute("INSERT INTO coding_jobs (session_id, prompt) "
                                    "VALUES (%s, %s) RETURNING id::text",
                                    [session, f"rec:{log}:0"]).fetchone()[0]
            enqueued = time.monotonic()
            wait_for(lambda: any(j == job_id for j, _, _ in executions(log)), timeout=10,
                     interval=0.01, message="the job to start without a notification")
            latencies.append(time.monotonic() - enqueued)
            if n % 2:  # and once more after the listening connection is cut outright
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE application_name = 'mobvibe-worker' "
                             "AND datname = current_database()")
    report("lost-notifications", jobs=len(latencies), poll_interval_s=SILENT_POLL,
           max_start_s=f"{max(latencies):.2f}",
           mean_start_s=f"{sum(latencies) / len(latencies):.2f}")
    assert max(latencies) <= SILENT_POLL + 0.5


def test_a_poison_job_is_dead_lettered_and_the_others_complete(
        queue: JobQueue, conn: Any, supervisor: Any, tmp_path: Path, report: Any) -> None:
    quick_backoff(conn)
    log = tmp_path / "executions"
    session = queue.create_session()
    poison = queue.enqueue("crash", session_id=session, max_retries=3, priority=10)
    others = queue.enqueue_many([NewJob(f"rec:{log}:0.01", session)] * 100)
    started = time.monotonic()
    running = supervisor("--workers", "2", "--drain", *HANDLER, *QUICK)
    assert running.wait_exit(60) == 0, running.log()[-3000:]
    job = queue.get(poison)
    assert job is not None and job["status"] == "failed" and job["retry_count"] == 3
    assert "worker exited" in job["error_message"] and "signal 9" in job["error_message"]
    assert job["end_reason"] == "worker_exited"
    assert all((queue.get(i) or {}).get("status") == "completed" for i in others)
    assert not running.events("crash_loop")
    report("poison-job", attempts=job["attempt"], others_completed=len(others),
           worker_deaths=len([e for e in running.events("worker_exited")
                              if e.get("cause") == "signal"]),
           seconds=f"{time.monotonic() - started:.1f}")


def test_a_hung_job_is_ended_by_the_job_timeout(
        queue: JobQueue, conn: Any, supervisor: Any, tmp_path: Path, report: Any) -> None:
    quick_backoff(conn)
    log = tmp_path / "executions"
    session = queue.create_session()
    hung = queue.enqueue("hang", session_id=session, max_retries=2, priority=10)
    others = queue.enqueue_many([NewJob(f"rec:{log}:0.01", session)] * 50)
    running = supervisor("--workers", "2", "--drain", "--job-timeout", "1", *HANDLER, *QUICK)
    assert running.wait_exit(60) == 0, running.log()[-3000:]
    job = queue.get(hung)
    assert job is not None and job["status"] == "failed" and job["retry_count"] == 2
    assert job["end_reason"] == "deadline_exceeded"
    assert "--job-timeout" in job["error_message"]
    assert all((queue.get(i) or {}).get("status") == "completed" for i in others)
    # the heartbeat thread kept the lease alive: the deadline ended the job, not the reaper
    assert not running.events("lease_lost") and not running.events("self_fenced")
    killed = [e for e in running.events("worker_exited") if e.get("cause") == "deadline"]
    report("hung-job", attempts=job["attempt"], killed_at_deadline=len(killed),
           others_completed=len(others),
           held_s=f"{(job['completed_at'] - job['started_at']).total_seconds():.2f}")
    assert len(killed) == 2
