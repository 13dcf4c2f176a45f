"""The one place Python reads time. Queue decisions use the database clock (queue_now());
Python's clock only paces local timers (sleeps, deadlines, self-fencing) and says when a
page or a line of output was written."""

from __future__ import annotations

import time
from datetime import UTC, datetime

monotonic = time.monotonic
wall = time.time
sleep = time.sleep


def now() -> datetime:
    """The wall clock as an aware datetime in UTC."""
    return datetime.fromtimestamp(wall(), UTC)
