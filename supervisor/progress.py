"""Progress lines of a running attempt, on their way to coding_job_events, and its output so
far, on its way to coding_jobs.output.

A command writes lines to descriptor 3; a Python handler calls progress().
Each line becomes an event: a JSON object as it is (its "kind", when it is a
short string, names the event), anything else as {"text": line}. A chatty
command is rate-limited by a token bucket (RATE events a second, bursts of
BURST); the lines over the limit are counted, never queued, and reported as
one "dropped" event, so memory stays bounded and the command never waits.

What a command prints to stdout is kept with its job as it grows (LiveOutput):
at once the first time, then at most once every OUTPUT_EVERY seconds and only
when it changed, each time its end rewritten in one UPDATE of the job's row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mobvibe import clock

RATE = 20.0  # events a second, sustained
BURST = 100
LINE_MAX = 16 * 1024  # bytes of one line kept (the rest is cut)
FLUSH_EVERY = 0.2  # seconds between writes of a burst of events
KIND_MAX = 64
OUTPUT_EVERY = 3.0  # seconds between two writes of a running command's output

Event = tuple[str, dict[str, Any]]


def parse(line: str) -> Event:
    """(kind, payload) of one progress line."""
    text = line.rstrip("\r\n")
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict):
        kind = value.get("kind")
        ok = isinstance(kind, str) and 0 < len(kind) <= KIND_MAX
        return (kind if ok else "progress"), value  # type: ignore[return-value]
    return "text", {"text": text}


class Progress:
    """The events of one attempt not yet written, within the rate limit."""

    def __init__(self) -> None:
        self.pending: list[Event] = []
        self.dropped = 0
        self.written = 0
        self._tokens = float(BURST)
        self._at = clock.monotonic()
        self._last_flush = 0.0

    def add(self, line: str | bytes | dict[str, Any]) -> None:
        """Record one line (or a handler's dict), unless over the rate limit."""
        now = clock.monotonic()
        self._tokens = min(float(BURST), self._tokens + (now - self._at) * RATE)
        self._at = now
        if self._tokens < 1:
            self.dropped += 1
            return
        self._tokens -= 1
        if isinstance(line, dict):
            kind = line.get("kind")
            ok = isinstance(kind, str) and 0 < len(kind) <= KIND_MAX
            self.pending.append(((kind if ok else "progress"), line))  # type: ignore[arg-type]
            return
        if isinstance(line, bytes):
            line = line[:LINE_MAX].decode("utf-8", "replace")
        self.pending.append(parse(line[:LINE_MAX]))

    def due(self) -> bool:
        """Whether a write is due: events wait at most FLUSH_EVERY, and drops are reported."""
        waiting = bool(self.pending) or bool(self.dropped)
        return waiting and clock.monotonic() - self._last_flush >= FLUSH_EVERY

    def take(self) -> list[Event]:
        """The events to write now (and the report of dropped lines), emptied."""
        events, self.pending = self.pending, []
        if self.dropped:
            events.append(
                (
                    "dropped",
                    {"lines": self.dropped, "limit": f"{RATE:g} a second, bursts of {BURST}"},
                )
            )
            self.dropped = 0
        self._last_flush = clock.monotonic()
        self.written += len(events)
        return events


class LiveOutput:
    """When a running command's output is written again: at once the first time, then when
    it grew and `every` seconds have passed since the last write."""

    def __init__(self, every: float = OUTPUT_EVERY, now: Callable[[], float] = clock.monotonic):
        self.every, self.now = every, now
        self.written = 0  # bytes of output seen at the last write
        self._at: float | None = None

    def due(self, seen: int) -> bool:
        """Whether output `seen` bytes long (all it ever received) is to be written now."""
        if seen == self.written:
            return False
        return self._at is None or self.now() - self._at >= self.every

    def wrote(self, seen: int) -> None:
        """The output, `seen` bytes long, was written."""
        self.written, self._at = seen, self.now()
