"""JobQueue: the Python client of the queue's SQL interface."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import pq
from psycopg_pool import ConnectionPool

from mobvibe.errors import DatabaseUnavailableError, InvalidJobError
from mobvibe.sql import db, store
from mobvibe.sql.jobs import MAX_RETRIES_DEFAULT, PRIORITY_DEFAULT, Job, NewJob, parse_uuid
from mobvibe.sql.notify import CHANNELS, Listener, Notification
from mobvibe.sql.store import AttemptRow, DeadLetter, Enqueued, Event, JobRow, QueueStats
from mobvibe.vocabulary import EndReason

MAX_CONCURRENCY_MIN, MAX_CONCURRENCY_MAX = 1, 100

Conn = psycopg.Connection[Any]


class JobQueue:
    """Enqueue, claim, heartbeat, complete, fail and inspect jobs.

    `url` None: DATABASE_URL, or else the embedded PostgreSQL of a local run (started
    if it is not running, as the commands start it). Each call borrows a connection
    from a small pool; pass `conn=` to run an enqueue inside the caller's own
    transaction instead. `prepare=False` when `url` is a transaction pooler that keeps
    no prepared statements (PgBouncer before 1.21, or with max_prepared_statements 0):
    a statement sent often is otherwise prepared on its fifth use, on one server
    connection of the pooler's.
    """

    def __init__(self, url: str | None = None, *, max_size: int = 4, prepare: bool = True) -> None:
        self.url = (
            db.validate_url(url)
            if url is not None
            else db.resolve_url(os.environ.get("DATABASE_URL"))  # as the commands find it
        )
        self._pool = ConnectionPool(
            self.url,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=10,
            configure=db.tolerate_extremes,
            kwargs={
                "autocommit": True,
                "connect_timeout": db.CONNECT_TIMEOUT_DEFAULT,
                "application_name": "mobvibe-client",
                **db.pooler_safe(not prepare),
            },
        )

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pool's connections."""
        self._pool.close()

    @contextlib.contextmanager
    def connection(self, conn: Conn | None = None) -> Iterator[Conn]:
        """`conn` itself, or a pooled connection; database errors become QueueErrors."""
        try:
            if conn is not None:
                yield conn
                return
            if self._pool.closed:
                db.connect(self.url).close()  # fails fast, in one line, when unreachable
                self._pool.open(wait=True, timeout=10)
            with self._pool.connection() as pooled:
                yield pooled
        except pgerrors.ForeignKeyViolation:
            raise InvalidJobError(
                "session does not exist: create the session first, or "
                "enqueue without a session id to start a new one"
            ) from None
        except pgerrors.CheckViolation as exc:
            name = exc.diag.constraint_name or "a check"
            if name == "coding_jobs_run_at_check":  # the message says which window
                raise InvalidJobError(db.first_line(exc)) from None
            raise InvalidJobError(f"the database refused the job ({name})") from None
        except (psycopg.OperationalError, psycopg.errors.ConnectionTimeout) as exc:
            raise DatabaseUnavailableError(f"database unavailable: {db.first_line(exc)}") from None
        except Exception as exc:
            if type(exc).__name__ == "PoolTimeout":
                raise DatabaseUnavailableError(
                    "database unavailable: no connection within 10 s"
                ) from None
            raise

    # -- producers -----------------------------------------------------------

    def enqueue(
        self,
        prompt: str,
        *,
        session_id: uuid.UUID | str | None = None,
        priority: int = PRIORITY_DEFAULT,
        max_retries: int = MAX_RETRIES_DEFAULT,
        run_at: Any = None,
        delay: float = 0.0,
        idempotency_key: str | None = None,
        conn: Conn | None = None,
    ) -> uuid.UUID:
        """Add one job and return its id; with `conn`, inside the caller's transaction.

        A repeated `idempotency_key` in the same session (a double tap) adds nothing and
        returns the first job's id (submit() says whether its prompt was another)."""
        job = NewJob(prompt, session_id, priority, max_retries, run_at, delay, idempotency_key)
        return self.submit(job, conn=conn).job_id

    def submit(self, job: NewJob, *, conn: Conn | None = None) -> Enqueued:
        """Add one job: its id and session, and whether it was added (False: the session's
        job with its idempotency key, prompt_ignored when that one's prompt differs)."""
        checked = job.validated()
        if checked.session_id is None or conn is not None:
            # A new session too (two statements, one transaction), or the caller's
            # connection (a savepoint, so that a refused job leaves its work alone).
            return self.submit_many([checked], conn=conn)[0]
        # One statement on our own connection, atomic by itself.
        with self.connection(conn) as c:
            return store.submit(c, checked)

    def enqueue_many(self, jobs: Iterable[NewJob], *, conn: Conn | None = None) -> list[uuid.UUID]:
        """Add many jobs in one round trip, all or none; return their ids in order (for a
        repeated idempotency key, the existing job's id)."""
        return [done.job_id for done in self.submit_many(jobs, conn=conn)]

    def submit_many(self, jobs: Iterable[NewJob], *, conn: Conn | None = None) -> list[Enqueued]:
        """enqueue_many(), saying of each job what submit() says."""
        checked = [job.validated() for job in jobs]
        if not checked:
            return []
        new_sessions = [uuid.uuid4() if job.session_id is None else None for job in checked]
        session_ids = [
            new or uuid.UUID(str(job.session_id))
            for new, job in zip(new_sessions, checked, strict=True)
        ]
        created = [s for s in new_sessions if s is not None]
        with self.connection(conn) as c:
            if not created and conn is None:  # one INSERT on our connection: atomic by itself
                return store.submit_many(c, checked, session_ids)
            if not c.autocommit and c.info.transaction_status == pq.TransactionStatus.IDLE:
                # transaction() on an idle connection would BEGIN and COMMIT, committing
                # the caller's transaction early; open it first, so that ours is a savepoint.
                c.execute("SELECT 1")
            with c.transaction(), c.pipeline():
                if created:
                    store.create_sessions(c, created)
                return store.submit_many(c, checked, session_ids)

    def create_session(
        self,
        session_id: uuid.UUID | str | None = None,
        max_concurrency: int = 1,
        user_id: uuid.UUID | str | None = None,
    ) -> uuid.UUID:
        """Create a coding session (the table belongs to another phase) and return its id.

        `max_concurrency`: how many of its prompts may run at once (1 to 100), in order.
        `user_id`: the phone user who owns it (None: the backend's own session)."""
        sid = uuid.uuid4() if session_id is None else parse_uuid(session_id, "session id")
        owner = None if user_id is None else parse_uuid(user_id, "user id")
        if (
            isinstance(max_concurrency, bool)
            or not isinstance(max_concurrency, int)
            or not MAX_CONCURRENCY_MIN <= max_concurrency <= MAX_CONCURRENCY_MAX
        ):
            raise InvalidJobError(
                f"max_concurrency must be an integer from {MAX_CONCURRENCY_MIN} to "
                f"{MAX_CONCURRENCY_MAX}, got {max_concurrency!r}"
            )
        with self.connection() as c:
            store.create_session(c, sid, max_concurrency, owner)
        return sid

    def cancel(self, job_id: uuid.UUID | str) -> bool:
        """Cancel a job: a pending one at once, a running one by telling its supervisor;
        False when nothing changed (finished, already being cancelled, unknown)."""
        job = parse_uuid(job_id)
        with self.connection() as c:
            return store.cancel(c, job)

    def cancel_session(self, session_id: uuid.UUID | str) -> int:
        """Cancel every unfinished job of the session; how many changed."""
        session = parse_uuid(session_id, "session id")
        with self.connection() as c:
            return store.cancel_session(c, session)

    def attempts(self, job_id: uuid.UUID | str) -> list[AttemptRow]:
        """Every attempt of the job, first first."""
        job = parse_uuid(job_id)
        with self.connection() as c:
            return store.attempts(c, job)

    def events(self, job_id: uuid.UUID | str, after_id: int = 0) -> list[Event]:
        """The job's progress events after `after_id`, oldest first."""
        job = parse_uuid(job_id)
        with self.connection() as c:
            return store.events(c, job, after_id)

    # -- workers -------------------------------------------------------------

    def claim(self, worker_id: str | None = None) -> Job | None:
        """Claim the due job of highest priority, oldest first; None when none is due."""
        with self.connection() as c:
            return store.claim(c, worker_id)

    def heartbeat(self, job_id: uuid.UUID | str, lease_token: uuid.UUID | str) -> bool:
        """Renew the lease; False means the lease is lost and the job is no longer ours."""
        job, lease = parse_uuid(job_id), parse_uuid(lease_token, "lease token")
        with self.connection() as c:
            return store.heartbeat(c, job, lease)

    def complete(self, job_id: uuid.UUID | str, lease_token: uuid.UUID | str | None = None) -> bool:
        """Complete the job; False when nothing changed (stale lease, already finished).

        Without a lease it is the plan's operator call (mobvibe_operator only)."""
        job, lease = parse_uuid(job_id), _lease(lease_token)
        with self.connection() as c:
            return store.complete(c, job, lease)

    def fail(
        self,
        job_id: uuid.UUID | str,
        error: str,
        lease_token: uuid.UUID | str | None = None,
        reason: EndReason = EndReason.ERROR,
    ) -> bool | None:
        """Record a failed attempt: True will retry, False dead-lettered, None nothing changed.

        Without a lease it is the plan's operator call (mobvibe_operator only; reason
        'error')."""
        job, lease = parse_uuid(job_id), _lease(lease_token)
        with self.connection() as c:
            return store.fail(c, job, error, lease, reason)

    def release(
        self,
        job_id: uuid.UUID | str,
        lease_token: uuid.UUID | str,
        reason: str = "released at shutdown",
    ) -> bool:
        """Give an unfinished attempt back without counting it; False if the lease is lost."""
        job, lease = parse_uuid(job_id), parse_uuid(lease_token, "lease token")
        with self.connection() as c:
            return store.release(c, job, lease, reason)

    # -- operators -----------------------------------------------------------

    def stats(self) -> QueueStats:
        """The plan's queue statistics."""
        with self.connection() as c:
            return store.stats(c)

    def requeue_failed(self, job_id: uuid.UUID | str) -> bool:
        """Bring a dead-lettered job back to pending with its retry count reset."""
        job = parse_uuid(job_id)  # a bad id is the caller's error, checked first
        with self.connection() as c:
            return store.requeue_failed(c, job)

    def get(self, job_id: uuid.UUID | str) -> JobRow | None:
        """The job's row, or None."""
        job = parse_uuid(job_id)
        with self.connection() as c:
            return store.get_job(c, job)

    def failed_jobs(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead-lettered jobs."""
        with self.connection() as c:
            return store.list_failed(c, limit)

    def listen(self, channels: Sequence[str] = CHANNELS) -> Listener:
        """A listener that LISTENs on `channels` from now on: open it before an enqueue,
        then iterate() it, and no news of that job is missed (`with` closes it)."""
        return Listener(self.url, channels).start()

    def notifications(
        self,
        channels: Sequence[str] = CHANNELS,
        *,
        timeout: float | None = None,
    ) -> Iterator[Notification]:
        """Yield notifications from `channels`, reconnecting after a dropped connection.

        It LISTENs from its first iteration on: to miss nothing that an enqueue made
        before the loop sends, use listen()."""
        with Listener(self.url, channels) as listener:
            yield from listener.iterate(timeout=timeout)


def _lease(lease_token: uuid.UUID | str | None) -> uuid.UUID | None:
    return None if lease_token is None else parse_uuid(lease_token, "lease token")
