"""The one door to the database: a typed function for every statement the product runs.

Each function runs one named query of queries.sql (beside this file) on the
connection it is given and returns a dataclass, a scalar or nothing; no other
module names a query. Transactions are the caller's: on an autocommit
connection every call is its own transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb

from mobvibe.errors import NotFoundError, QueueError
from mobvibe.sql.files import query
from mobvibe.sql.jobs import Job, NewJob
from mobvibe.sql.records import (
    AppliedMigration,
    AttemptRow,
    Claim,
    ConfigChange,
    DeadLetter,
    DoctorRow,
    DueJobs,
    Ended,
    Enqueued,
    Event,
    JobDetail,
    JobRow,
    JobSummary,
    Lease,
    LockHolder,
    MinuteCount,
    NextRun,
    PlantedObject,
    QueueSettings,
    QueueStats,
    Reaped,
    Renewal,
    RunningJobRow,
    SqlFunction,
    SweepBatch,
    UserRow,
    UserWaiting,
    WaitingRetries,
)
from mobvibe.vocabulary import FINISHED, EndReason, JobStatus

# The result types are the store's vocabulary: callers import them from here.
__all__ = [
    "AppliedMigration",
    "AttemptRow",
    "Claim",
    "ConfigChange",
    "DeadLetter",
    "DoctorRow",
    "DueJobs",
    "Ended",
    "Enqueued",
    "Event",
    "JobDetail",
    "JobRow",
    "JobSummary",
    "Lease",
    "LockHolder",
    "MinuteCount",
    "NextRun",
    "PlantedObject",
    "QueueSettings",
    "QueueStats",
    "Reaped",
    "Renewal",
    "RunningJobRow",
    "SqlFunction",
    "SweepBatch",
    "UserRow",
    "UserWaiting",
    "WaitingRetries",
]

Conn = psycopg.Connection[Any]
IdKind = Literal["job", "session"]


# -- attempts: claim, heartbeat, finish -------------------------------------------


def claim(conn: Conn, worker_id: str | None, lease_key: uuid.UUID | None = None) -> Job | None:
    """Claim the due pending job of highest priority, oldest first; None when none is due.

    With `lease_key`, the lease token is derived from it (jobs.lease_token)."""
    params = {"worker_id": worker_id, "lease_key": lease_key}
    with conn.cursor(row_factory=class_row(Job)) as cur:
        return cur.execute(query("claim_next_job"), params).fetchone()


def complete(conn: Conn, job_id: uuid.UUID, lease_token: uuid.UUID | None) -> bool:
    """Complete the job (with its lease, or as an operator with None); False: nothing changed."""
    if lease_token is None:
        row = conn.execute(query("complete_job_as_operator"), {"job_id": job_id}).fetchone()
    else:
        row = conn.execute(
            query("complete_job"), {"job_id": job_id, "lease_token": lease_token}
        ).fetchone()
    return bool(row and row[0])


def fail(
    conn: Conn,
    job_id: uuid.UUID,
    error: str,
    lease_token: uuid.UUID | None,
    reason: EndReason = EndReason.ERROR,
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


def end_attempt(
    conn: Conn,
    job_id: uuid.UUID,
    lease_token: uuid.UUID,
    end_reason: EndReason,
    error: str | None = None,
    output: str | None = None,
) -> JobStatus | None:
    """End the attempt holding the lease: the job's new status (PENDING again, or one of
    the FINISHED), None when nothing changed (a stale lease).

    end_reason: COMPLETED, RELEASED (given back, not counted; `error` is the human
    reason), CANCELLED, or why the attempt failed (ERROR, DEADLINE_EXCEEDED, ...). A
    cancel that was requested turns a release or a failure into CANCELLED.
    """
    row = conn.execute(
        query("end_attempt"),
        {
            "job_id": job_id,
            "lease_token": lease_token,
            "end_reason": end_reason,
            "error": error,
            "output": _storable(output),
        },
    ).fetchone()
    return None if row is None else _status(row[0])


def end_and_claim(
    conn: Conn,
    job_id: uuid.UUID,
    lease_token: uuid.UUID,
    end_reason: EndReason,
    error: str | None,
    output: str | None,
    worker_id: str,
    lease_key: uuid.UUID | None = None,
) -> Ended:
    """end_attempt, then claim the next job (as claim()), in one round trip and one commit."""
    params = {
        "job_id": job_id,
        "lease_token": lease_token,
        "end_reason": end_reason,
        "error": error,
        "output": _storable(output),
        "worker_id": worker_id,
        "lease_key": lease_key,
    }
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query("end_and_claim"), params).fetchone()
    assert row is not None  # the function always returns one row
    ended = row.pop("ended")
    return Ended(_status(ended), None if row["id"] is None else Job(**row))


def _status(value: str | None) -> JobStatus | None:
    return None if value is None else JobStatus(value)


def renew_leases(conn: Conn, leases: Sequence[Lease]) -> list[Renewal]:
    """Renew every lease in one statement: a Renewal per lease, in order."""
    if not leases:
        return []
    params = {
        "job_ids": [lease.job_id for lease in leases],
        "lease_tokens": [lease.lease_token for lease in leases],
    }
    with conn.cursor(row_factory=class_row(Renewal)) as cur:
        return cur.execute(query("renew_leases"), params).fetchall()


def add_events(
    conn: Conn,
    job_id: uuid.UUID,
    lease_token: uuid.UUID,
    events: Sequence[tuple[str, dict[str, Any]]],
) -> int:
    """Record progress events (kind, JSON object) of the attempt holding the lease;
    how many (0: the lease is stale, nothing written)."""
    if not events:
        return 0
    row = conn.execute(
        query("add_events"),
        {
            "job_id": job_id,
            "lease_token": lease_token,
            "kinds": [kind for kind, _ in events],
            "payloads": [Jsonb(payload) for _, payload in events],
        },
    ).fetchone()
    return int(row[0]) if row else 0


def set_output(conn: Conn, job_id: uuid.UUID, lease_token: uuid.UUID, output: str) -> bool:
    """Keep the running attempt's output so far with the job; False: the lease is stale,
    nothing written."""
    row = conn.execute(
        query("set_output"),
        {"job_id": job_id, "lease_token": lease_token, "output": _storable(output)},
    ).fetchone()
    return bool(row and row[0])


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


def _storable(text: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL: a command's output may; it is shown, not parsed.
    return None if text is None else text.replace("\x00", "\ufffd")


def claims_of_worker(conn: Conn, worker_id: str) -> list[Claim]:
    """The processing jobs claimed under `worker_id`, with their attempts."""
    with conn.cursor(row_factory=class_row(Claim)) as cur:
        return cur.execute(query("claims_of_worker"), {"worker_id": worker_id}).fetchall()


def next_run(conn: Conn) -> NextRun:
    """When the next pending job comes due, and the database's now."""
    with conn.cursor(row_factory=class_row(NextRun)) as cur:
        row = cur.execute(query("next_run_at")).fetchone()
    assert row is not None
    return row


def due_jobs(conn: Conn, limit: int) -> DueJobs:
    """How many jobs could start now, up to `limit`, and when the next comes due."""
    with conn.cursor(row_factory=class_row(DueJobs)) as cur:
        row = cur.execute(query("due_jobs"), {"limit": limit}).fetchone()
    assert row is not None
    return row


# -- many pods: the doorman and the reaper's leader (session-level advisory locks) ----


def wait_doorman(conn: Conn, timeout: float) -> bool:
    """Become the doorman, waiting in the server at most `timeout` seconds; False if not."""
    try:
        conn.execute(query("wait_doorman"), {"lock_timeout_ms": max(1, round(timeout * 1000))})
    except psycopg.errors.LockNotAvailable:
        return False
    return True


def offer_doorman(conn: Conn) -> bool:
    """Hand the doorman's lock to the pod first in line; True: none waited, it is ours still."""
    row = conn.execute(query("offer_doorman")).fetchone()
    return bool(row and row[0])


def lead_reaper(conn: Conn) -> bool:
    """Become the leader of the embedded reapers if no session is; True if it is this one."""
    row = conn.execute(query("lead_reaper")).fetchone()
    return bool(row and row[0])


# -- producers ----------------------------------------------------------------------


def create_session(
    conn: Conn, session_id: uuid.UUID, max_concurrency: int = 1, user_id: uuid.UUID | None = None
) -> None:
    """Create the session, owned by `user_id` (None: the backend's own), if it does not exist
    (an existing one is left as it is)."""
    conn.execute(
        query("create_session"),
        {"session_id": session_id, "max_concurrency": max_concurrency, "user_id": user_id},
    )


def create_sessions(conn: Conn, session_ids: Sequence[uuid.UUID]) -> None:
    """Create each session that does not exist (in one pipeline when `conn` has one open)."""
    conn.cursor().executemany(
        query("create_session"),
        [{"session_id": s, "max_concurrency": 1, "user_id": None} for s in session_ids],
    )


def session_exists(conn: Conn, session_id: uuid.UUID) -> bool:
    row = conn.execute(query("session_exists"), {"session_id": session_id}).fetchone()
    return bool(row and row[0])


def enqueue(conn: Conn, job: NewJob) -> uuid.UUID:
    """Insert one validated job of an existing session; its id, or the id of the session's
    job with the same idempotency key."""
    return submit(conn, job).job_id


def submit(conn: Conn, job: NewJob) -> Enqueued:
    """enqueue(), saying whether the job was added, or the session's job with its key
    returned (and whether that one's prompt differs from the one given)."""
    session = uuid.UUID(str(job.session_id))
    params = {
        "session_id": session,
        "prompt": job.prompt,
        "priority": job.priority,
        "max_retries": job.max_retries,
        "run_at": job.run_at,
        "delay": job.delay,
    }
    if job.idempotency_key is None:
        row = conn.execute(query("enqueue_job"), params).fetchone()
        assert row is not None
        return Enqueued(row[0], session)
    params["idempotency_key"] = job.idempotency_key
    row = conn.execute(query("enqueue_job_idempotent"), params).fetchone()
    if row is not None:
        return Enqueued(row[0], session)
    return _existing_jobs(conn, [(session, job)])[0]


def enqueue_many(
    conn: Conn, jobs: Sequence[NewJob], session_ids: Sequence[uuid.UUID]
) -> list[uuid.UUID]:
    """Insert validated jobs in one statement (job i in session i); their ids, in order.

    A job whose idempotency key its session already has (or that an earlier job of
    the batch has) is not inserted: its id is that job's.
    """
    return [done.job_id for done in submit_many(conn, jobs, session_ids)]


def submit_many(
    conn: Conn, jobs: Sequence[NewJob], session_ids: Sequence[uuid.UUID]
) -> list[Enqueued]:
    """enqueue_many(), saying of each job what submit() says."""
    if not jobs:
        return []
    # The placing trigger locks each existing session: rows go in session order
    # (stable: a session's prompts keep theirs), so that two batches never lock
    # the same sessions in different orders (a deadlock).
    order = sorted(range(len(jobs)), key=lambda i: session_ids[i])
    batch = [jobs[i] for i in order]
    sessions = [session_ids[i] for i in order]
    # Binary arrays: psycopg's text array dumper escapes every element in
    # Python, which was a third of the client's time per job.
    params: dict[str, Any] = {
        "session_ids": sessions,
        "prompts": [job.prompt for job in batch],
        "priorities": [job.priority for job in batch],
        "max_retries": [job.max_retries for job in batch],
        "run_ats": [job.run_at for job in batch],
        "delays": [float(job.delay) for job in batch],
    }
    if all(job.idempotency_key is None for job in batch):
        rows = conn.execute(query("enqueue_jobs"), params).fetchall()
        done = [Enqueued(row[0], s) for row, s in zip(rows, sessions, strict=True)]
    else:
        done = _submit_idempotent(conn, batch, sessions, params)
    in_order: list[Enqueued] = [done[0]] * len(jobs)
    for position, result in zip(order, done, strict=True):
        in_order[position] = result
    return in_order


def _submit_idempotent(
    conn: Conn, jobs: Sequence[NewJob], sessions: Sequence[uuid.UUID], params: dict[str, Any]
) -> list[Enqueued]:
    params["keys"] = [job.idempotency_key for job in jobs]
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query("enqueue_jobs_idempotent"), params).fetchall()
    # Rows come back in insertion order, the batch's: of two jobs of the batch with
    # one key, the first is the one inserted.
    inserted = {(r["session_id"], r["idempotency_key"]): r["id"] for r in rows}
    unkeyed = iter([r["id"] for r in rows if r["idempotency_key"] is None])
    kept: dict[tuple[uuid.UUID, str], str] = {}  # the prompt of each key's inserted job
    done: list[Enqueued | None] = []
    for session, job in zip(sessions, jobs, strict=True):
        key = job.idempotency_key
        if key is None:
            done.append(Enqueued(next(unkeyed), session))
        elif (session, key) not in inserted:
            done.append(None)  # the session had it before: read below
        elif (session, key) in kept:
            ignored = kept[(session, key)] != job.prompt
            done.append(Enqueued(inserted[(session, key)], session, False, ignored))
        else:
            kept[(session, key)] = job.prompt
            done.append(Enqueued(inserted[(session, key)], session))
    missing = [i for i, result in enumerate(done) if result is None]
    found = iter(_existing_jobs(conn, [(sessions[i], jobs[i]) for i in missing]))
    return [result or next(found) for result in done]


def _existing_jobs(conn: Conn, wanted: Sequence[tuple[uuid.UUID, NewJob]]) -> list[Enqueued]:
    """The jobs of these sessions with these jobs' idempotency keys, in order."""
    if not wanted:
        return []
    params = {
        "session_ids": [session for session, _ in wanted],
        "keys": [job.idempotency_key for _, job in wanted],
        "prompts": [job.prompt for _, job in wanted],
    }
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query("jobs_by_idempotency_key"), params).fetchall()
    found = {row["n"]: row for row in rows}
    if len(found) < len(wanted):
        # Its twin was inserted, then deleted (pruned) before we could read it.
        raise QueueError("a job with this idempotency key vanished meanwhile: enqueue again")
    return [
        Enqueued(found[n]["id"], session, False, found[n]["prompt_differs"])
        for n, (session, _) in enumerate(wanted, start=1)
    ]


def ids_starting(conn: Conn, kind: IdKind, low: uuid.UUID, high: uuid.UUID) -> list[uuid.UUID]:
    """At most two ids of jobs or sessions from `low` to `high` (the ids that start with
    the same hex digits): none, the one, or two when more than one does."""
    name = "job_ids_between" if kind == "job" else "session_ids_between"
    rows = conn.execute(query(name), {"low": low, "high": high}).fetchall()
    return [row[0] for row in rows]


# -- reading jobs ---------------------------------------------------------------------


def get_job(conn: Conn, job_id: uuid.UUID) -> JobRow | None:
    """The job's row, or None."""
    with conn.cursor(row_factory=class_row(JobRow)) as cur:
        return cur.execute(query("get_job"), {"job_id": job_id}).fetchone()


def retry_at(conn: Conn, job_id: uuid.UUID) -> datetime | None:
    """When the pending job will run again (its retry's backoff over), or None."""
    row = conn.execute(query("job_run_at"), {"job_id": job_id}).fetchone()
    return None if row is None else row[0]


def attempts(conn: Conn, job_id: uuid.UUID) -> list[AttemptRow]:
    """Every attempt of the job, first first."""
    with conn.cursor(row_factory=class_row(AttemptRow)) as cur:
        return cur.execute(query("job_attempts"), {"job_id": job_id}).fetchall()


def events(conn: Conn, job_id: uuid.UUID, after_id: int = 0, limit: int = 1000) -> list[Event]:
    """The job's progress events after event `after_id`, oldest first, at most `limit`."""
    with conn.cursor(row_factory=class_row(Event)) as cur:
        return cur.execute(
            query("job_events"), {"job_id": job_id, "after_id": after_id, "limit": limit}
        ).fetchall()


def list_jobs(
    conn: Conn,
    *,
    status: JobStatus | None = None,
    session_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
    limit: int = 50,
) -> list[JobSummary]:
    """The newest-submitted jobs, of one status, one session and one user's sessions when
    given."""
    params = {"status": status, "session_id": session_id, "user_id": user_id, "limit": limit}
    with conn.cursor(row_factory=class_row(JobSummary)) as cur:
        return cur.execute(query("list_jobs"), params).fetchall()


def set_user_limit(conn: Conn, user_id: uuid.UUID, max_concurrency: int | None) -> int | None:
    """An operator's limit for the user (None clears it); the limit in force after it.
    NotFoundError when no session belongs to the user."""
    try:
        row = conn.execute(
            query("set_user_limit"), {"user_id": user_id, "max_concurrency": max_concurrency}
        ).fetchone()
    except psycopg.errors.NoDataFound:
        raise NotFoundError(
            f"no session belongs to user {user_id}: a user is known by the sessions it owns "
            "(sessions create --user)"
        ) from None
    assert row is not None
    return None if row[0] is None else int(row[0])


def users_waiting(conn: Conn, limit: int = 100) -> list[UserWaiting]:
    """The users with jobs waiting for their limit, the most waiting first."""
    with conn.cursor(row_factory=class_row(UserWaiting)) as cur:
        return cur.execute(query("users_waiting"), {"limit": limit}).fetchall()


def user_list(conn: Conn, *, waiting_only: bool = False, limit: int = 1000) -> list[UserRow]:
    """The users the queue knows, those with the most jobs waiting for their limit first
    (waiting_only: only those); the sessions with no user are one row, user_id None."""
    with conn.cursor(row_factory=class_row(UserRow)) as cur:
        return cur.execute(
            query("user_list"), {"waiting_only": waiting_only, "limit": limit}
        ).fetchall()


def recently_ended(conn: Conn, status: JobStatus, limit: int) -> list[JobSummary]:
    """The jobs that ended last in `status` (one of the FINISHED)."""
    with conn.cursor(row_factory=class_row(JobSummary)) as cur:
        return cur.execute(query("recently_ended"), {"status": status, "limit": limit}).fetchall()


def running_jobs(conn: Conn, limit: int = 1000) -> list[RunningJobRow]:
    """The processing jobs, by worker: what each busy worker runs, since when."""
    with conn.cursor(row_factory=class_row(RunningJobRow)) as cur:
        return cur.execute(query("running_jobs"), {"limit": limit}).fetchall()


def ended_per_minute(conn: Conn, minutes: int) -> list[MinuteCount]:
    """Jobs completed, dead-lettered and cancelled in each of the last `minutes` minutes,
    oldest first, the current (partial) minute last."""
    with conn.cursor(row_factory=class_row(MinuteCount)) as cur:
        return cur.execute(query("ended_per_minute"), {"minutes": minutes}).fetchall()


def job_detail(conn: Conn, job_id: uuid.UUID, events_limit: int = 1000) -> JobDetail | None:
    """The job, every attempt and its first `events_limit` progress events; None when there
    is no such job."""
    job = get_job(conn, job_id)
    if job is None:
        return None
    found = events(conn, job_id, 0, events_limit + 1)
    return JobDetail(job, attempts(conn, job_id), found[:events_limit], len(found) > events_limit)


# -- cancelling ---------------------------------------------------------------------------


def cancel(conn: Conn, job_id: uuid.UUID) -> bool:
    """Cancel a job: a pending one at once, a processing one by asking its supervisor;
    False when the call changed nothing (finished, already being cancelled, no such job)."""
    row = conn.execute(query("cancel_job"), {"job_id": job_id}).fetchone()
    return bool(row and row[0])


def cancel_session(conn: Conn, session_id: uuid.UUID) -> int:
    """Cancel every unfinished job of the session; how many changed."""
    row = conn.execute(query("cancel_session"), {"session_id": session_id}).fetchone()
    return int(row[0]) if row else 0


def cancel_session_jobs(conn: Conn, session_id: uuid.UUID) -> list[tuple[uuid.UUID, bool]]:
    """cancel() on every unfinished job of the session, in one statement: (job, changed)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query("cancel_session_jobs"), {"session_id": session_id}).fetchall()
    return [(row["job_id"], bool(row["changed"])) for row in rows]


def stats(conn: Conn) -> QueueStats:
    """The plan's queue statistics."""
    with conn.cursor(row_factory=class_row(QueueStats)) as cur:
        row = cur.execute(query("queue_stats")).fetchone()
    assert row is not None
    return row


def has_unfinished_jobs(conn: Conn) -> bool:
    """Whether a job is pending (due or not) or processing."""
    row = conn.execute(query("has_unfinished_jobs")).fetchone()
    assert row is not None
    return bool(row[0])


def waiting_retries(conn: Conn) -> WaitingRetries:
    """Retries waiting for their run_at (read from pending rows only)."""
    with conn.cursor(row_factory=class_row(WaitingRetries)) as cur:
        row = cur.execute(query("waiting_retries")).fetchone()
    assert row is not None
    return row


# -- dead letters -------------------------------------------------------------------------


def list_failed(conn: Conn, limit: int) -> list[DeadLetter]:
    """The newest dead-lettered jobs."""
    with conn.cursor(row_factory=class_row(DeadLetter)) as cur:
        return cur.execute(query("list_failed"), {"limit": limit}).fetchall()


def requeue_failed(conn: Conn, job_id: uuid.UUID) -> bool:
    """Bring a dead-lettered job back to pending, retry count reset; False if it is not one."""
    row = conn.execute(query("requeue_failed"), {"job_id": job_id}).fetchone()
    return bool(row and row[0])


def retry_job(conn: Conn, job_id: uuid.UUID) -> bool:
    """Submit a failed or cancelled job again (an operator's act): pending, at the back of
    its session; False if it is neither."""
    row = conn.execute(query("retry_job"), {"job_id": job_id}).fetchone()
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


def local_statement_timeout(conn: Conn, timeout_ms: int) -> None:
    """Cancel each further statement of the current transaction after `timeout_ms` (SET
    LOCAL: nothing stays on the session, which a transaction pooler may share)."""
    conn.execute(query("local_statement_timeout"), {"ms": str(timeout_ms)})


def sweep(
    conn: Conn, reaper: str, batch_size: int, prune_batch: int, timeout_ms: int | None = None
) -> SweepBatch:
    """One bounded batch of every sweep duty (reap, prune, record the run) in one statement.

    `timeout_ms`: the statement is cancelled after that long, set in its own
    transaction (SET LOCAL), not on the session: the connection may go through a
    transaction pooler, which shares sessions and refuses startup options.
    """
    params = {"reaper": reaper, "batch_size": batch_size, "prune_batch": prune_batch}
    with conn.cursor(row_factory=dict_row) as cur:
        if timeout_ms is None:
            rows = cur.execute(query("sweep"), params).fetchall()
        else:
            with conn.transaction():
                local_statement_timeout(conn, timeout_ms)
                rows = cur.execute(query("sweep"), params).fetchall()
    *reaped, last = rows
    return SweepBatch(
        reaped=[_reaped(row) for row in reaped],
        pruned={status: int(last[f"pruned_{status}"]) for status in FINISHED},
        more=bool(last["more"]),
        waiting_retries=int(last["waiting_retries"]),
        next_retry_at=last["next_retry_at"],
        heartbeat_timeout=last["heartbeat_timeout"],
        retain_completed=last["retain_completed"],
        retain_failed=last["retain_failed"],
    )


def _reaped(row: dict[str, Any]) -> Reaped:
    """A row of the sweep's about one expired attempt (new_status NULL: passed over)."""
    status = _status(row["new_status"])
    return Reaped(row["job_id"], row["session_id"], row["will_retry"], status)


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


def set_local(conn: Conn, name: str, value: str) -> None:
    """Set a setting for the rest of the current transaction (SET LOCAL)."""
    conn.execute(query("set_local"), {"name": name, "value": value})


def create_migrations_table(conn: Conn) -> None:
    conn.execute(query("create_migrations_table"))


def lock_migrations(conn: Conn) -> None:
    """Take the lock that one migration run holds until its transaction ends."""
    conn.execute(query("lock_migrations"))


def migrations_lock_holder(conn: Conn) -> LockHolder | None:
    """The session that holds a lock on queue_migrations in the runner's way, if any."""
    with conn.cursor(row_factory=class_row(LockHolder)) as cur:
        return cur.execute(query("migrations_lock_holder")).fetchone()


def migrations_table_exists(conn: Conn) -> bool:
    row = conn.execute(query("migrations_table_exists")).fetchone()
    return bool(row and row[0])


def applied_migrations(conn: Conn) -> list[AppliedMigration]:
    """The migrations recorded as applied, in version order."""
    with conn.cursor(row_factory=class_row(AppliedMigration)) as cur:
        return cur.execute(query("applied_migrations")).fetchall()


def apply_migration(conn: Conn, version: int, name: str, checksum: str, script: str) -> None:
    """Run a migration file and record it, in the caller's transaction."""
    conn.execute(script.encode())  # a file of several statements, shipped with the package
    conn.execute(
        query("record_migration"), {"version": version, "name": name, "checksum": checksum}
    )


def public_schema_writers(conn: Conn) -> list[str]:
    """Roles but superusers and the current role's own that may create objects in public
    ("PUBLIC": every role may)."""
    return [name for (name,) in conn.execute(query("public_schema_writers")).fetchall()]


def planted_objects(conn: Conn) -> list[PlantedObject]:
    """Functions, operators and the queue's tables in public that a role owns which is
    neither a superuser nor able to act as the current role."""
    with conn.cursor(row_factory=class_row(PlantedObject)) as cur:
        return cur.execute(query("planted_objects")).fetchall()


def current_role(conn: Conn) -> str:
    row = conn.execute(query("current_role")).fetchone()
    assert row is not None
    return str(row[0])


def create_repeatables_table(conn: Conn) -> None:
    conn.execute(query("create_repeatables_table"))


def applied_repeatables(conn: Conn) -> dict[str, str]:
    """name -> checksum of the repeatable files as last applied."""
    rows = conn.execute(query("applied_repeatables")).fetchall()
    return dict(rows)


def supabase_shape(conn: Conn) -> bool:
    """Whether the database has Supabase's roles anon and authenticated and auth.uid()."""
    row = conn.execute(query("supabase_shape")).fetchone()
    return bool(row and row[0])


def row_security_shape(conn: Conn) -> bool | None:
    """The supabase_shape() sql/row_security.sql was last applied for; None: not known."""
    row = conn.execute(query("row_security_shape")).fetchone()
    return None if row is None or row[0] is None else bool(row[0])


def record_row_security_shape(conn: Conn, supabase: bool) -> None:
    conn.execute(query("record_row_security_shape"), {"supabase": supabase})


def repeatables_readable(conn: Conn) -> bool:
    """Whether this role may read queue_repeatables (the owner and operators)."""
    row = conn.execute(query("repeatables_readable")).fetchone()
    return bool(row and row[0])


def defer_body_checks(conn: Conn) -> None:
    """Until check_bodies(), this transaction's CREATE FUNCTIONs leave their bodies unchecked."""
    conn.execute(query("defer_body_checks"))


def apply_repeatable(conn: Conn, name: str, checksum: str, script: str) -> None:
    """Run a function file (or the privileges) and record its checksum, in the caller's
    transaction."""
    conn.execute(script.encode())  # a file of several statements, shipped with the package
    conn.execute(query("record_repeatable"), {"name": name, "checksum": checksum})


def forget_repeatables(conn: Conn, shipped: Sequence[str]) -> None:
    """Drop the records of repeatable files other than `shipped`."""
    conn.execute(query("forget_repeatables"), {"shipped": list(shipped)})


def check_bodies(conn: Conn) -> None:
    """From here on in this transaction, CREATE FUNCTION checks bodies again."""
    conn.execute(query("check_bodies"))


def functions_named(conn: Conn, names: Sequence[str]) -> list[SqlFunction]:
    """Every function of the queue's schema with one of these names."""
    with conn.cursor(row_factory=class_row(SqlFunction)) as cur:
        return cur.execute(query("functions_named"), {"names": list(names)}).fetchall()


def check_function(conn: Conn, oid: int) -> None:
    """Run the function's language validator: raises the error CREATE FUNCTION would have."""
    conn.execute(query("check_function"), {"oid": oid})
