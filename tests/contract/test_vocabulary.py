"""The queue's words cross to PostgreSQL and back as the words themselves."""

from __future__ import annotations

from typing import Any

from mobvibe.sql import store
from mobvibe.sql.jobs import NewJob
from mobvibe.vocabulary import EndReason, JobStatus, WaitingFor


def test_a_member_is_sent_as_its_word(conn: Any) -> None:
    row = conn.execute("SELECT %s::text, %s = 'cancelled'", [JobStatus.CANCELLED] * 2).fetchone()
    assert row == ("cancelled", True)


def test_the_store_writes_members_and_reads_statuses_as_members(conn: Any) -> None:
    job_id = store.enqueue_many(conn, [NewJob("one")], [_session(conn)])[0]
    job = store.claim(conn, "vocabulary")
    assert job is not None and job.id == job_id
    status = store.end_attempt(conn, job.id, job.lease_token, EndReason.DEADLINE_EXCEEDED, "late")
    assert type(status) is JobStatus and status == JobStatus.PENDING
    written = conn.execute("SELECT end_reason FROM coding_jobs WHERE id = %s", [job.id]).fetchone()
    assert written == ("deadline_exceeded",)
    row = store.get_job(conn, job.id)
    assert row is not None
    assert type(row.status) is JobStatus and type(row.waiting_for) is WaitingFor
    assert row.waiting_for == WaitingFor.RUN_AT  # its retry's backoff


def _session(conn: Any) -> Any:
    row = conn.execute("INSERT INTO coding_sessions DEFAULT VALUES RETURNING id").fetchone()
    return row[0]
