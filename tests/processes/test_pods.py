"""Many pods, one database: real supervisors side by side on one queue.

A new job wakes one worker in the whole cluster, whatever the number of idle
pods; a pod whose workers are all busy neither listens nor waits; the embedded
reaper sweeps on one pod at a time, and another takes over within two sweep
intervals when that pod is killed; so does another doorman.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.support.rows import insert_job, new_session, scalar
from tests.support.sqlclock import migrated
from tests.support.supervisor import FAST, Running
from tests.support.waiting import wait_for

IDLE_POD = ("--workers", "1", "--exec", "true", "--metrics-port", "0")
# the doorman's and the leader's advisory locks (sql/queries.sql)
LOCKS = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = 1299145302"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND objid = %s"
)
HELD = LOCKS + " AND granted"
DOORMAN, LEADER = 1, 2


@pytest.fixture(scope="module")
def counted_url(new_database: Any) -> str:
    """A database of this module's own whose sessions count their function calls."""
    url = migrated(new_database("mobvibe_pods"))
    with psycopg.connect(url, autocommit=True) as conn:
        name = conn.info.dbname
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET track_functions = 'all'").format(sql.Identifier(name))
        )
    return url


@pytest.fixture
def pods(supervisor: Any, counted_url: str) -> Callable[..., list[Running]]:
    def start(count: int, *args: str, **options: Any) -> list[Running]:
        return [supervisor(*args, url=counted_url, **options) for _ in range(count)]

    return start


def claims(conn: psycopg.Connection[Any]) -> int:
    """claim_next_job calls flushed to the statistics so far (nested ones included)."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    found = scalar(
        conn,
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions "
        "WHERE funcname = 'claim_next_job'",
    )
    return int(found)


def stop(running: list[Running]) -> None:
    """Stop the pods and wait for them: an ended session flushes its statistics."""
    for pod in running:
        pod.signal(signal.SIGTERM)
    for pod in running:
        assert pod.wait_exit(30) == 0


def trickle(conn: psycopg.Connection[Any], jobs: int) -> None:
    """Jobs one at a time, each enqueued once the one before has completed."""
    session = new_session(conn, max_concurrency=jobs)
    for _ in range(jobs):
        job = insert_job(conn, session)
        wait_for(
            lambda job=job: (
                scalar(conn, "SELECT status FROM coding_jobs WHERE id = %s", [job]) == "completed"
            ),
            timeout=15,
            message="the job to be completed",
        )


def claims_per_job(pods: Callable[..., list[Running]], url: str, count: int, jobs: int) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE coding_jobs, coding_job_attempts, coding_sessions CASCADE")
        before = claims(conn)
        running = pods(count, *IDLE_POD, heartbeat_timeout=None)
        for pod in running:
            pod.wait_workers(1)
        # every worker's first look, then every pod idle: one of them the doorman
        wait_for(lambda: claims(conn) >= before + count or None, timeout=20, interval=0.2)
        wait_for(lambda: scalar(conn, HELD, [DOORMAN]), timeout=15, message="a doorman")
        trickle(conn, jobs)
        stop(running)
        return (claims(conn) - before - count) / jobs


def test_claims_per_job_do_not_grow_with_idle_pods(pods: Any, counted_url: str) -> None:
    one = claims_per_job(pods, counted_url, 1, 20)
    five = claims_per_job(pods, counted_url, 5, 20)
    print(f"claim_next_job calls per job: 1 idle pod {one:.2f}, 5 idle pods {five:.2f}")
    assert five <= one + 0.2, (one, five)


def pod_of(running: list[Running], backend_pid: int, event: str) -> Running:
    """The pod whose hub took a lock on the session `backend_pid` (and says so in its log)."""
    (pod,) = wait_for(
        lambda: [
            p for p in running if any(e["backend_pid"] == backend_pid for e in p.events(event))
        ],
        message=f"the pod whose {event} has backend {backend_pid}",
    )
    return pod


def test_busy_pods_neither_listen_nor_wait_and_the_idle_pod_gets_every_job(
    pods: Any, counted_url: str
) -> None:
    with psycopg.connect(counted_url, autocommit=True) as conn:
        conn.execute("TRUNCATE coding_jobs, coding_job_attempts, coding_sessions CASCADE")
        running = pods(3, "--workers", "1", "--exec", 'read -r s; sleep "$s"', *FAST)
        for pod in running:
            pod.wait_workers(1)
        session = new_session(conn, max_concurrency=20)
        for _ in range(2):
            insert_job(conn, session, prompt="60")
        wait_for(
            lambda: (
                scalar(conn, "SELECT count(*) FROM coding_jobs WHERE status = 'processing'") == 2
            ),
            timeout=15,
            message="two pods busy",
        )
        for _ in range(5):
            job = insert_job(conn, session, prompt="0")
            wait_for(
                lambda job=job: (
                    scalar(conn, "SELECT status FROM coding_jobs WHERE id = %s", [job])
                    == "completed"
                ),
                timeout=15,
                message="a short job done by the idle pod",
            )
        busy = {
            wid.split(":")[2]
            for (wid,) in conn.execute(
                "SELECT worker_id FROM coding_jobs WHERE status = 'processing'"
            ).fetchall()
        }
        (idle,) = [p for p in running if not {str(w) for w in p.worker_pids()} & busy]
        # the doorman is the idle pod's hub, and no pod waits in line for it
        holders = conn.execute(HELD, [DOORMAN]).fetchall()
        assert len(holders) == 1
        assert pod_of(running, holders[0][0], "hub_doorman") is idle
        # A hub whose worker became busy while it stood in line leaves the line when its
        # wait times out, at its next duty: within a heartbeat interval.
        wait_for(
            lambda: conn.execute(LOCKS + " AND NOT granted", [DOORMAN]).fetchall() == [],
            timeout=10,
            message="no pod in line for the doorman's part",
        )
        short = conn.execute(
            "SELECT DISTINCT split_part(worker_id, ':', 3) FROM coding_jobs WHERE prompt = '0'"
        ).fetchall()
        assert [int(w) for (w,) in short] == list(idle.worker_pids())


def sweeps(pod: Running, since: datetime) -> int:
    """The sweeps `pod` logged after `since`."""
    return sum(_at(e) > since for e in pod.events("reaper_swept"))


def _at(record: dict[str, Any]) -> datetime:
    return datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%f%z")


def test_one_pod_sweeps_and_another_leads_within_two_intervals_of_its_kill(
    pods: Any, counted_url: str
) -> None:
    interval = 1.0
    running = pods(3, *IDLE_POD, *FAST, "--reaper-interval", str(interval))
    with psycopg.connect(counted_url, autocommit=True) as conn:
        holder = wait_for(lambda: scalar(conn, HELD, [LEADER]), timeout=15, message="a leader")
        leader = pod_of(running, holder, "reaper_leader")
        others = [p for p in running if p is not leader]
        since = datetime.now(UTC)
        wait_for(lambda: sweeps(leader, since) >= 3, timeout=10, message="three sweeps")
        assert [sweeps(p, since) for p in others] == [0, 0]
        os.killpg(leader.pid, signal.SIGKILL)
        killed, at = time.monotonic(), datetime.now(UTC)
        wait_for(
            lambda: any(sweeps(p, at) for p in others),
            timeout=2 * interval,
            message="another pod's sweep within two intervals",
        )
        print(f"failover: a sweep by another pod {time.monotonic() - killed:.2f} s after the kill")


def test_the_doorman_killed_another_takes_over_and_jobs_still_start(
    pods: Any, counted_url: str
) -> None:
    # the poll every 10 s, its default: the job starts long before, or not through a doorman
    running = pods(3, *IDLE_POD, *FAST, "--poll-interval", "10")
    with psycopg.connect(counted_url, autocommit=True) as conn:
        holder = wait_for(lambda: scalar(conn, HELD, [DOORMAN]), timeout=15, message="a doorman")
        doorman = pod_of(running, holder, "hub_doorman")
        os.killpg(doorman.pid, signal.SIGKILL)
        session = new_session(conn)
        job = insert_job(conn, session)
        wait_for(
            lambda: (
                scalar(conn, "SELECT status FROM coding_jobs WHERE id = %s", [job]) == "completed"
            ),
            timeout=5,
            message="the job completed after the doorman's kill",
        )
        after = scalar(conn, HELD, [DOORMAN])
        assert after is not None and after != holder
        assert pod_of(running, after, "hub_doorman") is not doorman
