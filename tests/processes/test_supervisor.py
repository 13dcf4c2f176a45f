"""The supervisor as a real process: draining, crashes, deadlines, shutdown, restarts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from mobvibe.client import JobQueue
from mobvibe.sql.jobs import NewJob
from tests.support.commands import BIN, run_command
from tests.support.processes import command_processes
from tests.support.rows import count
from tests.support.supervisor import FAST
from tests.support.waiting import wait_for

HANDLER = ["--handler", "tests.processes.handlers:by_prompt"]


def statuses(conn: Any) -> dict[str, int]:
    rows = conn.execute("SELECT status, count(*) FROM coding_jobs GROUP BY status").fetchall()
    return dict(rows)


def test_eight_workers_drain_2000_jobs_each_once_in_priority_order(
    queue: JobQueue, conn: Any, supervisor: Any
) -> None:
    queue.enqueue_many([NewJob("ok", priority=10)] * 1000 + [NewJob("ok", priority=0)] * 1000)
    running = supervisor("--workers", "8", "--drain", *HANDLER, *FAST)
    assert running.wait_exit(120) == 0
    assert statuses(conn) == {"completed": 2000}
    assert conn.execute("SELECT max(attempt), min(attempt) FROM coding_jobs").fetchone() == (1, 1)
    # A low-priority job is only claimed once no high-priority job is pending; the
    # claims of the 8 workers overlap, so allow one inversion per worker.
    inversions = conn.execute("""
        SELECT count(*) FROM coding_jobs lo JOIN coding_jobs hi
          ON hi.priority = 10 AND lo.priority = 0 AND hi.started_at > lo.started_at""").fetchone()
    assert inversions[0] <= 8


def test_kill_9_of_a_busy_worker_fails_its_attempt_within_1s(
    queue: JobQueue, conn: Any, supervisor: Any
) -> None:
    job_id = queue.enqueue("sleep:30", max_retries=3)
    running = supervisor("--workers", "1", *HANDLER, *FAST)
    # Started, not only claimed: a worker killed between its claim and the start
    # gives the job back unstarted, without counting an attempt.
    running.wait_event("job_claimed")
    (worker,) = running.worker_pids()
    os.kill(worker, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(
        lambda: count(conn, "pending") == 1,
        timeout=1.0,
        interval=0.01,
        message="the job back to pending within 1 s",
    )
    recovery = time.monotonic() - killed_at
    job = queue.get(job_id)
    assert job is not None
    assert job.retry_count == 1
    assert job.end_reason == "worker_exited"
    assert "signal 9" in job.error_message
    base, _cap, jitter = conn.execute(
        "SELECT extract(epoch FROM backoff_base), "
        "extract(epoch FROM backoff_cap), backoff_jitter "
        "FROM queue_config"
    ).fetchone()
    delay = (job.run_at - job.updated_at).total_seconds()
    assert float(base) <= delay <= float(base) * (1 + jitter) + 0.01
    running.wait_workers(1)  # replaced
    print(f"fast-path recovery: {recovery * 1000:.0f} ms")


def test_a_dead_workers_job_locked_by_an_open_cancel_does_not_hold_up_the_supervisor(
    queue: JobQueue, conn: Any, supervisor: Any, db_url: str
) -> None:
    """The parent ends a dead worker's attempt itself, in its own loop. When a producer's
    open transaction holds that job's row (a cancel not yet committed), the parent gives
    up after a while and goes on (the worker is replaced, the other job keeps running);
    the reaper ends the attempt, `cancelled`, once the transaction commits."""
    doomed, other = queue.enqueue("sleep:30"), queue.enqueue("sleep:30")
    running = supervisor("--workers", "2", *HANDLER, *FAST)
    running.wait_event("job_claimed", count=2)
    holder = {e["job_id"]: e["pid"] for e in running.events("job_claimed")}[str(doomed)]
    with psycopg.connect(db_url) as phone:  # not autocommit: its transaction stays open
        assert phone.execute("SELECT cancel_job(%s)", [doomed]).fetchone() == (True,)
        os.kill(holder, signal.SIGKILL)
        running.wait_event("rescue_failed", timeout=15)
        running.wait_event("worker_spawned", count=3, timeout=15)  # replaced meanwhile
        phone.commit()
    wait_for(
        lambda: getattr(queue.get(doomed), "status", None) == "cancelled",
        timeout=15,
        message="the dead worker's attempt ended cancelled",
    )
    job = queue.get(other)
    assert job is not None and (job.status, job.attempt) == ("processing", 1)


def test_kill_9_of_two_workers_mid_job_loses_nothing(
    queue: JobQueue, conn: Any, supervisor: Any
) -> None:
    conn.execute("UPDATE queue_config SET backoff_base = '0.2 s', backoff_cap = '1 s'")
    queue.enqueue_many([NewJob("sleep:0.3", max_retries=5)] * 40)
    running = supervisor("--workers", "4", "--drain", *HANDLER, *FAST)
    running.wait_event("job_claimed", count=4)  # each worker in its first job's handler
    victims = sorted(running.worker_pids())[:2]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    assert running.wait_exit(60) == 0
    assert statuses(conn) == {"completed": 40}
    assert conn.execute("SELECT sum(retry_count) FROM coding_jobs").fetchone()[0] == 2
    assert len(running.events("worker_spawned")) == 6


def test_supervisor_killed_with_its_workers_jobs_come_back_through_the_reaper(
    queue: JobQueue, conn: Any, supervisor: Any
) -> None:
    conn.execute("UPDATE queue_config SET backoff_base = '0.1 s', backoff_cap = '0.5 s'")
    queue.enqueue_many([NewJob("sleep:0.5")] * 10)
    first = supervisor("--workers", "3", "--no-reaper", *HANDLER, *FAST)
    wait_for(lambda: count(conn, "processing") == 3, message="3 jobs running")
    os.killpg(first.pid, signal.SIGKILL)  # the whole pod dies: no fast path is possible
    first.wait_exit(10)
    wait_for(lambda: count(conn, "processing") == 3, message="orphaned jobs still processing")
    killed_at = time.monotonic()
    second = supervisor("--workers", "2", "--drain", *HANDLER, *FAST)
    assert second.wait_exit(60) == 0
    assert statuses(conn) == {"completed": 10}
    reaped = conn.execute("SELECT count(*) FROM coding_jobs WHERE retry_count = 1").fetchone()[0]
    assert reaped == 3
    print(f"reaper recovery and drain: {time.monotonic() - killed_at:.1f} s")


def test_sigterm_finishes_short_jobs_then_exits_0(
    queue: JobQueue, conn: Any, supervisor: Any
) -> None:
    # Two batches: the sleeps first (in one batch, jobs of different sessions
    # go in the order of their sessions).
    queue.enqueue_many([NewJob("sleep:1")] * 3)
    queue.enqueue_many([NewJob("ok")] * 5)
    running = supervisor("--workers", "3", *HANDLER, *FAST)
    wait_for(lambda: count(conn, "processing") == 3, message="3 jobs running")
    running.signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    assert running.wait_exit(10) == 0
    assert time.monotonic() - stopped_at < 5
    assert statuses(conn) == {"completed": 3, "pending": 5}  # no claim after SIGTERM


def test_sigterm_releases_long_jobs_at_the_timeout_without_counting_them(
    queue: JobQueue, conn: Any, supervisor: Any
) -> None:
    queue.enqueue_many([NewJob("sleep:60")] * 2 + [NewJob("hang")])
    running = supervisor("--workers", "3", *HANDLER, *FAST, "--shutdown-timeout", "1")
    wait_for(lambda: count(conn, "processing") == 3, message="3 jobs running")
    running.signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    assert running.wait_exit(15) == 0
    elapsed = time.monotonic() - stopped_at
    rows = conn.execute(
        "SELECT status, retry_count, end_reason, run_at <= now() FROM coding_jobs"
    ).fetchall()
    assert rows == [("pending", 0, "released at shutdown", True)] * 3
    assert elapsed < 1 + 3 + 2  # timeout + release grace + slack
    print(f"SIGTERM to exit with 3 unfinished jobs: {elapsed:.1f} s")


def test_second_sigint_releases_at_once(queue: JobQueue, conn: Any, supervisor: Any) -> None:
    queue.enqueue_many([NewJob("sleep:60")] * 2)
    running = supervisor("--workers", "2", *HANDLER, *FAST, "--shutdown-timeout", "30")
    wait_for(lambda: count(conn, "processing") == 2, message="2 jobs running")
    running.signal(signal.SIGINT)
    running.wait_event("shutdown_started")
    running.signal(signal.SIGINT)
    assert running.wait_exit(8) == 0
    assert statuses(conn) == {"pending": 2}


def test_python_handler_past_job_timeout_is_killed_and_retried(
    queue: JobQueue, conn: Any, supervisor: Any
) -> None:
    job_id = queue.enqueue("hang", max_retries=3)
    running = supervisor("--workers", "1", *HANDLER, *FAST, "--job-timeout", "1")
    wait_for(
        lambda: getattr(queue.get(job_id), "retry_count", None) == 1,
        timeout=10,
        message="the hung job to be failed",
    )
    job = queue.get(job_id)
    assert job is not None and job.end_reason == "deadline_exceeded"
    assert job.status == "pending" and job.run_at > job.updated_at
    running.wait_event("worker_spawned", count=2)


def test_exec_command_past_job_timeout_is_killed_and_retried(
    queue: JobQueue, conn: Any, supervisor: Any
) -> None:
    job_id = queue.enqueue("anything", max_retries=3)
    supervisor("--workers", "1", "--exec", "sleep 60", *FAST, "--job-timeout", "0.5")
    wait_for(
        lambda: getattr(queue.get(job_id), "retry_count", None) == 1,
        timeout=10,
        message="the slow command to be failed",
    )
    job = queue.get(job_id)
    assert job is not None and job.end_reason == "deadline_exceeded"


def test_a_retry_is_logged_with_when_it_runs_in_iso_8601_utc(
    queue: JobQueue, conn: Any, supervisor: Any
) -> None:
    job_id = queue.enqueue("anything", max_retries=3)
    running = supervisor("--workers", "1", "--exec", "exit 3", *FAST)
    (line,) = running.wait_event("job_retry_scheduled")
    job = queue.get(job_id)
    assert job is not None and job.status == "pending" and job.retry_count == 1
    iso = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"
    assert re.match(iso, line["time"]) and re.match(iso, line["retry_at"])
    due = datetime.strptime(line["retry_at"], "%Y-%m-%dT%H:%M:%S.%f%z")
    assert abs((due - job.run_at).total_seconds()) < 0.001
    assert line["retry_at"] in line["message"]


def test_a_sweep_held_up_by_a_locked_session_does_not_stop_the_pods_lease_renewals(
    queue: JobQueue, conn: Any, supervisor: Any, db_url: str
) -> None:
    """The embedded reaper waits for the first session of its batch, on the connection
    where the hub renews the pod's leases. A transaction that holds that session's lock
    (a producer's open INSERT, an operator's) must not make the pod's workers fence."""
    stuck = queue.create_session()
    orphan = queue.enqueue("orphaned", session_id=stuck)
    assert queue.claim("gone:0:1") is not None  # its worker is gone: the reaper's job
    conn.execute(
        "UPDATE coding_jobs SET heartbeat_at = now() - interval '1 hour' WHERE id = %s", [orphan]
    )
    job_id = queue.enqueue("sleep:30")
    with psycopg.connect(db_url) as holder:  # not autocommit: its transaction stays open
        holder.execute("SELECT 1 FROM coding_sessions WHERE id = %s FOR NO KEY UPDATE", [stuck])
        running = supervisor("--workers", "1", *HANDLER, *FAST)
        wait_for(
            lambda: getattr(queue.get(job_id), "status", None) == "processing",
            timeout=15,
            message="the long job running",
        )
        token = "SELECT lease_token FROM coding_jobs WHERE id = %s"  # the owner reads it
        lease = conn.execute(token, [job_id]).fetchone()
        # Ten sweeps given up: about 4 s, several times the 1.1 s after which an
        # unrenewed worker fences itself.
        running.wait_event("reaper_sweep_cancelled", count=10, timeout=20)
        job = queue.get(job_id)
        assert job is not None and (job.status, job.attempt) == ("processing", 1)
        assert conn.execute(token, [job_id]).fetchone() == lease
        assert not running.events("lease_lost")
        holder.rollback()
    wait_for(
        lambda: getattr(queue.get(orphan), "retry_count", None) == 1,
        timeout=15,
        message="the orphan requeued once the session's lock is gone",
    )
    assert getattr(queue.get(orphan), "end_reason", None) == "heartbeat_expired"


def test_a_cancel_left_open_in_a_transaction_stops_only_its_own_job(
    queue: JobQueue, conn: Any, supervisor: Any, db_url: str
) -> None:
    """A producer cancels a running prompt inside a transaction it leaves open: the job's
    row stays locked. The pod's heartbeat passes over that row, so its other job keeps its
    lease; the cancelled one ends `cancelled` once the transaction commits."""
    first, second = queue.enqueue("sleep:30"), queue.enqueue("sleep:30")
    running = supervisor("--workers", "2", *HANDLER, *FAST)
    wait_for(lambda: count(conn, "processing") == 2, timeout=15, message="2 jobs running")
    with psycopg.connect(db_url) as phone:  # not autocommit: its transaction stays open
        assert phone.execute("SELECT cancel_job(%s)", [first]).fetchone() == (True,)
        since = conn.execute("SELECT now()").fetchone()[0]
        # Renewed 2 s past the lock: well past the 1.1 s after which an unrenewed
        # worker stops its job.
        wait_for(
            lambda: conn.execute(
                "SELECT heartbeat_at > %s + interval '2 seconds' FROM coding_jobs WHERE id = %s",
                [since, second],
            ).fetchone()[0],
            timeout=15,
            message="the other job's lease renewed while the row is locked",
        )
        phone.commit()
    wait_for(
        lambda: getattr(queue.get(first), "status", None) == "cancelled",
        timeout=15,
        message="the cancelled job ended",
    )
    job = queue.get(second)
    assert job is not None and (job.status, job.attempt) == ("processing", 1)
    assert not [e for e in running.events("job_stop_requested") if e["job_id"] == str(second)]


def test_a_cancel_held_open_across_a_renewal_leaves_the_healthy_job_untouched(
    queue: JobQueue, conn: Any, supervisor: Any, db_url: str, tmp_path: Path
) -> None:
    """At the largest heartbeat interval allowed, a third of the timeout, a producer's cancel
    left open in a transaction locks the job's row across a renewal of the pod: the renewal
    passes it over (SKIP LOCKED) and the lease is two intervals old at the next one. The
    worker allows for that; once the cancel is rolled back the job runs to its end, on its
    first attempt, never told to stop."""
    job_id = queue.enqueue("anything")
    running = supervisor(
        "--workers", "1", "--exec", "exec sleep 6",
        "--heartbeat-interval", "1", "--poll-interval", "0.5", "--reaper-interval", "0.5",
        heartbeat_timeout=3,
    )  # fmt: skip
    # The command runs in its sandbox: found by its JOB_ID, as the host sees it.
    wait_for(lambda: command_processes(job_id), timeout=15, message="the job's command running")

    def heartbeat() -> Any:
        return conn.execute("SELECT heartbeat_at FROM coding_jobs WHERE id = %s", [job_id])

    def command_stopped() -> bool:
        return not command_processes(job_id)

    first = heartbeat().fetchone()
    # just renewed: the lock taken now spans the next renewal
    wait_for(lambda: heartbeat().fetchone() != first, timeout=5, message="a renewal")
    with psycopg.connect(db_url) as phone:  # not autocommit: its transaction stays open
        assert phone.execute("SELECT cancel_job(%s)", [job_id]).fetchone() == (True,)
        wait_for(
            lambda: running.events("lease_renewal_passed_over") or command_stopped(),
            timeout=5,
            message="a renewal passed over (or the command stopped for it)",
        )
        phone.rollback()
    wait_for(
        lambda: (
            getattr(queue.get(job_id), "status", None) not in ("processing", None)
            and getattr(queue.get(job_id), "attempt", 0) >= 1
        ),
        timeout=20,
        message="the job's end",
    )
    job = queue.get(job_id)
    assert job is not None and (job.status, job.attempt, job.retry_count) == ("completed", 1, 0)
    assert not running.events("job_stop_requested") and not running.events("lease_lost")


def test_sigterm_gives_a_running_exec_command_back_without_counting_it(
    queue: JobQueue, conn: Any, supervisor: Any
) -> None:
    queue.enqueue_many([NewJob("anything")] * 2)
    running = supervisor("--workers", "2", "--exec", "sleep 60", *FAST, "--shutdown-timeout", "0.5")
    wait_for(lambda: count(conn, "processing") == 2, message="2 commands running")
    running.signal(signal.SIGTERM)
    assert running.wait_exit(15) == 0
    rows = conn.execute("SELECT status, retry_count, end_reason FROM coding_jobs").fetchall()
    assert rows == [("pending", 0, "released at shutdown")] * 2
    assert {e["cause"] for e in running.events("worker_exited")} <= {"clean"}


def test_exec_command_gets_prompt_and_environment(
    queue: JobQueue, conn: Any, supervisor: Any
) -> None:
    good = queue.enqueue("hello prompt")
    bad = queue.enqueue("please fail", max_retries=1)
    script = (
        'read -r line; echo "$JOB_ID $ATTEMPT $line"; '
        'case "$line" in *fail*) echo "it broke" >&2; exit 3;; esac'
    )
    running = supervisor("--workers", "1", "--drain", "--exec", script, *FAST)
    assert running.wait_exit(30) == 0
    done = queue.get(good)
    assert done is not None and done.output == f"{good} 1 hello prompt\n"
    failed = queue.get(bad)
    assert failed is not None and failed.status == "failed"
    assert "it broke" in failed.error_message and "exit status 3" in failed.error_message


def test_crash_looping_handler_stops_the_supervisor(
    queue: JobQueue, conn: Any, supervisor: Any
) -> None:
    queue.enqueue_many([NewJob("exit:1", max_retries=100)] * 50)
    running = supervisor("--workers", "2", *HANDLER, *FAST)
    assert running.wait_exit(60) == 3
    assert running.events("crash_loop")
    assert count(conn, "processing") == 0


def test_sighup_replaces_every_worker_without_dropping_a_job(
    queue: JobQueue, conn: Any, supervisor: Any
) -> None:
    queue.enqueue_many([NewJob("sleep:0.05")] * 200)
    running = supervisor("--workers", "3", "--drain", *HANDLER, *FAST)
    before = running.wait_workers(3)
    running.signal(signal.SIGHUP)
    wait_for(
        lambda: not (running.worker_pids() & before), timeout=30, message="every worker replaced"
    )
    assert running.wait_exit(60) == 0
    assert statuses(conn) == {"completed": 200}
    # A job claimed along with a retiring worker's last completion is given back
    # unstarted (a second attempt, no failure); none may wait for the reaper.
    failed_once = conn.execute(
        "SELECT id, attempt, error_message FROM coding_jobs "
        "WHERE error_message IS NOT NULL OR retry_count > 0"
    ).fetchall()
    assert not failed_once


def test_max_jobs_per_worker_recycles_workers(queue: JobQueue, conn: Any, supervisor: Any) -> None:
    queue.enqueue_many([NewJob("ok")] * 30)
    running = supervisor(
        "--workers", "1", "--drain", "--max-jobs-per-worker", "10", *HANDLER, *FAST
    )
    assert running.wait_exit(30) == 0
    assert statuses(conn) == {"completed": 30}
    assert len(running.events("worker_spawned")) >= 3


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """mobvibe-supervisor with no DATABASE_URL but what `env` gives."""
    return run_command("mobvibe-supervisor", *args, url=None, env=env, timeout=30)


def test_bad_options_fail_at_start_with_one_line(db_url: str) -> None:
    env = {"DATABASE_URL": db_url}
    cases = [
        (["--demo", "--workers", "0"], "--workers"),
        (["--demo", "--heartbeat-interval", "-1"], "heartbeat-interval"),
        (["--demo", "--heartbeat-interval", "5x"], "not a duration"),
        (["--handler", "no.such.module:func"], "cannot import"),
        (["--handler", "tests.processes.handlers:nothing"], "no function"),
        # one rule for the heartbeat settings, against the timeout the database sets (30 s)
        (["--demo", "--heartbeat-interval", "15s"], "at most a third of the heartbeat timeout"),
        ([], "give --exec CMD or --handler PKG.MOD:FUNC"),
        (["--demo", "--exec", "true"], "give one of --exec, --handler and --demo"),
        (["--exec", "no-such-agent --prompt-on-stdin"], "'no-such-agent' is not a command"),
        (["--exec", "echo 'unclosed"], "--exec"),
        (["--exec", "cat", "--exec-env", "DATABASE_URL"], "never gets the database's"),
        (["--exec", "cat", "--exec-env", "PGPASSWORD"], "never gets the database's"),
    ]
    for args, fragment in cases:
        result = run_cli(*args, "--metrics-port", "0", env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert fragment in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().count("\n") == 0, (args, result.stderr)


def test_a_handler_is_imported_from_the_current_directory(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "local_handlers.py").write_text("def run(job):\n    pass\n")
    result = subprocess.run(
        [
            str(BIN / "mobvibe-supervisor"),
            "--handler",
            "local_handlers:run",
            "--drain",
            "--metrics-port",
            "0",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
        env={**os.environ, "DATABASE_URL": db_url},
    )
    assert result.returncode == 0, result.stderr


def test_env_variables_configure_the_supervisor(db_url: str) -> None:
    result = run_cli(
        "--demo", "--metrics-port", "0", env={"DATABASE_URL": db_url, "MOBVIBE_WORKERS": "0"}
    )
    assert result.returncode == 2 and "--workers" in result.stderr
    assert "MOBVIBE_WORKERS" in run_cli("--help").stdout
    assert run_cli("--version").returncode == 0


def test_unreachable_database_fails_at_start_with_one_line() -> None:
    result = run_cli(
        "--demo", "--metrics-port", "0", env={"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"}
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "cannot connect" in result.stderr
