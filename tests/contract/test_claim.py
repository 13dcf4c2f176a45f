"""claim_next_job: which job comes next, when, to whom, and at what cost."""

from __future__ import annotations

import functools
import json
import re
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from tests.support.plans import buffers
from tests.support.rows import (
    claim,
    count,
    insert_job,
    job_row,
    new_session,
    scalar,
    table_counts,
    triggers_off,
)
from tests.support.sqlclock import T0, set_clock
from tests.support.threads import own_connections, run_together


def test_claim_order_is_priority_desc_then_submission_order(conn: Any) -> None:
    """Among jobs that may start (here: each in a session of its own), priority, then
    seq: the order of submission, whatever created_at says."""
    older = T0 - timedelta(hours=1)
    # (priority, minutes after `older`): created_at breaks no tie
    specs = [(5, 3), (10, 5), (5, 1), (0, 0), (10, 5), (10, 2), (5, 1), (0, 0)]
    ids = [
        insert_job(conn, new_session(conn), priority=p, created_at=older + timedelta(minutes=m))
        for p, m in specs
    ]
    expected = [
        job for _, job in sorted(zip(specs, ids, strict=True), key=lambda item: -item[0][0])
    ]
    # sorted() is stable, so equal priorities keep insertion (seq) order
    set_clock(conn, T0)
    claimed = [claim(conn) for _ in ids]
    assert [c["job_id"] if c else None for c in claimed] == expected
    assert claim(conn) is None


def test_a_due_job_of_lower_priority_goes_before_a_job_that_is_not_due(conn: Any) -> None:
    set_clock(conn, T0)  # a run_at is at most a year ahead of the queue's clock
    later = insert_job(conn, new_session(conn), priority=10, run_at=T0 + timedelta(minutes=5))
    due = insert_job(conn, new_session(conn), priority=0, run_at=T0 - timedelta(seconds=1))
    first = claim(conn)
    assert first is not None and first["job_id"] == due
    assert claim(conn) is None
    assert job_row(conn, later)["status"] == "pending"


def test_a_job_is_never_claimed_before_its_run_at(conn: Any, session_id: Any) -> None:
    run_at = T0 + timedelta(minutes=5)
    set_clock(conn, T0)
    job = insert_job(conn, session_id, priority=10, run_at=run_at)
    for now in (T0 - timedelta(days=1), T0, run_at - timedelta(microseconds=1)):
        set_clock(conn, now)
        assert claim(conn) is None, f"claimed at {now}, due at {run_at}"
    assert job_row(conn, job)["status"] == "pending"
    set_clock(conn, run_at)
    claimed = claim(conn)
    assert claimed is not None and claimed["job_id"] == job


def test_the_sql_clock_is_per_connection(db_url: str, conn: Any, session_id: Any) -> None:
    set_clock(conn, T0 - timedelta(seconds=1))
    job = insert_job(conn, session_id, run_at=T0)
    with psycopg.connect(db_url, autocommit=True) as other:
        set_clock(other, T0)
        assert claim(conn) is None
        claimed = claim(other)
    assert claimed is not None and claimed["job_id"] == job


def test_claim_returns_the_job_a_lease_token_and_the_attempt_number(
    conn: Any, session_id: Any
) -> None:
    job = insert_job(conn, session_id, prompt="make a todo app", priority=7, max_retries=5)
    set_clock(conn, T0)
    first = claim(conn, "worker-1")
    assert first is not None
    assert {
        k: first[k]
        for k in (
            "job_id",
            "session_id",
            "prompt",
            "attempt",
            "retry_count",
            "max_retries",
            "priority",
        )
    } == {
        "job_id": job,
        "session_id": session_id,
        "prompt": "make a todo app",
        "attempt": 1,
        "retry_count": 0,
        "max_retries": 5,
        "priority": 7,
    }
    assert isinstance(first["lease_token"], uuid.UUID)
    row = job_row(conn, job)
    assert row["status"] == "processing"
    assert row["lease_token"] == first["lease_token"]
    assert row["worker_id"] == "worker-1"
    assert row["started_at"] == row["heartbeat_at"] == row["updated_at"] == T0

    # A failure sends it back; the next claim is attempt 2 with a new lease.
    assert scalar(conn, "SELECT fail_job(%s, 'boom', %s)", [job, first["lease_token"]]) is True
    set_clock(conn, job_row(conn, job)["run_at"])
    second = claim(conn, "worker-2")
    assert second is not None and second["job_id"] == job
    assert (second["attempt"], second["retry_count"]) == (2, 1)
    assert second["lease_token"] != first["lease_token"]

    # A release is not a failure, but it is an attempt.
    assert scalar(conn, "SELECT queue_release_job(%s, %s)", [job, second["lease_token"]]) is True
    third = claim(conn, "worker-3")
    assert third is not None
    assert (third["attempt"], third["retry_count"]) == (3, 1)
    assert len({first["lease_token"], second["lease_token"], third["lease_token"]}) == 3


def test_claim_on_an_empty_queue_returns_no_row(conn: Any) -> None:
    assert claim(conn) is None
    assert table_counts(conn) == (0, 0)


def test_eight_connections_claim_2000_jobs_each_exactly_once(db_url: str, conn: Any) -> None:
    conn.execute(  # a session per job: every one may start at once
        "WITH s AS (INSERT INTO coding_sessions (id) SELECT gen_random_uuid() "
        "           FROM generate_series(1, 2000) RETURNING id) "
        "INSERT INTO coding_jobs (session_id, prompt, priority) "
        "SELECT s.id, 'job', mod(abs(hashtext(s.id::text)), 11) FROM s"
    )
    workers = 8
    with own_connections(db_url, workers) as conns:
        calls = [functools.partial(claim_all, own, f"w{n}") for n, own in enumerate(conns)]
        claimed = run_together(*calls, timeout=120)

    every = [job for mine in claimed for job in mine]
    assert len(every) == 2000
    assert len(set(every)) == 2000, "a job was claimed twice"
    assert sum(1 for mine in claimed if mine) >= 2, "the claims did not overlap at all"
    assert count(conn, "processing") == 2000 and count(conn, "pending") == 0
    holders = dict(conn.execute("SELECT id, worker_id FROM coding_jobs").fetchall())
    assert all(holders[job] == f"w{n}" for n, mine in enumerate(claimed) for job in mine)
    assert scalar(conn, "SELECT count(*) FROM coding_jobs WHERE attempt <> 1") == 0


def claim_all(conn: Any, worker: str) -> list[uuid.UUID]:
    """Claim on `conn` until nothing is due; the jobs claimed."""
    claimed = []
    while (row := claim(conn, worker)) is not None:
        claimed.append(row["job_id"])
    return claimed


def _inner_select_of_claim(conn: Any) -> str:
    """The claim's SELECT ... FOR UPDATE SKIP LOCKED of the first ready job by priority and
    seq inside claim_next_job, as the database has it (its clock variable made the clock
    function, no user passed over)."""
    source = scalar(conn, "SELECT prosrc FROM pg_proc WHERE proname = 'claim_next_job'")
    selects = re.findall(r"(SELECT\b[^;]*?SKIP LOCKED)", source, re.DOTALL | re.IGNORECASE)
    ready = [s for s in selects if "ORDER BY c.priority DESC, c.seq" in s]
    assert len(ready) == 1, source
    inner = re.sub(r"\bINTO first\b", "", ready[0])
    inner = re.sub(r"\bts\b", "public.queue_now()", inner)
    return re.sub(r"\bpassed\b", "'{}'::uuid[]", inner)


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", ()) for node in _plan_nodes(child))]


@pytest.mark.parametrize("pending", [5, 3000])
def test_claim_walks_the_partial_index_without_a_sort(
    conn: Any, session_id: Any, pending: int
) -> None:
    with triggers_off(conn):  # finished jobs, made in bulk without the functions
        conn.execute(
            "INSERT INTO coding_jobs (session_id, prompt, status, completed_at) "
            "SELECT %s, 'done', CASE WHEN i %% 10 = 0 THEN 'failed' ELSE 'completed' END, "
            "now() FROM generate_series(1, 10000) AS i",
            [session_id],
        )
    conn.execute(
        "WITH s AS (INSERT INTO coding_sessions (id) SELECT gen_random_uuid() "
        "           FROM generate_series(1, %s) RETURNING id) "
        "INSERT INTO coding_jobs (session_id, prompt, priority) "
        "SELECT s.id, 'todo', mod(abs(hashtext(s.id::text)), 11) FROM s",
        [pending],
    )
    conn.execute("ANALYZE coding_jobs")
    inner = _inner_select_of_claim(conn)
    explained = scalar(conn, f"EXPLAIN (FORMAT JSON) {inner}")
    plan = (json.loads(explained) if isinstance(explained, str) else explained)[0]["Plan"]
    nodes = _plan_nodes(plan)
    kinds = [node["Node Type"] for node in nodes]
    assert not [kind for kind in kinds if "Sort" in kind], kinds
    assert any(node.get("Index Name") == "coding_jobs_ready_idx" for node in nodes), kinds


def _back_off(conn: Any, session_id: Any, count: int) -> None:
    """`count` pending jobs of the session, each failed once and waiting a day for its
    retry."""
    with triggers_off(conn):
        conn.execute(
            "INSERT INTO coding_jobs (session_id, prompt, run_at, retry_count, attempt, "
            "waiting_for) "
            "SELECT %s, 'backed off', %s, 1, 1, 'run_at' FROM generate_series(1, %s)",
            [session_id, T0 + timedelta(days=1), count],
        )
    conn.execute("ANALYZE coding_jobs")


def test_jobs_backed_off_add_nothing_to_the_cost_of_a_claim(conn: Any, session_id: Any) -> None:
    """The probe for heads whose backoff is over reads the earliest run_at from its index:
    twenty thousand jobs backing off cost a claim what none do."""
    set_clock(conn, T0)
    insert_job(conn, new_session(conn))
    alone = buffers(conn, "SELECT * FROM claim_next_job('w')", generic=True)
    _back_off(conn, session_id, 20_000)
    busy = buffers(conn, "SELECT * FROM claim_next_job('w')", generic=True)
    assert busy <= alone + 10, (alone, busy)


def test_a_sweep_reads_the_retries_waiting_from_their_index(conn: Any, session_id: Any) -> None:
    """Each pod's reaper sweeps every few seconds: its report of the retries waiting must
    not read every pending job (here twenty thousand that may start)."""
    set_clock(conn, T0)
    _back_off(conn, session_id, 3)
    idle = buffers(conn, "SELECT * FROM queue_sweep('test')")
    conn.execute(
        "WITH s AS (INSERT INTO coding_sessions (id) SELECT gen_random_uuid() "
        "           FROM generate_series(1, 20000) RETURNING id) "
        "INSERT INTO coding_jobs (session_id, prompt) SELECT s.id, 'todo' FROM s"
    )
    conn.execute("ANALYZE coding_jobs")
    busy = buffers(conn, "SELECT * FROM queue_sweep('test')")
    assert busy <= idle + 50, (idle, busy)
    row = conn.execute("SELECT waiting_retries FROM queue_sweep('test') WHERE job_id IS NULL")
    assert row.fetchone()[0] == 3
