"""LISTEN for the queue's notifications on a dedicated connection that comes back after a drop."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from mobvibe import clock
from mobvibe.errors import DatabaseUnavailableError
from mobvibe.sql import db
from mobvibe.vocabulary import Channel

log = logging.getLogger(__name__)
# new_job and job_status_changed: the plan's; job_progress: an event of a running
# attempt ({job_id, session_id, event_id, kind}); job_cancel: a cancel asked of a
# running attempt ({job_id, session_id}), for the supervisor holding it.
CHANNELS = tuple(Channel)
RECONNECT_DELAY_MAX = 5.0


@dataclass(frozen=True)
class Notification:
    """One notification; `payload` is the plan's JSON object, decoded."""

    channel: Channel
    payload: dict[str, Any]
    pid: int


# The channel names are identifiers and cannot be bound as parameters, so the
# LISTEN statements are composed once, from this fixed set only.
_LISTEN = {name: sql.SQL("LISTEN {}").format(sql.Identifier(name)) for name in CHANNELS}


def listen(conn: psycopg.Connection[Any], channels: Sequence[Channel]) -> None:
    """LISTEN on each of `channels` on `conn`."""
    for channel in channels:
        conn.execute(_LISTEN[channel])


def unlisten(conn: psycopg.Connection[Any]) -> None:
    """Stop listening on every channel on `conn`."""
    conn.execute(sql.SQL("UNLISTEN *"))


class Listener:
    """A LISTEN connection that reconnects; iterate() yields Notifications forever."""

    def __init__(self, url: str, channels: Sequence[str] = CHANNELS) -> None:
        unknown = set(channels) - set(CHANNELS)
        if unknown:
            known = [channel.value for channel in CHANNELS]
            raise ValueError(f"unknown channels {sorted(unknown)}; known: {known}")
        self.url = url
        self.channels = tuple(Channel(channel) for channel in channels)
        self.conn: psycopg.Connection[Any] | None = None
        self.reconnects = 0

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Listener:
        """Connect and LISTEN now (an unreachable database raises at once): whatever is
        sent from here on is iterated, the news of an enqueue made next included."""
        self.close()
        self.conn = db.connect(self.url, application_name="mobvibe-listener")
        listen(self.conn, self.channels)
        return self

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _connection(self) -> psycopg.Connection[Any]:
        delay = 0.1
        while self.conn is None or self.conn.closed:
            try:
                self.conn = db.connect(self.url, application_name="mobvibe-listener")
                listen(self.conn, self.channels)
            except (DatabaseUnavailableError, psycopg.OperationalError) as exc:
                self.conn = None
                log.warning(
                    "listener cannot connect",
                    extra={"event": "listener_reconnect_failed", "error": str(exc)},
                )
                clock.sleep(delay)
                delay = min(delay * 2, RECONNECT_DELAY_MAX)
        return self.conn

    def iterate(self, *, timeout: float | None = None, ping: float = 5.0) -> Iterator[Notification]:
        """Yield notifications; stop after `timeout` seconds without one (None: never)."""
        idle_since = clock.monotonic()
        while timeout is None or clock.monotonic() - idle_since < timeout:
            conn = self._connection()
            wait = (
                ping
                if timeout is None
                else min(ping, max(0.0, timeout - (clock.monotonic() - idle_since)))
            )
            try:
                for note in conn.notifies(timeout=wait):
                    idle_since = clock.monotonic()
                    yield Notification(Channel(note.channel), _decode(note.payload), note.pid)
                conn.execute("SELECT 1")  # a real round trip: finds a dead connection
            except psycopg.OperationalError:
                log.warning("listener connection lost", extra={"event": "listener_lost"})
                self.close()
                self.reconnects += 1


def _decode(payload: str) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except ValueError:
        return {"raw": payload}
    return value if isinstance(value, dict) else {"raw": value}
