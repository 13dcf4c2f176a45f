"""A double tap is one job: an idempotency key is unique per session.

A second plain INSERT with the same session and key fails with unique_violation; the
client's and the CLI's enqueue return the existing job's id instead, also when two
identical submits race from two connections.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
import pytest

from mobvibe.client import JobQueue
from mobvibe.sql import store
from mobvibe.sql.jobs import NewJob
from tests.support.rows import insert_job, scalar


def jobs_in(conn: Any, session: Any) -> int:
    return int(scalar(conn, "SELECT count(*) FROM coding_jobs WHERE session_id = %s", [session]))


def test_the_same_key_in_the_same_session_is_the_same_job(
    queue: JobQueue, conn: Any, session_id: Any
) -> None:
    first = queue.enqueue("build it", session_id=session_id, idempotency_key="tap-1")
    again = queue.enqueue("build it", session_id=session_id, idempotency_key="tap-1")
    assert again == first
    assert jobs_in(conn, session_id) == 1
    other = queue.enqueue("build it", session_id=session_id, idempotency_key="tap-2")
    assert other != first
    elsewhere = queue.create_session()
    assert queue.enqueue("build it", session_id=elsewhere, idempotency_key="tap-1") != first


def test_a_repeated_key_returns_the_job_whatever_became_of_it(
    queue: JobQueue, conn: Any, session_id: Any
) -> None:
    job = queue.enqueue("p", session_id=session_id, idempotency_key="k")
    assert queue.cancel(job) is True
    assert queue.enqueue("p", session_id=session_id, idempotency_key="k") == job
    assert conn.execute("SELECT status FROM coding_jobs").fetchall() == [("cancelled",)]


def test_a_batch_returns_the_existing_ids_in_place(
    queue: JobQueue, conn: Any, session_id: Any
) -> None:
    existing = queue.enqueue("old", session_id=session_id, idempotency_key="a")
    other = queue.create_session()
    ids = queue.enqueue_many(
        [
            NewJob("new, no key", session_id),
            NewJob("repeat", session_id, idempotency_key="a"),
            NewJob("new keyed", other, idempotency_key="a"),
            NewJob("twin 1", session_id, idempotency_key="b"),
            NewJob("twin 2", session_id, idempotency_key="b"),
            NewJob("new session"),
        ]
    )
    assert ids[1] == existing
    assert ids[3] == ids[4], "two jobs of one batch with one key"
    assert len(set(ids)) == 5
    assert scalar(conn, "SELECT count(*) FROM coding_jobs") == 5
    keys = dict(conn.execute("SELECT id, idempotency_key FROM coding_jobs").fetchall())
    assert (keys[ids[0]], keys[ids[2]], keys[ids[3]], keys[ids[5]]) == (None, "a", "b", None)
    prompts = dict(conn.execute("SELECT id, prompt FROM coding_jobs").fetchall())
    expected = ["new, no key", "old", "new keyed", "twin 1", "twin 1", "new session"]
    assert [prompts[i] for i in ids] == expected


def test_a_batch_keeps_each_sessions_order(queue: JobQueue, conn: Any) -> None:
    """A batch is inserted in session order (each session's rows lock it): jobs of one
    batch are submitted at one instant, and each session keeps the order given."""
    sessions = [queue.create_session() for _ in range(3)]
    batch = [NewJob(f"{i}", sessions[i % 3], idempotency_key=f"k{i}") for i in range(9)]
    ids = queue.enqueue_many(batch)
    rows = conn.execute("SELECT id, session_id, prompt FROM coding_jobs ORDER BY seq").fetchall()
    by_id = {job_id: prompt for job_id, _, prompt in rows}
    assert [by_id[i] for i in ids] == [str(i) for i in range(9)]
    for session in sessions:
        prompts = [int(p) for _, s, p in rows if s == session]
        assert prompts == sorted(prompts)


def test_a_second_plain_insert_with_the_same_key_is_a_unique_violation(
    conn: Any, session_id: Any
) -> None:
    insert_job(conn, session_id, idempotency_key="tap")
    with pytest.raises(psycopg.errors.UniqueViolation) as refused:
        insert_job(conn, session_id, idempotency_key="tap")
    assert refused.value.diag.constraint_name == "coding_jobs_idempotency_idx"
    insert_job(conn, session_id)  # no key: any number of them
    insert_job(conn, session_id)


@pytest.mark.parametrize("key", ["", "k" * 201])
def test_a_key_out_of_range_is_refused_by_the_database(
    conn: Any, session_id: Any, key: str
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        insert_job(conn, session_id, idempotency_key=key)
    assert refused.value.diag.constraint_name == "coding_jobs_idempotency_key_check"


def test_a_submit_waiting_for_its_uncommitted_twin_gets_the_twins_id(
    queue: JobQueue, db_url: str, conn: Any, session_id: Any
) -> None:
    """The twin's transaction holds the session: the second submit waits for it, inserts
    nothing, and reads the committed twin."""
    job = NewJob("double tap", session_id, idempotency_key="tap").validated()
    result: list[uuid.UUID] = []
    with psycopg.connect(db_url) as twin:
        first = store.enqueue(twin, job)
        second = threading.Thread(
            target=lambda: result.append(
                queue.enqueue("double tap", session_id=session_id, idempotency_key="tap")
            )
        )
        second.start()
        second.join(0.5)
        assert second.is_alive(), "the second submit did not wait for the first"
        twin.commit()
    second.join(10)
    assert result == [first]
    assert jobs_in(conn, session_id) == 1


def submit_twice_at_once(one: JobQueue, two: JobQueue, session: Any, key: str) -> list[Any]:
    """The same submit from two clients, released together; the ids each was given."""
    start = threading.Barrier(2)
    got: list[Any] = [None, None]

    def submit(index: int, queue: JobQueue) -> None:
        start.wait(10)
        got[index] = queue.enqueue("tap", session_id=session, idempotency_key=key)

    threads = [threading.Thread(target=submit, args=(i, q)) for i, q in enumerate((one, two))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    return got


def test_two_identical_submits_at_once_from_two_connections_make_one_job(
    db_url: str, conn: Any
) -> None:
    with JobQueue(db_url) as one, JobQueue(db_url) as two:
        for round_ in range(20):
            session = one.create_session()
            got = submit_twice_at_once(one, two, session, f"round {round_}")
            assert got[0] is not None and got[0] == got[1]
            assert jobs_in(conn, session) == 1
