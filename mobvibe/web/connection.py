"""The one database connection a process that serves pages holds, shared by its threads."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import psycopg

from mobvibe.sql import db

STATEMENT_TIMEOUT_MS = 2000  # a page waits no longer for the database
Conn = psycopg.Connection[Any]


class ConnectionBusyError(Exception):
    """Another request holds the one connection."""


class OneConnection:
    """One connection shared by an HTTP server's threads, one user at a time: a process
    that serves pages holds a single connection, however many requests arrive. Opened at
    first use, and again after it broke."""

    def __init__(self, url: str, application_name: str, *, pooled: bool = False) -> None:
        self.url = url
        self.application_name = application_name
        self.pooled = pooled  # behind PgBouncer in transaction mode: no session state
        self._conn: Conn | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def use(self, wait: float | None = None) -> Iterator[Conn]:
        """The connection, for this thread alone until the block ends; ConnectionBusyError when
        another thread kept it for longer than `wait` seconds (None: wait as long)."""
        if not self._lock.acquire(timeout=-1 if wait is None else wait):
            raise ConnectionBusyError("the connection is busy")
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._open()
            yield self._conn
        finally:
            if self._conn is not None and self._conn.broken:
                self._conn.close()
                self._conn = None
            self._lock.release()

    def _open(self) -> Conn:
        # A pooler keeps no session setting: the timeout is set where it is not one.
        timeout: dict[str, Any] = (
            {} if self.pooled else {"options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"}
        )
        return db.connect(
            self.url,
            application_name=self.application_name,
            pooled=self.pooled,
            connect_timeout=2,
            **timeout,
        )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
