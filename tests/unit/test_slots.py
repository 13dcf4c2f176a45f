"""The shared-memory slots: a reader never acts on a half-written slot."""

from __future__ import annotations

import os
import uuid

from mobvibe.supervisor.slots import Slots


def test_hold_and_release_round_trip() -> None:
    slots = Slots(2)
    job, lease = uuid.uuid4(), uuid.uuid4()
    slots.hold(1, 123, job, lease, 2, 50.0)
    held = slots.holding(1)
    assert held is not None
    assert (held.job_id, held.lease_token, held.attempt, held.started) == (job, lease, 2, 50.0)
    assert slots.holding(0) is None
    slots.heartbeat_ok(1, 60.0)
    assert slots.holding(1).heartbeat_ok == 60.0  # type: ignore[union-attr]
    slots.release(1, 123)
    assert slots.holding(1) is None


def test_reader_never_sees_a_torn_slot_while_a_child_writes() -> None:
    slots = Slots(1)
    job, lease = uuid.uuid4(), uuid.uuid4()
    pid = os.fork()
    if pid == 0:  # the writer: hold and release as fast as it can
        try:
            for _ in range(200_000):
                slots.hold(0, 1, job, lease, 7, 1234.5)
                slots.release(0, 1)
        finally:
            os._exit(0)
    seen = 0
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        held = slots.holding(0)
        if held is not None:
            seen += 1
            assert (held.job_id, held.lease_token, held.attempt, held.started) == (
                job,
                lease,
                7,
                1234.5,
            )
    assert seen > 0


def test_parent_state_round_trip() -> None:
    slots = Slots(1)
    slots.tick(99.5, 3)
    assert slots.parent_state() == (99.5, 3)
