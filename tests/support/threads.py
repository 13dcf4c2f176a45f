"""Calls run at the same moment, each on a thread of its own: the races a test provokes."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg


@contextlib.contextmanager
def own_connections(url: str, count: int) -> Iterator[list[psycopg.Connection[Any]]]:
    """`count` autocommit connections, one for each call of a race, closed at the end."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(psycopg.connect(url, autocommit=True)) for _ in range(count)]


def run_together(*calls: Callable[[], Any], timeout: float = 30.0) -> list[Any]:
    """Run each call on a thread of its own, all released at once by a barrier; their results.

    Each call must use a connection of its own. The first exception of any call is re-raised.
    """
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout)
            results[index] = call()
        except BaseException as error:  # noqa: BLE001 - handed to the test thread below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i, c), daemon=True) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), f"a concurrent call hung for {timeout} s"
    if errors:
        raise errors[0]
    return results
