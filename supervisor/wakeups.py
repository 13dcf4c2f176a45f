"""How the hub wakes one idle worker: a pipe per worker index, made before any fork.

A worker waits on the read end of its pipe (and its signal pipe); the hub
writes one byte to the pipe of the worker it picks. No database connection of
a worker listens: the pod's one LISTEN is the hub's, while it is the doorman.
One more pipe goes the other way: a worker that starts to wait tells the hub,
which then stands in line to be the doorman (a pod with no idle worker does not).
"""

from __future__ import annotations

import contextlib
import os


class Wakeups:
    """One pipe per worker index; the parent keeps them across worker restarts."""

    def __init__(self, count: int) -> None:
        self._pipes = [os.pipe() for _ in range(count)]
        self._hub = os.pipe()
        for read, write in [*self._pipes, self._hub]:
            os.set_blocking(read, False)
            os.set_blocking(write, False)

    def fd(self, index: int) -> int:
        """What worker `index` waits on."""
        return self._pipes[index][0]

    def wake(self, index: int) -> None:
        """Wake worker `index` (a full pipe means it is awake already)."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._pipes[index][1], b"!")

    def clear(self, index: int) -> None:
        """Worker `index` is awake: forget the wake-ups it was sent."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._pipes[index][0], 512):
                pass

    def hub_fd(self) -> int:
        """What the hub waits on, beside the database: a worker went idle."""
        return self._hub[0]

    def idle_to_hub(self) -> None:
        """Tell the hub that a worker now waits for work."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._hub[1], b"!")

    def clear_hub(self) -> None:
        """The hub has looked at its workers: forget what they told it."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._hub[0], 512):
                pass
