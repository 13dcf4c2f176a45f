"""Faults injected into a running supervisor: the queue loses nothing and recovers.

Real supervisor and reaper processes, a real PostgreSQL, real signals. Each
test prints one `FAULT name: figure=value ...` line with what it measured.

The oracle is the handler's own record of every execution (tests/faults/handlers.py)
against the rows and the supervisor's JSON log: a job may run more than once
only when an earlier attempt of it was lost, and the log must say how.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from mobvibe.client import JobQueue
from mobvibe.sql.jobs import NewJob
from mobvibe.supervisor.worker import RECONNECT_DELAY_MAX
from tests.faults.handlers import Execution, executions
from tests.support.rows import count
from tests.support.sqlclock import migrated
from tests.support.supervisor import FAST, Running
from tests.support.waiting import wait_for

HANDLER = ["--handler", "tests.faults.handlers:run"]
# FAST, with room for a loaded 2-core machine: a heartbeat gap of 1.5 s under
# load would be a lease lost for no fault of the test's.
QUICK = [*FAST, "--log-level", "info", "--reaper-interval", "0.5"]
QUICK_TIMEOUT = 3.0
KILL_EVERY = 1.0
STORM_JOBS = 5000


def set_backoff(conn: psycopg.Connection[Any], base: str = "0.1 s", cap: str = "0.5 s") -> None:
    conn.execute("UPDATE queue_config SET backoff_base = %s, backoff_cap = %s", [base, cap])


def completed(conn: psycopg.Connection[Any]) -> int:
    return count(conn, "completed")


def final_rows(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, int, str | None, str | None]]:
    """job id -> (status, attempt, error_message, end_reason)."""
    rows = conn.execute(
        "SELECT id::text, status, attempt, error_message, end_reason FROM coding_jobs"
    )
    return {
        job_id: (status, attempt, error, reason) for job_id, status, attempt, error, reason in rows
    }


def repeated(log: Path) -> list[Execution]:
    """Every execution of a job but its last attempt's; no attempt may have run twice."""
    per_job: dict[str, list[Execution]] = defaultdict(list)
    for run in executions(log):
        per_job[run.job_id].append(run)
    again = []
    for runs in per_job.values():
        attempts = [run.attempt for run in runs]
        assert len(set(attempts)) == len(attempts), f"one attempt (one lease) ran twice: {runs}"
        again.extend(sorted(runs, key=lambda run: run.attempt)[:-1])
    return again


def unexplained(
    again: list[Execution], log: Path, running: Running, killed: frozenset[int] = frozenset()
) -> list[Execution]:
    """The repeated executions that no lost attempt explains.

    An attempt is lost, and may run again under a new attempt number, when
    its worker died in it (killed by the test, or by a signal, an error or the
    job deadline, as worker_exited says: the worker's last execution), when
    its worker was told or found out that the lease was gone (lease_lost,
    self_fenced), when the supervisor failed it for a dead worker
    (job_rescued, with its attempt), or when the reaper requeued it
    (job_requeued).
    """
    last_of: dict[int, Execution] = {}
    for run in executions(log):
        last_of[run.pid] = run
    died = set(killed) | {
        int(e["worker_pid"])
        for e in running.events("worker_exited")
        if e.get("cause") in ("signal", "error", "deadline")
    }
    died_in = {last_of[pid] for pid in died if pid in last_of}
    fenced = {
        (e.get("job_id"), int(e["pid"]))
        for name in ("lease_lost", "self_fenced")
        for e in running.events(name)
    }
    rescued = {(e.get("job_id"), e.get("attempt")) for e in running.events("job_rescued")}
    reaped = {e.get("job_id") for e in running.events("job_requeued")}
    return [
        run
        for run in again
        if run not in died_in
        and (run.job_id, run.pid) not in fenced
        and (run.job_id, run.attempt) not in rescued
        and run.job_id not in reaped
    ]


def failures_that_never_started(
    conn: psycopg.Connection[Any], runs: list[Execution], running: Running
) -> list[tuple[str, int, int]]:
    """(job id, failures counted, attempts started) of each job with more failures than starts.

    Every failure counted against a job must be an attempt that started: one
    the handler recorded, or one its worker's slot showed when the worker died
    (the supervisor failed it: job_rescued). A completed job has started
    retry_count + 1 attempts at least, a dead letter retry_count.
    """
    started = {(run.job_id, run.attempt) for run in runs} | {
        (e.get("job_id"), e.get("attempt")) for e in running.events("job_rescued")
    }
    starts = Counter(job_id for job_id, _ in started)
    rows = conn.execute(
        "SELECT id::text, retry_count + (status = 'completed')::int "
        "FROM coding_jobs WHERE retry_count > 0"
    )
    return [(job_id, needed, starts[job_id]) for job_id, needed in rows if starts[job_id] < needed]


def seconds_until_completed(conn: psycopg.Connection[Any], target: int, since: float) -> float:
    """Seconds from `since` (monotonic) until `target` jobs have completed."""
    wait_for(
        lambda: completed(conn) >= target,
        timeout=60,
        message=f"{target} jobs completed after the fault",
    )
    return time.monotonic() - since


def all_completed_once_or_explained(
    conn: psycopg.Connection[Any], ids: set[str], log: Path, running: Running
) -> tuple[int, int]:
    """The drain ended, every job completed, none lost or added: (repeated, explained)."""
    assert running.wait_exit(120) == 0, running.log()[-3000:]
    rows = final_rows(conn)
    assert set(rows) == ids, "a job disappeared or appeared"
    assert Counter(row[0] for row in rows.values()) == {"completed": len(ids)}
    again = repeated(log)
    assert not unexplained(again, log, running), "a job ran again with no lost attempt"
    return len(again), len(again)


def log_time(record: dict[str, Any]) -> float:
    """A JSON log record's time (ISO 8601 UTC, to the millisecond) as time.time()."""
    return datetime.fromisoformat(record["time"]).timestamp()


# -- 1. kill -9 storm ------------------------------------------------------------


def test_kill_9_storm_while_5000_jobs_drain_loses_nothing(
    queue: JobQueue, conn: Any, supervisor: Any, tmp_path: Path, report: Any
) -> None:
    set_backoff(conn)
    log = tmp_path / "executions"
    # Half the jobs have one attempt only: a kill that hits one dead-letters it.
    jobs = [NewJob(f"rec:{log}:0.005", max_retries=1 + 2 * (n % 2)) for n in range(STORM_JOBS)]
    ids = {str(i) for i in queue.enqueue_many(jobs)}
    started = time.monotonic()
    # Each kill is a crash to the arbiter: more than --crash-loop-limit of them
    # a minute would stop the supervisor, as designed for a real crash loop.
    running = supervisor(
        "--workers",
        "4",
        "--drain",
        "--crash-loop-limit",
        "100000",
        *HANDLER,
        *QUICK,
        heartbeat_timeout=QUICK_TIMEOUT,
    )
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
    statuses = Counter(status for status, _, _, _ in rows.values())
    dead = [row for row in rows.values() if row[0] == "failed"]
    runs = executions(log)
    rescued = {e.get("job_id") for e in running.events("job_rescued")}
    never = ids - {run.job_id for run in runs}
    again = repeated(log)
    not_explained = unexplained(again, log, running, frozenset(killed))
    unstarted = failures_that_never_started(conn, runs, running)
    # what the supervisor gave back as never started, its dead worker indeed never ran
    given_back = {
        (e.get("job_id"), int(str(e.get("worker")).split(":")[2]))  # host:index:pid:instance
        for e in running.events("unstarted_job_released")
    }
    ran_anyway = [run for run in runs if (run.job_id, run.pid) in given_back]
    report(
        "kill9-storm",
        jobs=len(ids),
        completed=statuses["completed"],
        dead=statuses["failed"],
        kills=len(killed),
        rescued=len(running.events("job_rescued")),
        released_unstarted=len(running.events("unstarted_job_released")),
        executions=len(runs),
        duplicates=len(again),
        explained=len(again) - len(not_explained),
        failures_unstarted=len(unstarted),
        seconds=f"{seconds:.1f}",
    )
    assert set(rows) == ids, "a job disappeared or appeared"
    assert set(statuses) <= {"completed", "failed"}, statuses
    assert all(
        error and reason in ("worker_exited", "heartbeat_expired") for _, _, error, reason in dead
    ), dead
    # a job that never reached its handler must be a dead letter whose worker died in it
    assert all(rows[job_id][0] == "failed" and job_id in rescued for job_id in never), never
    assert not not_explained, not_explained
    # a repeated execution is an earlier attempt: the row ended on a later one
    assert all(rows[run.job_id][1] > run.attempt for run in again)
    assert not unstarted, f"failures counted for attempts that never started: {unstarted[:5]}"
    assert not ran_anyway, ran_anyway
    assert len(killed) >= 3, "the storm must have hit some workers"


# -- 2. every connection terminated ------------------------------------------------


def test_every_connection_terminated_mid_run(
    queue: JobQueue, conn: Any, supervisor: Any, tmp_path: Path, report: Any
) -> None:
    log = tmp_path / "executions"
    ids = {str(i) for i in queue.enqueue_many([NewJob(f"rec:{log}:0.005")] * 1500)}
    running = supervisor(
        "--workers", "4", "--drain", *HANDLER, *QUICK, heartbeat_timeout=QUICK_TIMEOUT
    )
    wait_for(lambda: completed(conn) >= 300, timeout=60, message="300 jobs completed")
    done_before = completed(conn)
    # Every backend of the test database but this one: the workers' claim and
    # LISTEN connections, their heartbeat connections, the reaper's, the client's.
    cut = conn.execute(
        "SELECT application_name, pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND backend_type = 'client backend' "
        "AND pid <> pg_backend_pid()"
    ).fetchall()
    since = time.monotonic()
    workers = {e["worker"] for e in running.events("worker_started")}
    wait_for(
        lambda: {e["worker"] for e in running.events("db_reconnected")} >= workers,
        timeout=30,
        message="every worker reconnected",
    )
    reconnected = time.monotonic() - since
    resumed = seconds_until_completed(conn, done_before + 50, since)
    again, explained = all_completed_once_or_explained(conn, ids, log, running)
    # the workers waited the fault out: none died, none was replaced
    assert len(running.events("worker_spawned")) == 4
    assert {e["cause"] for e in running.events("worker_exited")} == {"clean"}
    terminated = Counter(name for name, done in cut if done)
    report(
        "terminate-backends",
        jobs=len(ids),
        terminated=sum(terminated.values()),
        workers_reconnected=len(workers),
        duplicates=again,
        explained=explained,
        reconnect_s=f"{reconnected:.2f}",
        recovery_s=f"{resumed:.2f}",
        by_application="/".join(f"{k}:{v}" for k, v in sorted(terminated.items())),
    )
    assert terminated["mobvibe-worker"] == 4


# -- 3. PostgreSQL crash and restart -------------------------------------------------


POLL = 0.5
# After the restart, a worker may still sleep out its reconnect delay (doubling,
# at most RECONNECT_DELAY_MAX), then wait up to a poll interval; plus 2 s of slack.
RESTART_RECOVERY_BOUND = RECONNECT_DELAY_MAX + POLL + 2.0
OUTAGE_SEEN = ("finish_retrying", "db_connection_lost", "hub_connection_lost")


def test_postgres_immediate_stop_and_restart_mid_run(
    own_server: Any, supervisor: Any, tmp_path: Path, report: Any
) -> None:
    import pgserver

    url = own_server.get_uri()
    log = tmp_path / "executions"
    migrated(url)
    with JobQueue(url) as queue:
        ids = {str(i) for i in queue.enqueue_many([NewJob(f"rec:{log}:0.01")] * 800)}
    running = supervisor(
        "--workers",
        "2",
        "--drain",
        *HANDLER,
        "--log-level",
        "info",
        "--poll-interval",
        str(POLL),
        "--heartbeat-interval",
        "0.5",
        "--reaper-interval",
        "0.5",
        url=url,
        heartbeat_timeout=10,
    )
    with psycopg.connect(url, autocommit=True) as watch:
        wait_for(lambda: completed(watch) >= 100, timeout=60, message="100 jobs completed")
    pgserver.pg_ctl(
        ["-w", "-m", "immediate", "stop"], pgdata=own_server.pgdata, user=own_server.system_user
    )
    stopped = time.monotonic()
    wait_for(
        lambda: any(running.events(name) for name in OUTAGE_SEEN),
        timeout=30,
        message="a worker to see the outage",
    )
    # An outage of a few seconds, long enough for the reconnect backoff to grow: it
    # ends once the hub (the embedded reaper's connection too) has failed five times.
    running.wait_event("hub_connection_lost", count=5, timeout=30)
    own_server.ensure_postgres_running()
    restarted = time.monotonic()
    assert running.proc.poll() is None, "the supervisor survived the outage"
    with psycopg.connect(url, autocommit=True) as watch:
        done_then = completed(watch)
        recovery = seconds_until_completed(watch, done_then + 10, restarted)
        again, explained = all_completed_once_or_explained(watch, ids, log, running)
    replaced = len(running.events("worker_spawned")) - 2
    report(
        "postgres-restart",
        jobs=len(ids),
        duplicates=again,
        explained=explained,
        outage_s=f"{restarted - stopped:.2f}",
        recovery_s=f"{recovery:.2f}",
        bound_s=RESTART_RECOVERY_BOUND,
        workers_replaced=replaced,
        supervisor_pid_kept=running.proc.pid,
    )
    assert recovery <= RESTART_RECOVERY_BOUND
    assert replaced == 0, "the workers waited the outage out instead of exiting"


# -- 4. lost notifications ------------------------------------------------------------

SILENT_POLL = 1.0


def both_idle(conn: psycopg.Connection[Any]) -> bool:
    """Both workers are waiting: their last statement was a claim that found nothing, or
    the end of a job that looked for the next (none is pending here)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'mobvibe-worker' AND state = 'idle' "
        "AND (query LIKE '%claim_next_job%' OR query LIKE '%queue_end_and_claim%')"
    ).fetchone()
    return row is not None and row[0] == 2


def test_jobs_start_within_the_poll_interval_when_notifications_are_lost(
    db_url: str, conn: Any, supervisor: Any, tmp_path: Path, report: Any
) -> None:
    log = tmp_path / "executions"
    running = supervisor(
        "--workers",
        "2",
        *HANDLER,
        "--log-level",
        "info",
        "--poll-interval",
        str(SILENT_POLL),
        "--heartbeat-interval",
        "0.2",
        heartbeat_timeout=3,
    )
    running.wait_workers(2)
    # A silently dropped LISTEN connection looks, to the hub, like no notification
    # ever arriving: these inserts fire no trigger, so no NOTIFY. The hub's poll
    # finds them.
    latencies = []
    with psycopg.connect(db_url, autocommit=True) as silent:
        silent.execute("SET session_replication_role = replica")
        session = silent.execute(
            "INSERT INTO coding_sessions DEFAULT VALUES RETURNING id"
        ).fetchone()[0]
        for n in range(5):
            wait_for(lambda: both_idle(conn), timeout=10, message="both workers waiting")
            job_id = silent.execute(
                "INSERT INTO coding_jobs (session_id, prompt) VALUES (%s, %s) RETURNING id::text",
                [session, f"rec:{log}:0"],
            ).fetchone()[0]
            enqueued = time.monotonic()
            wait_for(
                lambda job_id=job_id: any(run.job_id == job_id for run in executions(log)),
                timeout=10,
                interval=0.01,
                message="the job to start without a notification",
            )
            latencies.append(time.monotonic() - enqueued)
            if n % 2:  # and once more after the listening connection is cut outright
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'mobvibe-hub' "
                    "AND datname = current_database()"
                )
    report(
        "lost-notifications",
        jobs=len(latencies),
        poll_interval_s=SILENT_POLL,
        max_start_s=f"{max(latencies):.2f}",
        mean_start_s=f"{sum(latencies) / len(latencies):.2f}",
    )
    assert max(latencies) <= SILENT_POLL + 0.5


# -- 5. and 6. a bad job among good ones ---------------------------------------------


def bad_job_among_others(
    queue: JobQueue, prompt: str, others: int, log: Path, max_retries: int
) -> tuple[Any, list[Any]]:
    """Enqueue the bad job first and ahead of `others` recording jobs, each in a session of
    its own (one session's prompts run one at a time); (bad id, other ids)."""
    bad = queue.enqueue(prompt, max_retries=max_retries, priority=10)
    return bad, queue.enqueue_many([NewJob(f"rec:{log}:0.01")] * others)


def all_completed(queue: JobQueue, ids: list[Any]) -> bool:
    return all(getattr(queue.get(i), "status", None) == "completed" for i in ids)


POISON_JOBS = 4


def test_poison_jobs_are_dead_lettered_and_the_others_complete(
    queue: JobQueue, conn: Any, supervisor: Any, tmp_path: Path, report: Any
) -> None:
    set_backoff(conn)
    poison, others = bad_job_among_others(queue, "crash", 100, tmp_path / "executions", 3)
    poisons = [
        poison,
        *(queue.enqueue("crash", max_retries=3, priority=10) for _ in range(POISON_JOBS - 1)),
    ]
    started = time.monotonic()
    # the default --crash-loop-limit (10 a minute): the 12 crashes of four poison
    # jobs count once per job, so they are no crash loop
    running = supervisor(
        "--workers", "2", "--drain", *HANDLER, *QUICK, heartbeat_timeout=QUICK_TIMEOUT
    )
    code = running.wait_exit(60)
    jobs = [job for p in poisons if (job := queue.get(p)) is not None]
    deaths = [e for e in running.events("worker_exited") if e.get("cause") == "signal"]
    report(
        "poison-job",
        poison_jobs=len(jobs),
        attempts=sum(j.attempt for j in jobs),
        worker_deaths=len(deaths),
        others_completed=len(others),
        crash_loop_exit=bool(running.events("crash_loop")),
        supervisor_exit=code,
        seconds=f"{time.monotonic() - started:.1f}",
    )
    assert code == 0, running.log()[-3000:]
    assert not running.events("crash_loop")
    assert len(deaths) == 3 * POISON_JOBS
    for job in jobs:
        assert job.status == "failed" and job.retry_count == 3
        assert "worker exited" in job.error_message and "signal 9" in job.error_message
        assert job.end_reason == "worker_exited"
    assert all_completed(queue, others)


JOB_TIMEOUT = 1.0
HUNG_BACKOFF = 0.5  # base = cap: a retry waits 0.5 to 0.625 s (jitter 0.25)


def test_a_hung_job_is_ended_by_the_job_timeout(
    queue: JobQueue, conn: Any, supervisor: Any, tmp_path: Path, report: Any
) -> None:
    set_backoff(conn, f"{HUNG_BACKOFF} s", f"{HUNG_BACKOFF} s")
    log = tmp_path / "executions"
    hung, others = bad_job_among_others(queue, f"hang:{log}", 150, log, 2)
    running = supervisor(
        "--workers",
        "2",
        "--drain",
        "--job-timeout",
        str(JOB_TIMEOUT),
        *HANDLER,
        *QUICK,
        heartbeat_timeout=QUICK_TIMEOUT,
    )
    assert running.wait_exit(60) == 0, running.log()[-3000:]
    job = queue.get(hung)
    assert job is not None
    killed = [e for e in running.events("worker_exited") if e.get("cause") == "deadline"]
    runs = executions(log)
    hangs = sorted((run for run in runs if run.job_id == str(hung)), key=lambda run: run.attempt)
    ends = sorted(
        log_time(e)
        for e in running.events("job_rescued")
        if e.get("job_id") == str(hung) and e.get("reason") == "deadline_exceeded"
    )
    assert [run.attempt for run in hangs] == [1, 2] and len(ends) == 2, (hangs, ends)
    # from the handler's start: the deadline counts from the claim, a little earlier
    held = [end - run.at for run, end in zip(hangs, ends, strict=False)]
    claimed, ended = job.started_at, job.completed_at  # the last attempt's
    last_held = (ended - claimed).total_seconds() if claimed and ended else float("nan")
    waited = hangs[1].at - ends[0]  # from the failed attempt to its retry
    during = sum(1 for run in runs if run.job_id != str(hung) and hangs[0].at < run.at < ends[0])
    report(
        "hung-job",
        attempts=job.attempt,
        killed_at_deadline=len(killed),
        held_s="/".join(f"{s:.2f}" for s in held),
        last_claim_to_end_s=f"{last_held:.2f}",
        retry_after_s=f"{waited:.2f}",
        backoff_s=HUNG_BACKOFF,
        others_run_while_hung=during,
        others_completed=len(others),
    )
    assert job.status == "failed" and job.retry_count == 2 and len(killed) == 2
    assert job.end_reason == "deadline_exceeded"
    assert "--job-timeout" in job.error_message
    # the heartbeat thread kept the lease alive: the deadline ended the job, not the reaper
    assert not running.events("lease_lost") and not running.events("self_fenced")
    assert last_held >= JOB_TIMEOUT and all(s <= JOB_TIMEOUT + 2.0 for s in held)
    assert waited >= HUNG_BACKOFF - 0.01  # the retry waited out its backoff
    assert during > 0, "the other worker went on while one hung"
    assert all_completed(queue, others)


# -- 8. the reaper's leader and the doorman killed among pods ----------------------

PODS_JOBS = 600
REAPER_INTERVAL = 0.5  # QUICK's
LOCK_HOLDER = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = 1299145302"
    " AND objid = %s AND granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


class Pods:
    """Several supervisors' logs read as one, for the oracle."""

    def __init__(self, pods: list[Running]) -> None:
        self.pods = pods

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return [e for pod in self.pods for e in pod.events(name)]

    def holding(self, conn: psycopg.Connection[Any], objid: int, event: str) -> Running:
        """The live pod whose hub holds advisory lock `objid` (it logged `event` with its
        session's pid); a killed pod's session may hold it for a moment after its death."""

        def holder() -> Running | None:
            row = conn.execute(LOCK_HOLDER, [objid]).fetchone()
            alive = [p for p in self.pods if p.proc.poll() is None]
            return next((p for p in alive if row and row[0] in pids(p, event)), None)

        return wait_for(holder, message=f"the live pod that logged {event}")


def pids(pod: Running, event: str) -> set[int]:
    return {int(e["backend_pid"]) for e in pod.events(event)}


def test_the_leader_and_the_doorman_killed_mid_drain_lose_nothing(
    queue: JobQueue, conn: Any, supervisor: Any, tmp_path: Path, report: Any
) -> None:
    """Three pods drain; the one whose embedded reaper leads is killed with -9, then the
    doorman. The others go on: one of them leads and requeues the dead pods' attempts
    once their heartbeats expire, one answers for new jobs, and every job completes,
    none lost, a repeated run only of an attempt that was lost."""
    set_backoff(conn)
    log = tmp_path / "executions"
    ids = {str(i) for i in queue.enqueue_many([NewJob(f"rec:{log}:0.01")] * PODS_JOBS)}
    pod = ("--workers", "2", "--drain", *HANDLER, *QUICK)
    pods = Pods([supervisor(*pod, heartbeat_timeout=QUICK_TIMEOUT) for _ in range(3)])
    killed: set[int] = set()
    kill_times = []
    for objid, event, after in ((2, "reaper_leader", 100), (1, "hub_doorman", 250)):
        wait_for(lambda after=after: completed(conn) >= after, timeout=60, message=f"{after} done")
        victim = pods.holding(conn, objid, event)
        killed |= victim.worker_pids()
        kill_times.append(time.time())  # before the kill: a new leader may log at once
        os.killpg(victim.pid, signal.SIGKILL)
        victim.proc.wait(10)
    survivors = [p for p in pods.pods if p.proc.returncode is None]
    for pod in survivors:
        assert pod.wait_exit(120) == 0, pod.log()[-3000:]
    rows = final_rows(conn)
    assert set(rows) == ids, "a job disappeared or appeared"
    assert Counter(row[0] for row in rows.values()) == {"completed": len(ids)}
    again = repeated(log)
    assert not unexplained(again, log, pods, frozenset(killed))  # type: ignore[arg-type]
    # Every pod's log: the first new leader may be the doorman killed after it.
    new_leaders = [log_time(e) for e in pods.events("reaper_leader")]
    failover = min(t for t in new_leaders if t > kill_times[0]) - kill_times[0]
    report(
        "pods-leader-doorman-killed",
        jobs=len(ids),
        pods_killed=len(kill_times),
        duplicates=len(again),
        requeued=len(pods.events("job_requeued")),
        leader_failover_s=f"{failover:.2f}",
    )
    assert failover <= 2 * REAPER_INTERVAL
