"""Every attempt on record, what the agent said, and its progress as it runs.

queue_end_attempt (and the calls built on it) close the attempt's row however it ends
and keep the output; queue_add_events records progress under the lease and announces
it on job_progress; queue_renew_leases is a pod's heartbeat in one statement.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from mobvibe.sql import store
from mobvibe.sql.store import Lease, Renewal
from mobvibe.vocabulary import EndReason
from tests.support.rows import claim, end_attempt, insert_job, job_row, new_session, scalar
from tests.support.sqlclock import T0, set_clock


def started(conn: Any, session: Any | None = None, **columns: Any) -> tuple[Any, Any]:
    """A job of its own session (or of `session`) claimed by w1 at T0: (job, lease)."""
    job = insert_job(conn, session or new_session(conn), **columns)
    set_clock(conn, T0)
    got = claim(conn, "w1")
    assert got is not None and got["job_id"] == job
    return job, got["lease_token"]


def attempts(conn: Any, job: Any) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT attempt, worker_id, started_at, ended_at, end_reason, error_message "
        "FROM coding_job_attempts WHERE job_id = %s ORDER BY attempt",
        [job],
    ).fetchall()


LATER = T0 + timedelta(seconds=4)


# -- attempt rows ----------------------------------------------------------------------------


def test_a_claim_opens_an_attempt_row(conn: Any) -> None:
    job, _ = started(conn)
    assert attempts(conn, job) == [(1, "w1", T0, None, None, None)]


# (how the attempt ends, the call, its answer, the job's status, the attempt's row end)
ENDINGS = [
    ("completed", "SELECT complete_job(%(j)s, %(l)s)", True, "completed", ("completed", None)),
    ("retried", "SELECT fail_job(%(j)s, 'boom', %(l)s)", True, "pending", ("error", "boom")),
    (
        "deadline",
        "SELECT fail_job(%(j)s, 'too long', %(l)s, 'deadline_exceeded')",
        True,
        "pending",
        ("deadline_exceeded", "too long"),
    ),
    (
        "rescued",
        "SELECT fail_job(%(j)s, 'worker died', %(l)s, 'worker_exited')",
        True,
        "pending",
        ("worker_exited", "worker died"),
    ),
    (
        "released",
        "SELECT queue_release_job(%(j)s, %(l)s)",
        True,
        "pending",
        ("released", "released at shutdown"),
    ),
    (
        "end released",
        "SELECT queue_end_attempt(%(j)s, %(l)s, 'released', 'pod draining')",
        "pending",
        "pending",
        ("released", "pod draining"),
    ),
    (
        "end cancelled",
        "SELECT queue_end_attempt(%(j)s, %(l)s, 'cancelled')",
        "cancelled",
        "cancelled",
        ("cancelled", None),
    ),
    (
        "operator completed",
        "SELECT complete_job(%(j)s)",
        True,
        "completed",
        ("completed", "completed by an operator"),
    ),
    ("operator failed", "SELECT fail_job(%(j)s, 'by hand')", True, "pending", ("error", "by hand")),
]


@pytest.mark.parametrize(
    ("how", "call", "answer", "status", "closed"), ENDINGS, ids=[e[0] for e in ENDINGS]
)
def test_every_end_of_an_attempt_closes_its_row(
    conn: Any, how: str, call: str, answer: Any, status: str, closed: tuple[Any, Any]
) -> None:
    job, lease = started(conn)
    set_clock(conn, LATER)
    assert scalar(conn, call, {"j": job, "l": lease}) == answer
    assert job_row(conn, job)["status"] == status
    assert attempts(conn, job) == [(1, "w1", T0, LATER, *closed)]


def test_a_dead_letter_and_a_reaped_attempt_close_their_rows(conn: Any) -> None:
    job, lease = started(conn, max_retries=1)
    assert scalar(conn, "SELECT fail_job(%s, 'fatal', %s)", [job, lease]) is False
    assert attempts(conn, job)[0][4:] == ("error", "fatal")
    reaped, _ = started(conn)
    set_clock(conn, T0 + timedelta(seconds=31))
    assert conn.execute("SELECT job_id FROM queue_reap_expired()").fetchall() == [(reaped,)]
    row = attempts(conn, reaped)[0]
    assert row[3:5] == (T0 + timedelta(seconds=31), "heartbeat_expired")
    assert "heartbeat expired" in row[5]


def test_each_claim_of_a_job_is_an_attempt_of_its_own(conn: Any) -> None:
    job, lease = started(conn)
    assert end_attempt(conn, job, lease, "error", "first") == "pending"
    set_clock(conn, job_row(conn, job)["run_at"])
    second = claim(conn, "w2")
    assert second is not None and second["attempt"] == 2
    assert end_attempt(conn, job, second["lease_token"], "completed") == "completed"
    rows = attempts(conn, job)
    assert [(r[0], r[1], r[4], r[5]) for r in rows] == [
        (1, "w1", "error", "first"),
        (2, "w2", "completed", None),
    ]


def test_a_stale_lease_closes_no_attempt_and_changes_nothing(conn: Any) -> None:
    job, lease = started(conn)
    assert end_attempt(conn, job, lease, "error", "boom") == "pending"
    before = job_row(conn, job), attempts(conn, job)
    for reason in ("completed", "error", "released", "cancelled"):
        assert end_attempt(conn, job, lease, reason, "late", "late output") is None
    assert end_attempt(conn, job, None, "completed") is None
    assert end_attempt(conn, uuid.uuid4(), lease, "completed") is None
    assert (job_row(conn, job), attempts(conn, job)) == before


def test_an_end_reason_is_required(conn: Any) -> None:
    job, lease = started(conn)
    for reason in (None, ""):
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            end_attempt(conn, job, lease, reason)  # type: ignore[arg-type]


def test_attempts_are_deleted_with_their_job(conn: Any) -> None:
    job, lease = started(conn)
    assert end_attempt(conn, job, lease, "completed") == "completed"
    assert store.add_events(conn, job, lease, []) == 0
    set_clock(conn, T0 + timedelta(days=8))
    assert scalar(conn, "SELECT queue_prune('completed')") == 1
    assert scalar(conn, "SELECT count(*) FROM coding_job_attempts") == 0


# -- released ------------------------------------------------------------------------------------


def test_a_release_is_pending_again_due_now_and_not_counted(conn: Any) -> None:
    job, lease = started(conn)
    set_clock(conn, LATER)
    assert end_attempt(conn, job, lease, "released", "released at shutdown") == "pending"
    row = job_row(conn, job)
    assert (row["status"], row["retry_count"], row["run_at"], row["waiting_for"]) == (
        "pending",
        0,
        LATER,
        None,
    )


# -- output ----------------------------------------------------------------------------------------


def test_the_output_is_kept_with_the_job(conn: Any) -> None:
    job, lease = started(conn)
    assert end_attempt(conn, job, lease, "completed", None, "all done\n") == "completed"
    assert job_row(conn, job)["output"] == "all done\n"
    failed, lease = started(conn)
    assert end_attempt(conn, failed, lease, "error", "exit 1", "half done") == "pending"
    assert job_row(conn, failed)["output"] == "half done"
    set_clock(conn, job_row(conn, failed)["run_at"])
    again = claim(conn)
    assert again is not None
    # an end without output keeps the last one
    assert end_attempt(conn, failed, again["lease_token"], "completed") == "completed"
    assert job_row(conn, failed)["output"] == "half done"


def test_complete_and_fail_take_the_output_too(conn: Any) -> None:
    job, lease = started(conn)
    assert scalar(conn, "SELECT complete_job(%s, %s, 'out')", [job, lease]) is True
    assert job_row(conn, job)["output"] == "out"
    job, lease = started(conn)
    assert scalar(conn, "SELECT fail_job(%s, 'e', %s, 'error', 'so far')", [job, lease]) is True
    assert job_row(conn, job)["output"] == "so far"


def test_an_output_over_64_kib_keeps_its_end_whole_characters_only(conn: Any) -> None:
    job, lease = started(conn)
    output = "start " + "é" * 40_000 + " the end"  # 80,014 bytes
    assert end_attempt(conn, job, lease, "completed", None, output) == "completed"
    kept = job_row(conn, job)["output"]
    assert len(kept.encode()) <= 65536 and kept.endswith("é the end")
    assert output.endswith(kept) and len(kept.encode()) > 65530


def test_an_output_with_nul_is_stored_through_the_store(conn: Any) -> None:
    job, lease = started(conn)
    assert store.end_attempt(conn, job, lease, EndReason.COMPLETED, output="a\x00b") == "completed"
    assert job_row(conn, job)["output"] == "a\ufffdb"


def test_the_output_so_far_is_kept_under_the_lease_and_the_end_writes_the_last(
    conn: Any,
) -> None:
    job, lease = started(conn)
    assert store.set_output(conn, job, lease, "step one\n") is True
    assert job_row(conn, job)["output"] == "step one\n"
    assert job_row(conn, job)["status"] == "processing"
    long = "x" * 70_000 + "the end"
    assert store.set_output(conn, job, lease, long) is True
    assert job_row(conn, job)["output"] == long[-65536:]  # the end, as at the end
    assert store.set_output(conn, job, uuid.uuid4(), "forged") is False  # a stale lease
    assert end_attempt(conn, job, lease, "completed", None, "all done\n") == "completed"
    assert store.set_output(conn, job, lease, "late") is False  # the attempt has ended
    assert job_row(conn, job)["output"] == "all done\n"


def test_the_direct_output_column_is_limited_to_64_kib(conn: Any) -> None:
    insert_job(conn, new_session(conn))
    conn.execute("UPDATE coding_jobs SET output = repeat('é', 32768)")  # 65,536 bytes
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        conn.execute("UPDATE coding_jobs SET output = repeat('x', 65537)")
    assert refused.value.diag.constraint_name == "coding_jobs_output_check"


# -- events ------------------------------------------------------------------------------------


def test_events_are_recorded_under_the_lease_and_announced(conn: Any, db_url: str) -> None:
    job, lease = started(conn)
    session = job_row(conn, job)["session_id"]
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN job_progress")
        events = [("progress", {"pct": 10}), ("log", {"text": "compiling"})]
        assert store.add_events(conn, job, lease, events) == 2
        notes = [json.loads(n.payload) for n in listener.notifies(timeout=2, stop_after=2)]
    recorded = store.events(conn, job)
    assert [(e.kind, e.payload, e.attempt, e.session_id) for e in recorded] == [
        ("progress", {"pct": 10}, 1, session),
        ("log", {"text": "compiling"}, 1, session),
    ]
    assert notes == [
        {"job_id": str(job), "session_id": str(session), "event_id": e.id, "kind": e.kind}
        for e in recorded
    ]
    assert store.events(conn, job, after_id=recorded[0].id) == recorded[1:]


def test_events_under_a_stale_lease_are_refused_and_nothing_is_written(
    conn: Any, db_url: str
) -> None:
    job, lease = started(conn)
    assert end_attempt(conn, job, lease, "error", "boom") == "pending"
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN job_progress")
        assert store.add_events(conn, job, lease, [("log", {"text": "late"})]) == 0
        assert store.add_events(conn, job, uuid.uuid4(), [("log", {"text": "forged"})]) == 0
        assert list(listener.notifies(timeout=0.3)) == []
    assert store.events(conn, job) == []


def test_events_of_a_bad_shape_are_refused(conn: Any) -> None:
    job, lease = started(conn)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute(
            "SELECT queue_add_events(%s, %s, ARRAY['a', 'b'], ARRAY['{}'::jsonb])", [job, lease]
        )
    for kinds, payload in ((["log"], "[1, 2]"), ([""], "{}"), (["k" * 101], "{}")):
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "SELECT queue_add_events(%s, %s, %s, ARRAY[%s::jsonb])",
                [job, lease, kinds, payload],
            )
    assert store.events(conn, job) == []


def test_events_are_deleted_with_their_job(conn: Any) -> None:
    job, lease = started(conn)
    assert store.add_events(conn, job, lease, [("log", {"text": "x"})]) == 1
    assert end_attempt(conn, job, lease, "cancelled") == "cancelled"
    set_clock(conn, T0 + timedelta(days=8))
    assert scalar(conn, "SELECT queue_prune('cancelled')") == 1
    assert scalar(conn, "SELECT count(*) FROM coding_job_events") == 0


# -- a pod's heartbeat --------------------------------------------------------------------------


def test_renew_leases_renews_the_live_ones_and_reports_lost_and_cancelled(conn: Any) -> None:
    live, live_lease = started(conn)
    asked, asked_lease = started(conn)
    lost, lost_lease = started(conn)
    assert scalar(conn, "SELECT cancel_job(%s)", [asked]) is True
    assert end_attempt(conn, lost, lost_lease, "error", "boom") == "pending"
    set_clock(conn, LATER)
    leases = [
        Lease(live, live_lease),
        Lease(lost, lost_lease),
        Lease(asked, asked_lease),
        Lease(live, uuid.uuid4()),  # a forged token for a live job
        Lease(uuid.uuid4(), uuid.uuid4()),
    ]
    renewals = store.renew_leases(conn, leases)
    assert renewals == [
        Renewal(live, True, False),
        Renewal(lost, False, False),
        Renewal(asked, True, True),
        Renewal(live, False, False),
        Renewal(leases[4].job_id, False, False),
    ]
    assert job_row(conn, live)["heartbeat_at"] == LATER
    assert job_row(conn, asked)["heartbeat_at"] == LATER
    assert job_row(conn, lost)["heartbeat_at"] is None
    assert store.renew_leases(conn, []) == []


def test_renew_leases_pass_over_a_locked_row_without_waiting(conn: Any, db_url: str) -> None:
    """A cancel left open in a producer's transaction locks its job's row: the pod's
    heartbeat reports that lease busy (renewed NULL) and renews the others at once."""
    free, free_lease = started(conn)
    locked, locked_lease = started(conn)
    with psycopg.connect(db_url) as phone:  # its transaction stays open
        assert phone.execute("SELECT cancel_job(%s)", [locked]).fetchone() == (True,)
        set_clock(conn, LATER)
        conn.execute("SET lock_timeout = '100ms'")  # a wait for the lock would fail
        renewals = store.renew_leases(conn, [Lease(locked, locked_lease), Lease(free, free_lease)])
        assert renewals == [Renewal(locked, None, False), Renewal(free, True, False)]
        assert job_row(conn, free)["heartbeat_at"] == LATER
        phone.commit()
    assert store.renew_leases(conn, [Lease(locked, locked_lease)]) == [Renewal(locked, True, True)]


def test_renew_leases_refuses_arrays_of_different_lengths(conn: Any) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute(
            "SELECT * FROM queue_renew_leases(%s::uuid[], %s::uuid[])",
            [[uuid.uuid4()], []],
        )


def test_a_heartbeat_leaves_every_index_alone(conn: Any) -> None:
    """heartbeat_at is in no index and no index predicate: renewals stay HOT updates."""
    indexed = conn.execute(
        "SELECT indexrelid::regclass::text FROM pg_index "
        "WHERE indrelid = 'coding_jobs'::regclass "
        "AND (pg_get_indexdef(indexrelid) LIKE '%%heartbeat_at%%' "
        "     OR pg_get_expr(indpred, indrelid) LIKE '%%heartbeat_at%%')"
    ).fetchall()
    assert indexed == []


# -- end and claim in one round trip ---------------------------------------------------------------


def test_end_and_claim_ends_then_claims_the_sessions_next_prompt(conn: Any) -> None:
    session = new_session(conn)
    job, lease = started(conn, session)
    following = insert_job(conn, session)
    ended = store.end_and_claim(conn, job, lease, EndReason.COMPLETED, None, "done", "w1")
    assert ended.status == "completed"
    assert ended.next_job is not None and ended.next_job.id == following
    assert job_row(conn, job)["output"] == "done"
    stale = store.end_and_claim(conn, job, lease, EndReason.ERROR, "late", None, "w1")
    assert (stale.status, stale.next_job) == (None, None)


def test_end_and_claim_with_nothing_due_is_one_row_with_no_job(conn: Any) -> None:
    job, lease = started(conn)
    row = conn.execute(
        "SELECT * FROM queue_end_and_claim(%s, %s, 'error', 'boom', NULL, 'w1')", [job, lease]
    ).fetchall()
    assert len(row) == 1 and row[0][0] == "pending" and all(v is None for v in row[0][1:])
