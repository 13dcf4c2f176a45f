"""Shared pieces of the stateful suites: the Hypothesis profiles, the test clock,
connections that carry their own clock, and the database-side checks."""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from hypothesis import HealthCheck, settings

from mobvibe.vocabulary import JobStatus
from tests.support.rows import insert_job, job_row
from tests.support.sqlclock import set_clock

# The model's epoch: in the future, so that a plain INSERT (created_at and run_at
# = the real now()) is always older and already due.
T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=10)  # the reaper's heartbeat timeout
BASE = timedelta(seconds=4)  # queue_config.backoff_base for these suites
CAP = timedelta(seconds=10)  # queue_config.backoff_cap: reached at the third failure
STATUSES = tuple(JobStatus)
NIL = uuid.UUID(int=0)  # the user key of every session with no user
REAPER_MESSAGE = "heartbeat expired: no heartbeat for 00:00:10"  # LEASE as interval text


def backoff(failures: int) -> timedelta:
    """The delay before retry number `failures` with no jitter: min(cap, base * 2^(n-1))."""
    return min(CAP, BASE * 2 ** (failures - 1))


# --- Hypothesis profiles --------------------------------------------------------------------
# Registered, never loaded: the other suites keep Hypothesis' defaults, and these
# suites pass the chosen profile explicitly. HYPOTHESIS_PROFILE=long for local runs.

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=450,
    stateful_step_count=50,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    derandomize=False,
    deadline=None,
    max_examples=1000,
    stateful_step_count=80,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    PROFILE = "ci"


def profile() -> settings:
    """The settings of the chosen profile (ci unless HYPOTHESIS_PROFILE=long)."""
    return settings.get_profile(PROFILE)


def interleaving_settings() -> settings:
    """The chosen profile, with the example count of the concurrent scenarios."""
    return settings(profile(), max_examples={"ci": 60, "long": 600}[PROFILE])


# --- Connections and the clock --------------------------------------------------------------


class Clocked:
    """An autocommit connection whose queue_now() we steer; the clock is set only on change."""

    def __init__(self, url: str, name: str) -> None:
        self.name = name
        # Durability is not under test: without waiting for the WAL flush at each commit
        # the machine runs several times faster, with the same semantics.
        self.conn = psycopg.connect(
            url,
            autocommit=True,
            application_name=f"stateful-{name}",
            options="-c synchronous_commit=off",
        )
        self._at: datetime | None = None

    def at(self, when: datetime) -> psycopg.Connection[Any]:
        """The connection, with queue_now() = `when`."""
        if when != self._at:
            set_clock(self.conn, when)
            self._at = when
        return self.conn

    def close(self) -> None:
        self.conn.close()


def reset(conn: psycopg.Connection[Any], *, jitter: float = 0.0) -> None:
    """Empty the queue (no user, no start, no limit) and set the suites' backoff schedule
    and heartbeat timeout."""
    conn.execute(
        "TRUNCATE coding_jobs, coding_job_attempts, coding_job_events, coding_sessions, "
        "queue_reaper_runs, queue_users, queue_user_limits RESTART IDENTITY"
    )
    conn.execute("INSERT INTO queue_users (user_key) VALUES (%s)", [NIL])  # sessions with no user
    conn.execute(
        "UPDATE queue_config SET backoff_base = %s, backoff_cap = %s, backoff_jitter = %s,"
        " heartbeat_timeout = %s, user_max_concurrency = NULL",
        [BASE, CAP, jitter, LEASE],
    )


def insert_timed_job(
    conn: psycopg.Connection[Any], session_id: uuid.UUID, **columns: Any
) -> tuple[uuid.UUID, datetime, datetime]:
    """insert_job, and (its id, created_at, run_at) as the database stored them."""
    job_id = insert_job(conn, session_id, **columns)
    row = job_row(conn, job_id)
    return job_id, row["created_at"], row["run_at"]


def reap(conn: psycopg.Connection[Any], batch_size: int = 100) -> list[tuple[Any, bool | None]]:
    """One sweep of queue_reap_expired (the suites' timeout, LEASE, is configured by reset()):
    [(job_id, will_retry)] of the attempts it ended (not of those it passed over: busy, or
    ended or renewed meanwhile)."""
    rows = conn.execute(
        "SELECT job_id, will_retry FROM queue_reap_expired(%s)", [batch_size]
    ).fetchall()
    return [(r[0], r[1]) for r in rows if r[1] is not None]


@dataclass(frozen=True)
class Row:
    """The columns of a coding_jobs row that the suites compare."""

    id: uuid.UUID
    seq: int
    session_id: uuid.UUID
    priority: int
    status: str
    retry_count: int
    max_retries: int
    attempt: int
    created_at: datetime
    run_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    heartbeat_at: datetime | None
    worker_id: str | None
    lease_token: uuid.UUID | None
    end_reason: str | None
    error_message: str | None
    cancel_requested_at: datetime | None
    idempotency_key: str | None


ROW_QUERY = (
    "SELECT id, seq, session_id, priority, status, retry_count, max_retries, attempt,"
    " created_at, run_at, started_at, completed_at, heartbeat_at, worker_id,"
    " lease_token, end_reason, error_message, cancel_requested_at, idempotency_key"
    " FROM coding_jobs"
)


def snapshot(conn: psycopg.Connection[Any]) -> dict[uuid.UUID, Row]:
    """Every job row, by id."""
    return {r[0]: Row(*r) for r in conn.execute(ROW_QUERY).fetchall()}


def full_row(conn: psycopg.Connection[Any], job_id: Any) -> Any:
    """Every column of one job (updated_at too), to prove that a write changed nothing."""
    row = conn.execute("SELECT to_jsonb(j) FROM coding_jobs j WHERE id = %s", [job_id]).fetchone()
    return None if row is None else row[0]


def stats(conn: psycopg.Connection[Any]) -> Any:
    """get_queue_stats() and queue_next_run_at() in one row."""
    return conn.execute(
        "SELECT s.pending_count, s.processing_count, s.completed_count, s.failed_count, "
        "s.oldest_pending_age, s.waiting_retry_count, s.next_run_at, s.cancelled_count, "
        "queue_next_run_at() FROM get_queue_stats() s"
    ).fetchone()


def sessions(conn: psycopg.Connection[Any]) -> dict[uuid.UUID, tuple[str, str | None, int]]:
    """Every session: (status, error_message, max_concurrency)."""
    rows = conn.execute(
        "SELECT id, status, error_message, max_concurrency FROM coding_sessions"
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def user_limits(conn: psycopg.Connection[Any]) -> tuple[dict[uuid.UUID, int], int | None]:
    """The rows of queue_user_limits, and queue_config.user_max_concurrency."""
    rows = conn.execute("SELECT user_id, max_concurrency FROM queue_user_limits").fetchall()
    default = conn.execute("SELECT user_max_concurrency FROM queue_config").fetchone()
    assert default is not None
    return {r[0]: r[1] for r in rows}, default[0]


def users_running(conn: psycopg.Connection[Any]) -> dict[uuid.UUID, int]:
    """Every user's processing jobs."""
    rows = conn.execute(
        "SELECT s.user_id, count(*) FROM coding_jobs j JOIN coding_sessions s"
        " ON s.id = j.session_id WHERE j.status = 'processing' AND s.user_id IS NOT NULL"
        " GROUP BY s.user_id"
    ).fetchall()
    return {r[0]: r[1] for r in rows}


AttemptTuple = tuple[
    str | None, datetime, datetime | None, str | None, str | None
]  # worker_id, started_at, ended_at, end_reason, error_message


def attempts(conn: psycopg.Connection[Any]) -> dict[tuple[uuid.UUID, int], AttemptTuple]:
    """Every row of coding_job_attempts, by (job_id, attempt)."""
    rows = conn.execute(
        "SELECT job_id, attempt, worker_id, started_at, ended_at, end_reason, error_message"
        " FROM coding_job_attempts"
    ).fetchall()
    return {(r[0], r[1]): (r[2], r[3], r[4], r[5], r[6]) for r in rows}


# --- Model-free invariants, for the concurrent scenarios ------------------------------------


@dataclass(frozen=True)
class Observed:
    """One look at the whole queue: every job row, every session, the statistics, the
    users' limits (queue_user_limits' rows, queue_config's default)."""

    rows: dict[uuid.UUID, Row]
    sessions: dict[uuid.UUID, tuple[str, str | None, int]]
    stats: tuple[Any, ...]
    attempts: dict[tuple[uuid.UUID, int], AttemptTuple]
    user_limits: tuple[dict[uuid.UUID, int], int | None]


def check_queue_invariants(
    conn: psycopg.Connection[Any],
    expected_ids: set[Any],
    lowered: Iterable[Any] = (),
    lowered_users: Iterable[Any] = (),
) -> Observed:
    """The invariants that hold whatever the interleaving; returns what it looked at.

    - no job lost and none appeared: the ids are exactly the expected ones;
    - every job is in one known status; 0 <= retry_count <= max_retries;
    - `failed` exactly when retry_count = max_retries, and then its session is failed;
    - `processing` exactly when a heartbeat is set, always with a lease; no two
      processing jobs share a lease; a cancel is requested only of a job that ran;
    - no session has more processing jobs than its max_concurrency (`lowered`: the
      sessions whose max_concurrency was lowered, whose running jobs were not stopped);
    - no user has more processing jobs than its limit (`lowered_users`: the users whose
      limit was lowered, whose running jobs were not stopped);
    - one row per (session, idempotency key);
    - coding_job_attempts: a row per claim (numbered 1 to the job's attempt), open
      exactly while the job is processing, and then only its latest; a closed row has
      an end_reason;
    - get_queue_stats() counts (cancelled_count too) equal a direct count.
    """
    seen = Observed(
        snapshot(conn), sessions(conn), tuple(stats(conn)), attempts(conn), user_limits(conn)
    )
    rows = seen.rows
    assert set(rows) == expected_ids, (
        f"lost: {expected_ids - set(rows)}, appeared unasked: {set(rows) - expected_ids}"
    )
    for row in rows.values():
        assert row.status in STATUSES
        assert 0 <= row.retry_count <= row.max_retries, row
        assert (row.status == "failed") == (row.retry_count == row.max_retries), row
        if row.status == "failed":
            assert seen.sessions[row.session_id][0] == "failed", row
        assert (row.status == "processing") == (row.heartbeat_at is not None), row
        if row.status == "processing":
            assert row.lease_token is not None
        if row.cancel_requested_at is not None:
            assert row.status in ("processing", "completed", "cancelled"), row
    live = [r.lease_token for r in rows.values() if r.status == "processing"]
    assert len(live) == len(set(live)), "two processing jobs share a lease"
    running = Counter(r.session_id for r in rows.values() if r.status == "processing")
    exempt = set(lowered)
    for session_id, n in running.items():
        if session_id not in exempt:
            assert n <= seen.sessions[session_id][2], f"session {session_id}: {n} running"
    rows_of, default = seen.user_limits
    exempt_users = set(lowered_users)
    for user_id, n in users_running(conn).items():
        limit = rows_of.get(user_id, default)
        if user_id not in exempt_users and limit is not None:
            assert n <= limit, f"user {user_id}: {n} running, limit {limit}"
    keyed = Counter((r.session_id, r.idempotency_key) for r in rows.values() if r.idempotency_key)
    assert all(n == 1 for n in keyed.values()), "two rows of one (session, idempotency key)"
    numbers: dict[Any, list[int]] = {job_id: [] for job_id in rows}
    for (job_id, number), (_, _, ended_at, end_reason, _) in seen.attempts.items():
        numbers[job_id].append(number)
        job = rows[job_id]
        still_open = job.status == "processing" and number == job.attempt
        assert (ended_at is None) == still_open, f"attempt {number} of {job}"
        assert (end_reason is None) == still_open, f"attempt {number} of {job}"
    for job_id, seen_numbers in numbers.items():
        assert sorted(seen_numbers) == list(range(1, rows[job_id].attempt + 1)), rows[job_id]
    counts = Counter(r.status for r in rows.values())
    expected = tuple(counts[s] for s in STATUSES)
    assert (*seen.stats[:4], seen.stats[7]) == expected, "stats differ from a count"
    return seen


# --- Running things at the same instant -----------------------------------------------------
