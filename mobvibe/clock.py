"""The one place Python reads time. Queue decisions use the database clock (queue_now());
Python's clock only paces local timers: sleeps, deadlines, self-fencing."""

from __future__ import annotations

import time

monotonic = time.monotonic
wall = time.time
sleep = time.sleep
