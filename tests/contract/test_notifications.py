"""The plan's notification channels: new_job on every new job, job_status_changed on every move."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from mobvibe.client import JobQueue
from mobvibe.sql.jobs import NewJob
from mobvibe.sql.notify import Notification
from tests.support.rows import claim, insert_job, job_row, scalar
from tests.support.sqlclock import T0, set_clock
from tests.support.waiting import wait_for

NEW_JOB_KEYS = {"job_id", "session_id", "priority"}
STATUS_KEYS = {"job_id", "session_id", "old_status", "new_status"}
Note = tuple[str, dict[str, Any]]


@pytest.fixture
def listener(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection that LISTENs on both channels and on a private end-of-test marker."""
    with psycopg.connect(db_url, autocommit=True) as connection:
        for statement in ("LISTEN new_job", "LISTEN job_status_changed", "LISTEN test_marker"):
            connection.execute(statement)
        yield connection


def received(listener: psycopg.Connection[Any], sender: psycopg.Connection[Any]) -> list[Note]:
    """Every notification up to now, in order.

    `sender` sends a marker after the calls under test; notifications arrive in
    commit order, so everything they caused has arrived once the marker has.
    """
    sender.execute("SELECT pg_notify('test_marker', '')")
    notes: list[Note] = []

    def marker_arrived() -> bool:
        for note in listener.notifies(timeout=0.05):
            if note.channel == "test_marker":
                return True
            notes.append((note.channel, json.loads(note.payload)))
        return False

    wait_for(marker_arrived, timeout=10, message="the marker notification")
    return notes


def status_change(job: Any, session_id: Any, old: str, new: str) -> Note:
    return (
        "job_status_changed",
        {"job_id": str(job), "session_id": str(session_id), "old_status": old, "new_status": new},
    )


def test_a_plain_insert_notifies_new_job_with_the_plan_payload(
    listener: Any, conn: Any, session_id: Any
) -> None:
    job = insert_job(conn, session_id, priority=7)
    notes = received(listener, conn)
    assert notes == [
        ("new_job", {"job_id": str(job), "session_id": str(session_id), "priority": 7})
    ]
    assert set(notes[0][1]) == NEW_JOB_KEYS


def test_enqueue_many_notifies_once_per_job(
    listener: Any, conn: Any, queue: JobQueue, session_id: Any
) -> None:
    ids = queue.enqueue_many(
        [
            NewJob("a", session_id, priority=1),
            NewJob("b", priority=2),
            NewJob("c", session_id, priority=3),
        ]
    )
    notes = received(listener, conn)
    assert [channel for channel, _ in notes] == ["new_job"] * 3
    assert all(set(payload) == NEW_JOB_KEYS for _, payload in notes)
    by_id = {payload["job_id"]: payload["priority"] for _, payload in notes}
    assert by_id == {str(ids[0]): 1, str(ids[1]): 2, str(ids[2]): 3}


def test_each_status_transition_notifies_old_and_new_status(
    listener: Any, conn: Any, session_id: Any
) -> None:
    job = insert_job(conn, session_id, max_retries=2)
    set_clock(conn, T0)
    first = claim(conn)
    assert first is not None
    assert scalar(conn, "SELECT fail_job(%s, 'e1', %s)", [job, first["lease_token"]]) is True
    set_clock(conn, job_row(conn, job)["run_at"])
    second = claim(conn)
    assert second is not None
    assert scalar(conn, "SELECT fail_job(%s, 'e2', %s)", [job, second["lease_token"]]) is False
    assert scalar(conn, "SELECT queue_requeue_failed(%s)", [job]) is True
    third = claim(conn)
    assert third is not None
    assert scalar(conn, "SELECT complete_job(%s, %s)", [job, third["lease_token"]]) is True

    notes = received(listener, conn)
    new_job = ("new_job", {"job_id": str(job), "session_id": str(session_id), "priority": 0})
    assert notes == [
        new_job,
        status_change(job, session_id, "pending", "processing"),
        status_change(job, session_id, "processing", "pending"),  # retry
        status_change(job, session_id, "pending", "processing"),
        status_change(job, session_id, "processing", "failed"),  # dead letter
        status_change(job, session_id, "failed", "pending"),  # requeue_failed
        new_job,
        status_change(job, session_id, "pending", "processing"),
        status_change(job, session_id, "processing", "completed"),
    ]
    assert all(
        set(payload) == STATUS_KEYS for channel, payload in notes if channel == "job_status_changed"
    )


def test_release_and_the_operator_path_notify_too(
    listener: Any, conn: Any, session_id: Any
) -> None:
    job = insert_job(conn, session_id, max_retries=1)
    lease = claim(conn)["lease_token"]  # type: ignore[index]
    assert scalar(conn, "SELECT queue_release_job(%s, %s)", [job, lease]) is True
    assert scalar(conn, "SELECT fail_job(%s, 'operator')", [job]) is False
    notes = received(listener, conn)
    new_job = ("new_job", {"job_id": str(job), "session_id": str(session_id), "priority": 0})
    assert notes == [
        new_job,
        status_change(job, session_id, "pending", "processing"),
        status_change(job, session_id, "processing", "pending"),
        new_job,  # released: due again now
        status_change(job, session_id, "pending", "failed"),
    ]


def test_a_session_with_status_notify_off_sends_no_status_changes(
    listener: Any, conn: Any, db_url: str, session_id: Any
) -> None:
    job = insert_job(conn, session_id)
    with psycopg.connect(db_url, autocommit=True, options="-c mobvibe.status_notify=off") as quiet:
        taken = claim(quiet)
        assert taken is not None
        assert scalar(quiet, "SELECT complete_job(%s, %s)", [job, taken["lease_token"]]) is True
    other = insert_job(conn, session_id)
    assert scalar(conn, "SELECT complete_job(%s)", [other]) is True  # others still notify
    notes = received(listener, conn)
    assert [channel for channel, _ in notes] == ["new_job", "new_job", "job_status_changed"]
    assert notes[2] == status_change(other, session_id, "pending", "completed")


def test_a_heartbeat_notifies_nothing(listener: Any, conn: Any, session_id: Any) -> None:
    insert_job(conn, session_id)
    set_clock(conn, T0)
    claimed = claim(conn)
    assert claimed is not None
    assert len(received(listener, conn)) == 2  # new_job, pending -> processing
    set_clock(conn, T0 + timedelta(seconds=10))
    for _ in range(3):
        assert (
            scalar(
                conn, "SELECT queue_heartbeat(%s, %s)", [claimed["job_id"], claimed["lease_token"]]
            )
            is True
        )
    assert received(listener, conn) == []


def _listener_pids(conn: Any) -> set[int]:
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'mobvibe-listener'"
    ).fetchall()
    return {pid for (pid,) in rows}


def test_the_notifications_iterator_reconnects_after_its_backend_is_killed(
    queue: JobQueue, conn: Any, session_id: Any
) -> None:
    got: list[Notification] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def consume() -> None:
        notes = queue.notifications(("new_job",), timeout=30)
        try:
            for note in notes:
                got.append(note)
                if stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            notes.close()  # closes the listener's connection

    def arrives(job_ids: set[str]) -> bool:
        return bool(job_ids & {note.payload.get("job_id") for note in got})

    def enqueue_until_received() -> bool:
        # Notifications sent while the listener is (re)connecting are lost by
        # design (the workers' polling covers them), so keep sending.
        sent.add(str(insert_job(conn, session_id)))
        return arrives(sent)

    sent: set[str] = set()
    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    try:
        wait_for(enqueue_until_received, timeout=20, interval=0.1, message="a first notification")
        (old_pid,) = _listener_pids(conn)
        assert scalar(conn, "SELECT pg_terminate_backend(%s)", [old_pid]) is True

        sent = set()
        wait_for(
            enqueue_until_received,
            timeout=20,
            interval=0.1,
            message="a notification after the reconnect",
        )
        assert old_pid not in _listener_pids(conn)
        assert len(_listener_pids(conn)) == 1
        assert not errors, errors
        assert consumer.is_alive()
    finally:
        stop.set()
        insert_job(conn, session_id)  # wakes the consumer so that it sees `stop`
        consumer.join(timeout=30)
    assert not consumer.is_alive()
    assert not errors, errors
