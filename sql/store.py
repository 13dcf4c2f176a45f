"""The one door to the database: a typed function for every statement the product runs.

Each function runs one named query of queries.sql (beside this file) on the
connection it is given and returns a dataclass, a scalar or nothing; no other
module names a query. Transactions are the caller's: on an autocommit
connection every call is its own transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import class_row

from mobvibe.sql.files import query
from mobvibe.sql.jobs import Job, NewJob

Conn = psycopg.Connection[Any]


# -- results --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chained:
    """complete_and_claim: whether the completion counted, and the job claimed with it."""

    completed: bool
    next_job: Job | None


@dataclass(frozen=True, slots=True)
class Lease:
    """A claim held by a worker: the job and the token that fences its writes."""

    job_id: uuid.UUID
    lease_token: uuid.UUID


@dataclass(frozen=True, slots=True)
class Reaped:
    """One expired attempt a sweep failed: will_retry None when it had ended meanwhile."""

    job_id: uuid.UUID
    session_id: uuid.UUID
    will_retry: bool | None


@dataclass(frozen=True, slots=True)
class WaitingRetries:
    """Pending jobs waiting for their run_at, and the earliest run_at."""

    count: int
    next_at: datetime | None


@dataclass(frozen=True, slots=True)
class NextRun:
    """When the next pending job comes due (None: none waits), on the database's clock."""

    next_run_at: datetime | None
    now: datetime

    @property
    def due_in(self) -> float | None:
        """Seconds until the next job is due (<= 0: due now); None when none waits."""
        return None if self.next_run_at is None else (self.next_run_at - self.now).total_seconds()


@dataclass(frozen=True)
class QueueStats:
    """The plan's queue statistics, plus the retries waiting for their run_at."""

    pending_count: int
    processing_count: int
    completed_count: int
    failed_count: int
    oldest_pending_age: timedelta | None
    waiting_retry_count: int = 0
    next_run_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        age = self.oldest_pending_age
        return {
            "pending_count": self.pending_count,
            "processing_count": self.processing_count,
            "completed_count": self.completed_count,
            "failed_count": self.failed_count,
            "oldest_pending_age_seconds": None if age is None else age.total_seconds(),
            "waiting_retry_count": self.waiting_retry_count,
            "next_run_at": None if self.next_run_at is None else self.next_run_at.isoformat(),
        }


@dataclass(frozen=True)
class JobRow:
    """Every column of a job's row that the tools show."""

    id: uuid.UUID
    session_id: uuid.UUID
    prompt: str
    priority: int
    status: str
    retry_count: int
    max_retries: int
    error_message: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    run_at: datetime
    heartbeat_at: datetime | None
    worker_id: str | None
    lease_token: uuid.UUID | None
    attempt: int
    end_reason: str | None

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered job, as the dead-letter list shows it."""

    id: uuid.UUID
    session_id: uuid.UUID
    priority: int
    retry_count: int
    max_retries: int
    error_message: str | None
    end_reason: str | None
    completed_at: datetime | None
    prompt_head: str

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """The queue's configuration as every role may read it, and the schema version.

    A retention of None keeps those jobs forever.
    """

    schema_version: int | None
    heartbeat_timeout: timedelta
    retain_completed: timedelta | None
    retain_failed: timedelta | None
    backoff_base: timedelta
    backoff_cap: timedelta
    backoff_jitter: float


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """The settings an operator changes, in seconds; None leaves one unchanged.

    A retention of 0 keeps those jobs forever.
    """

    backoff_base: float | None = None
    backoff_cap: float | None = None
    backoff_jitter: float | None = None
    heartbeat_timeout: float | None = None
    retain_completed: float | None = None
    retain_failed: float | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, name) is None for name in self.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    """A migration the database has applied, as recorded."""

    version: int
    name: str
    checksum: str


@dataclass(frozen=True)
class DoctorRow:
    """One row a doctor check found; `total` is how many rows the check found in all."""

    total: int
    job_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None
    worker_id: str | None = None
    silent_seconds: float | None = None
    retry_count: int | None = None
    max_retries: int | None = None
    function: str | None = None


# -- attempts: claim, heartbeat, finish -------------------------------------------


def claim(conn: Conn, worker_id: str | None) -> Job | None:
    """Claim the due pending job of highest priority, oldest first; None when none is due."""
    row = conn.execute(query("claim_next_job"), {"worker_id": worker_id}).fetchone()
    return None if row is None else Job(*row)


def complete(conn: Conn, job_id: uuid.UUID, lease_token: uuid.UUID | None) -> bool:
    """Complete the job (with its lease, or as an operator with None); False: nothing changed."""
    if lease_token is None:
        row = conn.execute(query("complete_job_as_operator"), {"job_id": job_id}).fetchone()
    else:
        row = conn.execute(
            query("complete_job"), {"job_id": job_id, "lease_token": lease_token}
        ).fetchone()
    return bool(row and row[0])


def complete_and_claim(
    conn: Conn, job_id: uuid.UUID, lease_token: uuid.UUID, worker_id: str
) -> Chained:
    """Complete a job and claim the next in one round trip and one commit."""
    row = conn.execute(
        query("complete_and_claim"),
        {"job_id": job_id, "lease_token": lease_token, "worker_id": worker_id},
    ).fetchone()
    assert row is not None  # the function always returns one row
    return Chained(bool(row[0]), None if row[1] is None else Job(*row[1:]))


def fail(
    conn: Conn, job_id: uuid.UUID, error: str, lease_token: uuid.UUID | None, reason: str = "error"
) -> bool | None:
    """Record a failed attempt: True will retry, False dead-lettered, None nothing changed.

    With no lease it is the operator's failure of any pending or processing job,
    whose reason is always 'error' (the plan's call has no reason).
    """
    if lease_token is None:
        row = conn.execute(
            query("fail_job_as_operator"), {"job_id": job_id, "error": error}
        ).fetchone()
    else:
        row = conn.execute(
            query("fail_job"),
            {"job_id": job_id, "lease_token": lease_token, "error": error, "reason": reason},
        ).fetchone()
    return None if row is None or row[0] is None else bool(row[0])


def heartbeat(conn: Conn, job_id: uuid.UUID, lease_token: uuid.UUID) -> bool:
    """Renew the attempt's lease; False: the lease is lost."""
    row = conn.execute(
        query("heartbeat"), {"job_id": job_id, "lease_token": lease_token}
    ).fetchone()
    return bool(row and row[0])


def release(conn: Conn, job_id: uuid.UUID, lease_token: uuid.UUID, reason: str) -> bool:
    """Give an unfinished attempt back, not counted as a failure; False: the lease is lost."""
    row = conn.execute(
        query("release_job"), {"job_id": job_id, "lease_token": lease_token, "reason": reason}
    ).fetchone()
    return bool(row and row[0])


def claims_of_worker(conn: Conn, worker_id: str) -> list[Lease]:
    """The processing jobs claimed under `worker_id`."""
    rows = conn.execute(query("claims_of_worker"), {"worker_id": worker_id}).fetchall()
    return [Lease(job_id, lease_token) for job_id, lease_token in rows]


def next_run(conn: Conn) -> NextRun:
    """When the next pending job comes due, and the database's now."""
    row = conn.execute(query("next_run_at")).fetchone()
    assert row is not None
    return NextRun(row[0], row[1])


# -- producers ----------------------------------------------------------------------


def create_session(conn: Conn, session_id: uuid.UUID) -> None:
    """Create the session if it does not exist."""
    conn.execute(query("create_session"), {"session_id": session_id})


def create_sessions(conn: Conn, session_ids: Sequence[uuid.UUID]) -> None:
    """Create each session that does not exist (in one pipeline when `conn` has one open)."""
    conn.cursor().executemany(query("create_session"), [{"session_id": s} for s in session_ids])


def enqueue(conn: Conn, job: NewJob) -> uuid.UUID:
    """Insert one validated job of an existing session; its id."""
    row = conn.execute(
        query("enqueue_job"),
        {
            "session_id": job.session_id,
            "prompt": job.prompt,
            "priority": job.priority,
            "max_retries": job.max_retries,
            "run_at": job.run_at,
            "delay": job.delay,
        },
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def enqueue_many(
    conn: Conn, jobs: Sequence[NewJob], session_ids: Sequence[uuid.UUID]
) -> list[uuid.UUID]:
    """Insert validated jobs in one statement (job i in session i); their ids, in order."""
    # Binary arrays: psycopg's text array dumper escapes every element in
    # Python, which was a third of the client's time per job.
    cur = conn.execute(
        query("enqueue_jobs"),
        {
            "session_ids": list(session_ids),
            "prompts": [job.prompt for job in jobs],
            "priorities": [job.priority for job in jobs],
            "max_retries": [job.max_retries for job in jobs],
            "run_ats": [job.run_at for job in jobs],
            "delays": [float(job.delay) for job in jobs],
        },
    )
    return [row[0] for row in cur.fetchall()]


# -- reading jobs ---------------------------------------------------------------------


def get_job(conn: Conn, job_id: uuid.UUID) -> JobRow | None:
    """The job's row, or None."""
    with conn.cursor(row_factory=class_row(JobRow)) as cur:
        return cur.execute(query("get_job"), {"job_id": job_id}).fetchone()


def stats(conn: Conn) -> QueueStats:
    """The plan's queue statistics."""
    with conn.cursor(row_factory=class_row(QueueStats)) as cur:
        row = cur.execute(query("queue_stats")).fetchone()
    assert row is not None
    return row


def waiting_retries(conn: Conn) -> WaitingRetries:
    """Retries waiting for their run_at (read from pending rows only)."""
    row = conn.execute(query("waiting_retries")).fetchone()
    assert row is not None
    return WaitingRetries(int(row[0]), row[1])


# -- dead letters -------------------------------------------------------------------------


def list_failed(conn: Conn, limit: int) -> list[DeadLetter]:
    """The newest dead-lettered jobs."""
    with conn.cursor(row_factory=class_row(DeadLetter)) as cur:
        return cur.execute(query("list_failed"), {"limit": limit}).fetchall()


def requeue_failed(conn: Conn, job_id: uuid.UUID) -> bool:
    """Bring a dead-lettered job back to pending, retry count reset; False if it is not one."""
    row = conn.execute(query("requeue_failed"), {"job_id": job_id}).fetchone()
    return bool(row and row[0])


def failed_ids(conn: Conn, older_than: timedelta | None = None) -> list[uuid.UUID]:
    """Ids of every dead-lettered job, oldest first, or of those failed before now - older_than."""
    if older_than is None:
        rows = conn.execute(query("failed_ids")).fetchall()
    else:
        rows = conn.execute(query("failed_ids_older_than"), {"older_than": older_than}).fetchall()
    return [row[0] for row in rows]


def purge_failed(conn: Conn, older_than: timedelta, batch_size: int) -> int:
    """Delete up to `batch_size` dead letters failed at least `older_than` ago; how many."""
    row = conn.execute(
        query("purge_failed"), {"older_than": older_than, "batch_size": batch_size}
    ).fetchone()
    return int(row[0]) if row else 0


# -- maintenance ------------------------------------------------------------------------


def reap_expired(conn: Conn, batch_size: int) -> list[Reaped]:
    """Fail up to `batch_size` attempts silent for longer than the configured heartbeat timeout."""
    rows = conn.execute(query("reap_expired"), {"batch_size": batch_size}).fetchall()
    return [Reaped(*row) for row in rows]


def prune(conn: Conn, status: str, batch_size: int) -> int:
    """Delete up to `batch_size` `status` jobs older than the configured retention; how many."""
    row = conn.execute(query("prune"), {"status": status, "batch_size": batch_size}).fetchone()
    return int(row[0]) if row else 0


def record_reaper_run(
    conn: Conn, reaper: str, requeued: int, dead_lettered: int, pruned: int
) -> None:
    """Record a finished sweep of `reaper` (and forget reapers not seen for a week)."""
    conn.execute(
        query("record_reaper_run"),
        {"reaper": reaper, "requeued": requeued, "dead_lettered": dead_lettered, "pruned": pruned},
    )


def last_reaper_sweep(conn: Conn) -> float | None:
    """Unix time of the last sweep of any reaper, or None."""
    row = conn.execute(query("last_reaper_sweep")).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def queue_settings(conn: Conn) -> QueueSettings:
    """The configuration and the schema version (queue_settings(), granted to every role)."""
    with conn.cursor(row_factory=class_row(QueueSettings)) as cur:
        row = cur.execute(query("queue_settings")).fetchone()
    assert row is not None  # queue_config has its one row
    return row


def queue_settings_exist(conn: Conn) -> bool:
    """Whether the schema has queue_settings() (migration 0005 and later)."""
    row = conn.execute(query("queue_settings_exists")).fetchone()
    return bool(row and row[0])


def migrations_readable(conn: Conn) -> bool:
    """Whether this role may read queue_migrations (the owner and operators)."""
    row = conn.execute(query("migrations_readable")).fetchone()
    return bool(row and row[0])


def set_queue_config(conn: Conn, change: ConfigChange) -> None:
    """Change the settings that `change` gives, in one statement."""
    conn.execute(query("set_queue_config"), asdict(change))


def doctor_check(conn: Conn, name: str, timeout: timedelta, limit: int) -> list[DoctorRow]:
    """The rows doctor check `name` finds, at most `limit`."""
    with conn.cursor(row_factory=class_row(DoctorRow)) as cur:
        return cur.execute(query(f"doctor_{name}"), {"timeout": timeout, "limit": limit}).fetchall()


# -- migrations ---------------------------------------------------------------------------


def lock_migrations(conn: Conn) -> None:
    """Wait for, then hold, the session lock that serialises migration runs."""
    conn.execute(query("migration_lock"))


def unlock_migrations(conn: Conn) -> None:
    conn.execute(query("migration_unlock"))


def create_migrations_table(conn: Conn) -> None:
    conn.execute(query("create_migrations_table"))


def migrations_table_exists(conn: Conn) -> bool:
    row = conn.execute(query("migrations_table_exists")).fetchone()
    return bool(row and row[0])


def applied_migrations(conn: Conn) -> list[AppliedMigration]:
    """The migrations recorded as applied, in version order."""
    with conn.cursor(row_factory=class_row(AppliedMigration)) as cur:
        return cur.execute(query("applied_migrations")).fetchall()


def apply_migration(conn: Conn, version: int, name: str, checksum: str, script: str) -> None:
    """Run a migration file and record it, in one transaction."""
    with conn.transaction():
        conn.execute(query("migration_lock_timeout"))
        conn.execute(script.encode())  # a file of several statements, shipped with the package
        conn.execute(
            query("record_migration"), {"version": version, "name": name, "checksum": checksum}
        )
