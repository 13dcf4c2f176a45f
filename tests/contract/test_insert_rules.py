"""A direct INSERT makes a pending job and nothing else; the other states are the functions'.

Other MobVibe parts insert jobs with plain SQL, so the database itself refuses a
row that no function would make: one test per impossible row, each refused with
check_violation naming what was wrong, whoever inserts it (here the owner, who
has every column), and nothing is written or announced.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from mobvibe.client import JobQueue
from mobvibe.errors import InvalidJobError
from mobvibe.sql.migrate import migrate
from tests.support.commands import assert_one_error_line, run_queue_cli
from tests.support.rows import insert_job, job_row, new_session, table_counts, triggers_off
from tests.support.sqlclock import set_clock

LATER = datetime(3000, 1, 1, tzinfo=UTC)
# Within a run_at's window (at most a year ahead of the queue's clock, here the real one).
SOON = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)

# (what is impossible, the columns of the INSERT beyond session and prompt, the words of
# the message)
IMPOSSIBLE = [
    (
        "processing with a heartbeat in year 3000",
        {"status": "processing", "lease_token": uuid.uuid4(), "heartbeat_at": LATER},
        "status processing",
    ),
    (
        "processing",
        {
            "status": "processing",
            "lease_token": uuid.uuid4(),
            "heartbeat_at": LATER,
            "attempt": 1,
            "started_at": LATER,
        },
        "status processing",
    ),
    ("failed", {"status": "failed", "error_message": "x", "completed_at": LATER}, "status failed"),
    ("completed", {"status": "completed", "completed_at": LATER}, "status completed"),
    ("cancelled", {"status": "cancelled", "completed_at": LATER}, "status cancelled"),
    ("a cancel request", {"cancel_requested_at": LATER}, "a cancel_requested_at"),
    ("an output", {"output": "all done"}, "an output"),
    ("attempt 3", {"attempt": 3}, "attempt 3"),
    ("retry_count 1", {"retry_count": 1}, "retry_count 1"),
    ("a lease", {"lease_token": uuid.uuid4()}, "a lease_token"),
    ("a heartbeat", {"heartbeat_at": LATER}, "a heartbeat_at"),
    ("a worker", {"worker_id": "w-1"}, "a worker_id"),
    ("a start", {"started_at": LATER}, "a started_at"),
    ("an end", {"completed_at": LATER}, "a completed_at"),
    ("an end reason", {"end_reason": "completed"}, "an end_reason"),
    ("an error", {"error_message": "boom"}, "an error_message"),
    ("created in 1970", {"created_at": datetime(1970, 1, 1, tzinfo=UTC)}, "created_at 19"),
    ("created in the future", {"created_at": LATER}, "created_at 3000"),
    ("updated in 1970", {"updated_at": datetime(1970, 1, 1, tzinfo=UTC)}, "updated_at 19"),
]


def insert(conn: Any, session_id: Any, **columns: Any) -> uuid.UUID:
    """A plain INSERT of exactly these columns (no created_at help from the support)."""
    names = ["session_id", "prompt", *columns]
    statement = sql.SQL("INSERT INTO coding_jobs ({}) VALUES ({}) RETURNING id").format(
        sql.SQL(", ").join(map(sql.Identifier, names)),
        sql.SQL(", ").join(sql.Placeholder() * len(names)),
    )
    row = conn.execute(statement, [session_id, "impossible", *columns.values()]).fetchone()
    return row[0]  # type: ignore[index]


@pytest.mark.parametrize(
    ("what", "columns", "named"), IMPOSSIBLE, ids=[case[0] for case in IMPOSSIBLE]
)
def test_an_insert_of_an_impossible_row_is_refused_naming_what_was_wrong(
    conn: Any, session_id: Any, what: str, columns: dict[str, Any], named: str
) -> None:
    before = table_counts(conn)
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        insert(conn, session_id, **columns)
    assert named in str(refused.value), str(refused.value)
    assert refused.value.diag.constraint_name == "coding_jobs_insert_check"
    assert table_counts(conn) == before


def test_a_negative_attempt_is_refused_by_a_check(conn: Any, session_id: Any) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        insert(conn, session_id, attempt=-5)
    assert refused.value.diag.constraint_name == "coding_jobs_attempt_check"


def test_the_attempt_check_holds_for_the_owner_with_triggers_off(
    conn: Any, session_id: Any
) -> None:
    with triggers_off(conn), pytest.raises(psycopg.errors.CheckViolation):
        insert(conn, session_id, attempt=-1)


def test_one_impossible_row_refuses_the_whole_statement_and_announces_nothing(
    conn: Any, session_id: Any
) -> None:
    conn.execute("LISTEN new_job")
    before = table_counts(conn)
    with pytest.raises(psycopg.errors.CheckViolation, match="status failed"):
        conn.execute(
            "INSERT INTO coding_jobs (session_id, prompt, status, error_message, completed_at) "
            "SELECT %s, 'batch ' || i, CASE WHEN i = 500 THEN 'failed' ELSE 'pending' END, "
            "CASE WHEN i = 500 THEN 'x' END, CASE WHEN i = 500 THEN now() END "
            "FROM generate_series(1, 1000) AS i",
            [session_id],
        )
    assert table_counts(conn) == before
    assert list(conn.notifies(timeout=0.2)) == []


def test_a_pending_job_with_its_own_columns_and_a_future_run_at_is_accepted(
    conn: Any, session_id: Any
) -> None:
    job = insert(
        conn, session_id, priority=7, max_retries=5, run_at=SOON, status="pending", attempt=0
    )
    row = job_row(conn, job)
    assert (row["status"], row["priority"], row["max_retries"], row["run_at"]) == (
        "pending",
        7,
        5,
        SOON,
    )
    assert row["created_at"] == row["updated_at"]


@pytest.mark.parametrize("given", ["session", "run_at", None])
def test_the_place_of_a_new_job_is_the_databases_whatever_the_insert_says(
    conn: Any, session_id: Any, given: str | None
) -> None:
    first = insert(conn, session_id, waiting_for=given)
    second = insert(conn, session_id, waiting_for=given)
    later = insert(conn, new_session(conn), waiting_for=given, run_at=SOON)
    assert [job_row(conn, j)["waiting_for"] for j in (first, second, later)] == [
        None,
        "session",
        "run_at",
    ]


# run_at's window: from 2000-01-01 to a year after the queue's clock (the real one here).
OUT_OF_WINDOW = [
    "'infinity'",
    "'-infinity'",
    "'10000-01-01 00:00:00+00'",
    "'294276-12-31 23:59:59+00'",
    "'4713-01-01 00:00:00+00 BC'",
    "'1999-12-31 23:59:59+00'",
    "now() + interval '1 year 1 day'",
]


@pytest.mark.parametrize("run_at", OUT_OF_WINDOW)
def test_a_run_at_out_of_its_window_is_refused_with_the_window(
    conn: Any, session_id: Any, run_at: str
) -> None:
    before = table_counts(conn)
    statement = sql.SQL(
        "INSERT INTO coding_jobs (session_id, prompt, run_at) VALUES (%s, 'x', {})"
    ).format(sql.SQL(run_at))
    with pytest.raises(
        psycopg.errors.CheckViolation, match="run_at must be from 2000-01-01 to a year from now"
    ) as refused:
        conn.execute(statement, [session_id])
    assert refused.value.diag.constraint_name == "coding_jobs_run_at_check"
    assert table_counts(conn) == before


@pytest.mark.parametrize("run_at", ["'2000-01-01 00:00:00+00'", "now() + interval '364 days'"])
def test_a_run_at_within_its_window_is_accepted(conn: Any, session_id: Any, run_at: str) -> None:
    statement = sql.SQL(
        "INSERT INTO coding_jobs (session_id, prompt, run_at) VALUES (%s, 'x', {})"
    ).format(sql.SQL(run_at))
    conn.execute(statement, [session_id])


def test_the_client_and_the_cli_say_which_window_a_run_at_missed(
    queue: JobQueue, db_url: str, session_id: Any
) -> None:
    with pytest.raises(InvalidJobError, match="run_at must be from 2000-01-01 to a year from now"):
        queue.enqueue("far", session_id=session_id, run_at=datetime(9999, 1, 1, tzinfo=UTC))
    for delay in (str(400 * 86400), "1000d"):
        line = assert_one_error_line(
            run_queue_cli("enqueue", "--delay", delay, "far", database_url=db_url), 2
        )
        assert "delay must be at most a year" in line


def test_an_explicit_created_at_equal_to_now_is_the_default(conn: Any, session_id: Any) -> None:
    with conn.transaction():
        now = conn.execute("SELECT now()").fetchone()[0]
        insert(conn, session_id, created_at=now, updated_at=now)


# -- the test clock ----------------------------------------------------------------------------


def test_the_test_clock_is_ignored_unless_the_owner_switched_it_on(
    conn: Any, session_id: Any
) -> None:
    later = insert_job(conn, session_id, run_at=datetime.now(UTC) + timedelta(days=1))
    set_clock(conn, LATER)
    try:
        conn.execute("UPDATE queue_config SET test_clock = false")
        assert conn.execute("SELECT queue_now() < now() + interval '1 minute'").fetchone() == (
            True,
        )
        assert conn.execute("SELECT * FROM claim_next_job()").fetchone() is None
        conn.execute("UPDATE queue_config SET test_clock = true")
        assert conn.execute("SELECT queue_now()").fetchone() == (LATER,)
        claimed = conn.execute("SELECT job_id FROM claim_next_job()").fetchone()
        assert claimed == (later,)
    finally:
        conn.execute("UPDATE queue_config SET test_clock = true")
        set_clock(conn, None)


def test_the_test_clock_is_off_in_a_new_database(new_database: Any) -> None:
    with psycopg.connect(new_database("mobvibe_clock"), autocommit=True) as fresh:
        migrate(fresh)
        assert fresh.execute("SELECT test_clock FROM queue_config").fetchone() == (False,)
        fresh.execute("SET mobvibe.now = '2999-01-01 00:00:00+00'")
        assert fresh.execute("SELECT queue_now() < '2999-01-01'").fetchone() == (True,)
