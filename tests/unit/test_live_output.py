"""The output of a running command is written at a bounded rate: at once the first time,
then at most once every OUTPUT_EVERY seconds, and only when it changed."""

from __future__ import annotations

from mobvibe.supervisor.progress import OUTPUT_EVERY, LiveOutput


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_output_is_written_at_once_then_at_most_every_few_seconds_when_it_grew() -> None:
    clock = Clock()
    live = LiveOutput(now=clock)
    assert not live.due(0)  # nothing printed yet
    assert live.due(10)
    live.wrote(10)
    assert not live.due(10)
    clock.t += OUTPUT_EVERY - 0.1
    assert not live.due(500)  # grown, but too soon
    clock.t += 0.1
    assert live.due(500)
    live.wrote(500)
    clock.t += 60
    assert not live.due(500)  # unchanged: nothing to write, however long


def test_a_chatty_command_is_written_a_bounded_number_of_times() -> None:
    clock = Clock()
    live = LiveOutput(now=clock)
    writes, seen = 0, 0
    for _ in range(3000):  # 60 s of a command printing every 20 ms, looked at each tick
        clock.t += 0.02
        seen += 80
        if live.due(seen):
            live.wrote(seen)
            writes += 1
    assert writes <= 60 / OUTPUT_EVERY + 1
