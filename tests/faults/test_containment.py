"""An attempt's processes end with the attempt, however it ends: never two runs of a job at once.

Each job runs tests/faults/tree_job.py, which leaves a child and a `setsid`
grandchild behind and has every process record when it ran (the ledger). The
faults: kill -9 of workers while they run jobs, a frozen worker (SIGSTOP), and
kill -9 of the supervisor's parent, alone or with its whole process group. The
oracle: for every job, no two attempts' processes ever ran at the same time, and
when the test ends no process of any job is left.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from mobvibe.client import JobQueue
from mobvibe.sql.jobs import NewJob
from tests.faults.conftest import FINDINGS, job_processes, matrix_row
from tests.support.roles import LoginRoles
from tests.support.rows import count
from tests.support.supervisor import Running
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
TREE_JOB = f"{ROOT / 'tests' / 'faults' / 'tree_job.py'} main"


@dataclass(frozen=True)
class Run:
    """When the processes of one attempt of a job first and last ran."""

    job_id: str
    attempt: int
    first: float
    last: float
    processes: int


def ledger_runs(ledger: Path) -> list[Run]:
    spans: dict[tuple[str, int], list[float]] = defaultdict(list)
    procs: dict[tuple[str, int], int] = defaultdict(int)
    for path in ledger.iterdir():
        if path.name == FINDINGS:
            continue
        job_id, attempt, _role, _pid = path.name.split(".")
        times = [float(line) for line in path.read_text().split()]
        if times:
            spans[job_id, int(attempt)] += [min(times), max(times)]
            procs[job_id, int(attempt)] += 1
    return [Run(j, a, min(t), max(t), procs[j, a]) for (j, a), t in spans.items()]


def overlaps(runs: list[Run]) -> list[tuple[Run, Run]]:
    """Pairs of attempts of one job whose processes ran at the same time."""
    per_job: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        per_job[run.job_id].append(run)
    found = []
    for job_runs in per_job.values():
        ordered = sorted(job_runs, key=lambda r: r.first)
        found += [(a, b) for a, b in itertools.pairwise(ordered) if b.first <= a.last]
    return found


@pytest.fixture
def tree_supervisor(
    supervisor: Callable[..., Running], ledger: Path, conn: psycopg.Connection[Any]
) -> Callable[..., Running]:
    conn.execute("UPDATE queue_config SET backoff_base = '0.1 s', backoff_cap = '0.2 s'")

    def start(*args: str) -> Running:
        return supervisor(
            "--exec",
            TREE_JOB,
            "--exec-env",
            "TEST_LEDGER",
            "--log-level",
            "info",
            "--poll-interval",
            "0.5",
            "--heartbeat-interval",
            "0.3",
            "--reaper-interval",
            "0.5",
            "--shutdown-timeout",
            "5",
            *args,
            env={"TEST_LEDGER": str(ledger)},
            heartbeat_timeout=3,
        )

    return start


def queue_jobs_shorter(conn: psycopg.Connection[Any]) -> None:
    """The next attempts run 1 s (the prompt is the job's own; the owner may change it)."""
    conn.execute("UPDATE coding_jobs SET prompt = 'tree:1' WHERE status = 'pending'")


def holding_workers(running: Running, conn: psycopg.Connection[Any]) -> list[int]:
    """Pids of the workers whose job's command runs now."""
    rows = conn.execute("SELECT worker_id FROM coding_jobs WHERE status = 'processing'")
    held = {int(worker.split(":")[2]) for (worker,) in rows if worker}
    return sorted(held & running.worker_pids())


def test_no_two_runs_of_a_job_overlap_under_a_kill_storm_and_a_frozen_worker(
    queue: JobQueue,
    conn: Any,
    tree_supervisor: Callable[..., Running],
    ledger: Path,
    report: Callable[..., None],
) -> None:
    jobs = queue.enqueue_many([NewJob("tree:1.5", max_retries=30) for _ in range(12)])
    running = tree_supervisor("--workers", "3", "--drain")
    pick = random.Random(11)
    kills = stops = 0
    deadline = time.monotonic() + 60
    while running.proc.poll() is None and time.monotonic() < deadline:
        victims = holding_workers(running, conn)
        if victims and kills < 8:
            victim = pick.choice(victims)
            if kills == 3 and stops == 0:
                os.kill(victim, signal.SIGSTOP)  # frozen: the parent kills it at the fence
                stops += 1
            else:
                os.kill(victim, signal.SIGKILL)
            kills += 1
        time.sleep(0.7)
    assert running.wait_exit(60) == 0, running.log()[-3000:]
    runs = ledger_runs(ledger)
    clashes = overlaps(runs)
    left = wait_for(lambda: not job_processes(ledger) and [0], timeout=5, message="no job left")
    report(
        "containment-storm",
        jobs=len(jobs),
        kills=kills - stops,
        stops=stops,
        attempts=len(runs),
        overlaps=len(clashes),
        left_behind=len(left) - 1,
    )
    assert count(conn, "completed") == len(jobs)
    assert not clashes, clashes[:3]
    assert all(run.processes == 3 for run in runs if run.last - run.first > 1.0), runs
    assert sum(1 for run in runs if run.attempt > 1) >= kills - 1  # kills did end attempts


def gone_within(ledger: Path, seconds: float) -> tuple[float, int]:
    """Wait up to `seconds` for every process of the test's jobs to end: (seconds it took,
    processes still running)."""
    started = time.monotonic()

    def gone() -> bool:
        # Two scans in a row: a process in the midst of its exit may miss one scan (its
        # environment already unreadable) and show in the next.
        return not job_processes(ledger) and not job_processes(ledger)

    with contextlib.suppress(AssertionError):
        wait_for(gone, seconds, 0.01, "every job process ended")
    ended = time.monotonic() - started
    with contextlib.suppress(AssertionError):  # what is left must stay past the deadline
        wait_for(gone, max(0.0, seconds - ended), 0.01, "every job process ended")
    return ended, len(job_processes(ledger))


def give_back_expired(conn: psycopg.Connection[Any]) -> None:
    """As the reaper would, requeue the attempts whose supervisor died with its workers."""

    def reaped() -> bool:
        conn.execute("SELECT count(*) FROM queue_reap_expired()")
        return count(conn, "processing") == 0

    wait_for(reaped, timeout=15, interval=0.1, message="the silent attempts requeued")


@pytest.mark.parametrize("victims", ["parent", "group"])
def test_kill_9_of_the_parent_ends_every_job_process_before_the_jobs_run_again(
    queue: JobQueue,
    conn: Any,
    tree_supervisor: Callable[..., Running],
    ledger: Path,
    report: Callable[..., None],
    victims: str,
) -> None:
    """kill -9 of the supervisor alone (its workers release their jobs), or of its whole
    process group, as an operator's `kill -9 -PGID` or a container's end does."""
    jobs = queue.enqueue_many([NewJob("tree:30", max_retries=5) for _ in range(3)])
    first = tree_supervisor("--workers", "3")
    wait_for(
        lambda: len(job_processes(ledger, roles_only=True)) == 9,
        timeout=30,
        message="3 jobs running, with a child and a grandchild each",
    )
    if victims == "group":
        os.killpg(first.pid, signal.SIGKILL)
    else:
        os.kill(first.pid, signal.SIGKILL)
    ended, left = gone_within(ledger, 5)
    give_back_expired(conn)
    queue_jobs_shorter(conn)
    second = tree_supervisor("--workers", "3", "--drain")
    assert second.wait_exit(60) == 0, second.log()[-3000:]
    runs = ledger_runs(ledger)
    clashes = len(overlaps(runs))
    report(
        f"containment-{victims}-kill",
        jobs=len(jobs),
        ended_s=f"{ended:.2f}",
        left=left,
        attempts=len(runs),
        overlaps=clashes,
    )
    if victims == "group":
        matrix_row(
            "kill -9 of the supervisor's process group, 3 jobs with setsid grandchildren",
            f"{left} job processes outlived it" if left else f"nothing: all gone in {ended:.2f} s",
            "PID namespace: its first process dies with its parent, the kernel ends the rest",
            clashes,
            left,
        )
    assert left == 0, "job processes outlived their supervisor"
    assert count(conn, "completed") == len(jobs)
    assert not clashes
    assert not job_processes(ledger)


@pytest.fixture
def worker_login(conn: psycopg.Connection[Any], db_url: str) -> Iterator[tuple[str, str]]:
    """A login role that is a member of mobvibe_worker: (its name, its URL)."""
    roles = LoginRoles(conn, db_url)
    url = roles.make("mobvibe_worker", prefix="mobvibe_fence")
    yield roles.made[-1], url
    roles.drop()


def test_a_worker_that_cannot_renew_its_lease_stops_its_job_before_the_reaper_requeues_it(
    queue: JobQueue,
    conn: Any,
    supervisor: Callable[..., Running],
    ledger: Path,
    worker_login: tuple[str, str],
    report: Callable[..., None],
) -> None:
    role, url = worker_login
    conn.execute(
        "UPDATE queue_config SET backoff_base = '0.1 s', backoff_cap = '0.2 s', "
        "heartbeat_timeout = '3 s'"
    )
    job_id = str(queue.enqueue("tree:60", max_retries=5))
    supervisor(
        "--exec",
        TREE_JOB,
        "--exec-env",
        "TEST_LEDGER",
        "--workers",
        "1",
        "--no-reaper",
        "--heartbeat-interval",
        "0.3",
        "--poll-interval",
        "0.5",
        "--log-level",
        "info",
        env={"TEST_LEDGER": str(ledger), "DATABASE_URL": url},
        url=url,
        heartbeat_timeout=None,
    )
    wait_for(
        lambda: len(job_processes(ledger, roles_only=True)) == 3,
        timeout=20,
        message="the job's three processes running",
    )
    # No more heartbeats: every connection of the supervisor's role cut, new ones refused.
    conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role]
    )
    cut = time.monotonic()
    # The owner plays the reaper: it requeues the job once its heartbeat is 3 s old.
    requeued_at = wait_for(
        lambda: (
            conn.execute("SELECT count(*) FROM queue_reap_expired()").fetchone()[0]
            and time.monotonic()
        ),
        timeout=15,
        interval=0.05,
        message="the reaper to requeue the silent attempt",
    )
    stopped = ledger_runs(ledger)
    (first,) = stopped
    conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
    queue_jobs_shorter(conn)
    wait_for(lambda: count(conn, "completed") == 1, timeout=30, message="the job done again")
    runs = ledger_runs(ledger)
    report(
        "self-fence",
        stopped_after_cut_s=f"{first.last - cut:.2f}",
        requeued_after_cut_s=f"{requeued_at - cut:.2f}",
        margin_s=f"{requeued_at - first.last:.2f}",
        attempts=len(runs),
        overlaps=len(overlaps(runs)),
    )
    assert first.job_id == job_id and first.attempt == 1
    assert first.last < requeued_at, "the job ran on after the reaper handed it on"
    assert not overlaps(runs)
    assert [r.attempt for r in sorted(runs, key=lambda r: r.first)] == [1, 2]
