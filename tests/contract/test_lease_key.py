"""A pod's lease key: its workers' lease tokens derive from it, so that the pod ends a dead
worker's claims without reading any token, and a login that knows the job id and the worker
id of another pod's attempt cannot."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from mobvibe.sql import store
from mobvibe.sql.jobs import lease_token
from mobvibe.supervisor.rescue import Rescuer
from mobvibe.supervisor.settings import Settings
from tests.support.rows import scalar

WORKER = "pod-a:0:4242:abc123"


def test_a_claim_with_a_key_stores_the_token_the_pod_can_derive(
    conn: psycopg.Connection[Any], session_id: Any, queue: Any
) -> None:
    key = uuid.uuid4()
    queue.enqueue("first", session_id=session_id)
    job = store.claim(conn, WORKER, key)
    assert job is not None and job.lease_token == lease_token(key, job.id, job.attempt)
    plain = uuid.uuid4()
    assert scalar(conn, "SELECT queue_lease_token(%s, %s, 1)", [plain, job.id]) == lease_token(
        plain, job.id, 1
    )
    # without a key (the SQL contract's callers), a random token, as before
    queue.enqueue("second")
    other = store.claim(conn, "plain")
    assert other is not None and other.lease_token != lease_token(key, other.id, other.attempt)


def test_the_pod_releases_a_dead_workers_unstarted_claim_and_another_pod_cannot(
    conn: psycopg.Connection[Any], db_url: str, session_id: Any, queue: Any
) -> None:
    key = uuid.uuid4()
    queue.enqueue("claimed, never started", session_id=session_id)
    job = store.claim(conn, WORKER, key)
    assert job is not None

    Rescuer(Settings(database_url=db_url)).release_unstarted(WORKER, None)  # another key
    assert scalar(conn, "SELECT status FROM coding_jobs WHERE id = %s", [job.id]) == "processing"

    Rescuer(Settings(database_url=db_url, lease_key=key)).release_unstarted(WORKER, None)
    row = conn.execute(
        "SELECT status, retry_count FROM coding_jobs WHERE id = %s", [job.id]
    ).fetchone()
    assert row == ("pending", 0)  # given back, not counted as a failure


def test_a_worker_login_that_knows_the_ids_cannot_end_the_attempt(
    conn: psycopg.Connection[Any], session_id: Any, queue: Any, login_role: Any
) -> None:
    queue.enqueue("another pod's", session_id=session_id)
    job = store.claim(conn, WORKER, uuid.uuid4())
    assert job is not None
    with psycopg.connect(login_role("mobvibe_worker"), autocommit=True) as stolen:
        claims = store.claims_of_worker(stolen, WORKER)
        assert [(c.job_id, c.attempt) for c in claims] == [(job.id, 1)]
        for guess in (job.id, session_id, uuid.UUID(int=0)):
            assert store.end_attempt(stolen, job.id, guess, "released", "stolen") is None
        try:
            stolen.execute("SELECT lease_token FROM coding_jobs")
            raise AssertionError("a worker login read the lease tokens")
        except psycopg.errors.InsufficientPrivilege:
            pass
    assert scalar(conn, "SELECT status FROM coding_jobs WHERE id = %s", [job.id]) == "processing"
