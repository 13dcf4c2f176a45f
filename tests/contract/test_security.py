"""Least privilege: PUBLIC cannot run the queue; the group roles can do what they are for."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from mobvibe.client import JobQueue
from tests.support.rows import insert_job

PLAN_FUNCTIONS = {"claim_next_job", "complete_job", "fail_job", "get_queue_stats"}
DEFINER_FUNCTIONS = PLAN_FUNCTIONS | {
    "queue_complete_and_claim",
    "queue_heartbeat",
    "queue_release_job",
    "queue_claims_of_worker",
    "queue_reap_expired",
    "queue_requeue_failed",
    "queue_prune",
    "queue_purge_failed",
    "queue_record_reaper_run",
    "queue_next_run_at",
    "queue_settings",
    "queue_test_clock",
    # sessions, cancel, attempts and events (0006)
    "cancel_job",
    "queue_cancel_session",
    "queue_end_attempt",
    "queue_end_and_claim",
    "queue_renew_leases",
    "queue_add_events",
    "queue_set_output",
    "queue_retry_job",
    # the triggers that place jobs lock sessions, which a producer may not do itself
    "queue_place_new_job",
    "queue_replace_session_jobs",
    # a sweep in one statement (0007)
    "queue_sweep",
    # users' limits (0012): an operator's limit, a monitor's list, and the trigger
    # that places every user's jobs again when the default limit changes
    "queue_set_user_limit",
    "queue_user_list",
    "queue_replace_all_users",
    # a session's owner, kept while it has unfinished jobs
    "queue_keep_session_owner",
}


def test_no_function_of_the_public_schema_is_executable_by_public(conn: Any) -> None:
    rows = conn.execute("""
        SELECT p.proname, p.oid::regprocedure::text,
               EXISTS (SELECT 1
                       FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) AS a
                       WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')
        FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace""").fetchall()
    names = {name for name, _, _ in rows}
    assert names >= PLAN_FUNCTIONS
    assert names >= DEFINER_FUNCTIONS
    # a NULL proacl means the default ACL, which lets PUBLIC execute: hence acldefault above
    assert [signature for _, signature, public in rows if public] == []


def test_every_security_definer_function_pins_its_search_path(conn: Any) -> None:
    rows = conn.execute(
        "SELECT proname, coalesce(proconfig, '{}') FROM pg_proc "
        "WHERE pronamespace = 'public'::regnamespace AND prosecdef"
    ).fetchall()
    assert {name for name, _ in rows} == DEFINER_FUNCTIONS
    for name, config in rows:
        paths = [c.split("=", 1)[1] for c in config if c.startswith("search_path=")]
        assert len(paths) == 1, f"{name} has no pinned search_path: {config}"
        # no schema others can write to; pg_temp last, so that a temporary object can
        # never shadow a queue table
        assert [p.strip() for p in paths[0].split(",")] == ["pg_catalog", "pg_temp"], (name, paths)


def test_the_four_roles_run_the_whole_job_lifecycle_through_the_client(
    login_role: Callable[..., str],
) -> None:
    with (
        JobQueue(login_role("mobvibe_producer")) as producer,
        JobQueue(login_role("mobvibe_worker")) as worker,
        JobQueue(login_role("mobvibe_monitor")) as monitor,
        JobQueue(login_role("mobvibe_operator")) as operator,
    ):
        first = producer.enqueue("job for the worker role", priority=3)
        second = producer.enqueue("another", max_retries=1)
        claimed = worker.claim("role-worker")
        assert claimed is not None and claimed.id == first
        assert worker.heartbeat(claimed.id, claimed.lease_token) is True
        assert worker.complete(claimed.id, claimed.lease_token) is True
        other = worker.claim("role-worker")
        assert other is not None and other.id == second
        assert worker.fail(other.id, "no luck", other.lease_token) is False
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            worker.requeue_failed(second)  # an operator's act
        assert operator.requeue_failed(second) is True
        again = worker.claim("role-worker")
        assert again is not None
        assert worker.release(again.id, again.lease_token) is True
        stats = monitor.stats()
        assert (stats.pending_count, stats.completed_count) == (1, 1)
        # the plan's calls without a lease are the operator's, not the worker's
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            worker.complete(second)
        assert operator.complete(second) is True
    with psycopg.connect(login_role("mobvibe_worker"), autocommit=True) as own:
        # the functions are the only way to change a job
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            own.execute("UPDATE coding_jobs SET status = 'completed'")


def test_a_member_of_mobvibe_monitor_reads_statistics_but_cannot_claim(
    login_role: Callable[..., str], conn: Any, session_id: Any
) -> None:
    insert_job(conn, session_id)
    with psycopg.connect(login_role("mobvibe_monitor"), autocommit=True) as monitor:
        row = monitor.execute("SELECT pending_count FROM get_queue_stats()").fetchone()
        assert row == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            monitor.execute("SELECT * FROM claim_next_job()")


@pytest.mark.parametrize(
    "call",
    [
        "SELECT * FROM claim_next_job()",
        "SELECT complete_job(%(job)s)",
        "SELECT fail_job(%(job)s, 'x')",
        "SELECT * FROM get_queue_stats()",
        "SELECT queue_heartbeat(%(job)s, %(job)s)",
        "SELECT queue_requeue_failed(%(job)s)",
    ],
)
def test_a_login_role_without_grants_is_denied(
    login_role: Callable[..., str], conn: Any, session_id: Any, call: str
) -> None:
    job = insert_job(conn, session_id)
    with psycopg.connect(login_role(), autocommit=True) as stranger:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            stranger.execute(call, {"job": job})
    assert conn.execute("SELECT status FROM coding_jobs WHERE id = %s", [job]).fetchone() == (
        "pending",
    )


def test_a_login_role_without_grants_cannot_insert_a_job(
    login_role: Callable[..., str], session_id: Any
) -> None:
    with psycopg.connect(login_role(), autocommit=True) as stranger:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            stranger.execute(
                "INSERT INTO coding_jobs (session_id, prompt) VALUES (%s, 'x')",
                [uuid.UUID(str(session_id))],
            )
