"""JobQueue: the Python client of the queue's SQL interface."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import pq
from psycopg_pool import ConnectionPool

from supervisor import db
from supervisor.errors import DatabaseUnavailableError, InvalidJobError
from supervisor.jobs import MAX_RETRIES_DEFAULT, PRIORITY_DEFAULT, Job, NewJob, parse_uuid
from supervisor.sqlfiles import query

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class QueueStats:
    """The plan's queue statistics, plus the retries waiting for their run_at."""

    pending_count: int
    processing_count: int
    completed_count: int
    failed_count: int
    oldest_pending_age: timedelta | None
    waiting_retry_count: int = 0
    next_run_at: Any = None

    def as_dict(self) -> dict[str, Any]:
        age = self.oldest_pending_age
        return {
            "pending_count": self.pending_count, "processing_count": self.processing_count,
            "completed_count": self.completed_count, "failed_count": self.failed_count,
            "oldest_pending_age_seconds": None if age is None else age.total_seconds(),
            "waiting_retry_count": self.waiting_retry_count,
            "next_run_at": None if self.next_run_at is None else self.next_run_at.isoformat(),
        }


class JobQueue:
    """Enqueue, claim, heartbeat, complete, fail and inspect jobs.

    Each call borrows a connection from a small pool; pass `conn=` to run an
    enqueue inside the caller's own transaction instead.
    """

    def __init__(self, url: str, *, max_size: int = 4) -> None:
        self.url = db.validate_url(url)
        self._pool = ConnectionPool(
            self.url, min_size=1, max_size=max_size, open=False, timeout=10,
            kwargs={"autocommit": True, "connect_timeout": db.CONNECT_TIMEOUT_DEFAULT,
                    "application_name": "mobvibe-client"})

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
            raise InvalidJobError("session does not exist: create the session first, or "
                                  "enqueue without a session id to start a new one") from None
        except pgerrors.CheckViolation as exc:
            name = exc.diag.constraint_name or "a check"
            raise InvalidJobError(f"the database refused the job ({name})") from None
        except (psycopg.OperationalError, psycopg.errors.ConnectionTimeout) as exc:
            raise DatabaseUnavailableError(f"database unavailable: {db.first_line(exc)}") \
                from None
        except Exception as exc:
            if type(exc).__name__ == "PoolTimeout":
                raise DatabaseUnavailableError("database unavailable: no connection within "
                                               "10 s") from None
            raise

    # -- producers -----------------------------------------------------------

    def enqueue(self, prompt: str, *, session_id: uuid.UUID | str | None = None,
                priority: int = PRIORITY_DEFAULT, max_retries: int = MAX_RETRIES_DEFAULT,
                run_at: Any = None, delay: float = 0.0, conn: Conn | None = None) -> uuid.UUID:
        """Add one job and return its id; with `conn`, inside the caller's transaction."""
        job = NewJob(prompt, session_id, priority, max_retries, run_at, delay).validated()
        if job.session_id is None or conn is not None:
            # A new session too (two statements, one transaction), or the caller's
            # connection (a savepoint, so that a refused job leaves its work alone).
            return self.enqueue_many([job], conn=conn)[0]
        # One prepared statement on our own connection, atomic by itself.
        params = {"session_id": job.session_id, "prompt": job.prompt, "priority": job.priority,
                  "max_retries": job.max_retries, "run_at": job.run_at, "delay": job.delay}
        with self.connection(conn) as c:
            row = c.execute(query("enqueue_job"), params, prepare=True).fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]

    def enqueue_many(self, jobs: Iterable[NewJob], *, conn: Conn | None = None) -> list[uuid.UUID]:
        """Add many jobs in one round trip, all or none; return their ids in order."""
        checked = [job.validated() for job in jobs]
        if not checked:
            return []
        new_sessions = [uuid.uuid4() if job.session_id is None else None for job in checked]
        # Binary arrays: psycopg's text array dumper escapes every element in
        # Python, which was a third of the client's time per job.
        params = {
            "session_ids": [new or job.session_id for new, job in zip(new_sessions, checked)],
            "prompts": [job.prompt for job in checked],
            "priorities": [job.priority for job in checked],
            "max_retries": [job.max_retries for job in checked],
            "run_ats": [job.run_at for job in checked],
            "delays": [float(job.delay) for job in checked],
        }
        created = [s for s in new_sessions if s is not None]
        with self.connection(conn) as c:
            if not created and conn is None:  # one INSERT on our connection: atomic by itself
                cur = c.execute(query("enqueue_jobs"), params)
                return [row[0] for row in cur.fetchall()]
            if not c.autocommit and c.info.transaction_status == pq.TransactionStatus.IDLE:
                # transaction() on an idle connection would BEGIN and COMMIT, committing
                # the caller's transaction early; open it first, so that ours is a savepoint.
                c.execute("SELECT 1")
            with c.transaction(), c.pipeline():
                if created:
                    c.cursor().executemany(query("create_session"),
                                           [{"session_id": s} for s in created])
                cur = c.execute(query("enqueue_jobs"), params)
                return [row[0] for row in cur.fetchall()]

    def create_session(self, session_id: uuid.UUID | str | None = None) -> uuid.UUID:
        """Create a coding session (the table belongs to another phase) and return its id."""
        sid = uuid.uuid4() if session_id is None else parse_uuid(session_id, "session id")
        with self.connection() as c:
            c.execute(query("create_session"), {"session_id": sid})
        return sid

    # -- workers -------------------------------------------------------------

    def claim(self, worker_id: str | None = None) -> Job | None:
        """Claim the due job of highest priority, oldest first; None when none is due."""
        with self.connection() as c:
            row = c.execute(query("claim_next_job"), {"worker_id": worker_id}).fetchone()
        return None if row is None else Job.from_row(row)

    def heartbeat(self, job_id: uuid.UUID | str, lease_token: uuid.UUID | str) -> bool:
        """Renew the lease; False means the lease is lost and the job is no longer ours."""
        return self._scalar("heartbeat", job_id, lease_token) is True

    def complete(self, job_id: uuid.UUID | str, lease_token: uuid.UUID | str | None = None) -> bool:
        """Complete the job; False when nothing changed (stale lease, already finished)."""
        return self._scalar("complete_job", job_id, lease_token) is True

    def fail(self, job_id: uuid.UUID | str, error: str, lease_token: uuid.UUID | str | None = None,
             reason: str = "error") -> bool | None:
        """Record a failed attempt: True will retry, False dead-lettered, None nothing changed."""
        result = self._scalar("fail_job", job_id, lease_token, error=error, reason=reason)
        return None if result is None else bool(result)

    def release(self, job_id: uuid.UUID | str, lease_token: uuid.UUID | str,
                reason: str = "released at shutdown") -> bool:
        """Give an unfinished attempt back without counting it; False if the lease is lost."""
        return self._scalar("release_job", job_id, lease_token, reason=reason) is True

    def _scalar(self, name: str, job_id: object, lease_token: object, **extra: Any) -> Any:
        params = {"job_id": parse_uuid(job_id),
                  "lease_token": None if lease_token is None else parse_uuid(lease_token,
                                                                             "lease token"),
                  **extra}
        with self.connection() as c:
            row = c.execute(query(name), params).fetchone()
        return None if row is None else row[0]

    # -- operators -----------------------------------------------------------

    def stats(self) -> QueueStats:
        """The plan's queue statistics."""
        with self.connection() as c:
            row = c.execute(query("queue_stats")).fetchone()
        assert row is not None
        return QueueStats(*row)

    def requeue_failed(self, job_id: uuid.UUID | str) -> bool:
        """Bring a dead-lettered job back to pending with its retry count reset."""
        params = {"job_id": parse_uuid(job_id)}  # a bad id is the caller's error, checked first
        with self.connection() as c:
            row = c.execute(query("requeue_failed"), params).fetchone()
        return bool(row and row[0])

    def get(self, job_id: uuid.UUID | str) -> dict[str, Any] | None:
        """The job's row as a dict, or None."""
        params = {"job_id": parse_uuid(job_id)}
        with self.connection() as c:
            cur = c.execute(query("get_job"), params)
            row = cur.fetchone()
            names = [d.name for d in cur.description or ()]
        return None if row is None else dict(zip(names, row))

    def failed_jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead-lettered jobs."""
        with self.connection() as c:
            cur = c.execute(query("list_failed"), {"limit": limit})
            names = [d.name for d in cur.description or ()]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def notifications(self, channels: Sequence[str] = ("new_job", "job_status_changed"),
                      *, timeout: float | None = None) -> Iterator[Any]:
        """Yield notifications from `channels`, reconnecting after a dropped connection."""
        from supervisor.notify import Listener  # noqa: PLC0415 - avoids an import cycle

        with Listener(self.url, channels) as listener:
            yield from listener.iterate(timeout=timeout)
