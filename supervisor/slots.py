"""Shared memory between the supervisor and its workers: which job each worker holds.

A worker writes its slot at every claim and finish: a few microseconds, no
system call. The parent reads the slot of a worker that died, to fail the job
it held at once (the fast path), and reads all slots to enforce --job-timeout.
A sequence number, odd while a write is in progress, keeps the parent from
acting on a half-written slot (a seqlock).
"""

from __future__ import annotations

import mmap
import struct
import uuid
import zlib
from dataclasses import dataclass

# seq, then pid, job_id, lease_token, attempt, started (monotonic), the process
# group of the job's command (0: none) and a CRC-32 of those fields, then
# outside the seqlock the last good heartbeat (monotonic), written only by the
# heartbeat thread: one aligned 8-byte store.
# The sequence number and the heartbeat use the native format: struct's
# standard ("=") formats read and write 8-byte integers one byte at a time, so
# a reader could see half of a new sequence number. The checksum makes a torn
# copy of the fields detectable whatever order the stores become visible in.
_SEQ = struct.Struct("Q")
_FIELDS = struct.Struct("=q16s16sqdq")
_CRC = struct.Struct("=I")
_BODY = _FIELDS.size + _CRC.size
_HEARTBEAT = struct.Struct("d")
_HEARTBEAT_AT = _SEQ.size + _BODY + 4  # 8-byte aligned
_SLOT_SIZE = _HEARTBEAT_AT + _HEARTBEAT.size
# parent's last loop turn (monotonic), workers alive
_HEADER = struct.Struct("=dq")
_EMPTY_UUID = b"\x00" * 16


@dataclass(frozen=True)
class Holding:
    """The job a worker holds, as its slot says."""

    job_id: uuid.UUID
    lease_token: uuid.UUID
    attempt: int
    started: float
    heartbeat_ok: float
    pgid: int = 0  # the process group of the job's command, once it has started


class Slots:
    """An anonymous shared mapping created before fork, one slot per worker."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._map = mmap.mmap(-1, _HEADER.size + _SLOT_SIZE * count)

    def _offset(self, index: int) -> int:
        return _HEADER.size + _SLOT_SIZE * index

    def _write(
        self,
        index: int,
        pid: int,
        job: bytes,
        lease: bytes,
        attempt: int,
        started: float,
        pgid: int = 0,
    ) -> None:
        offset = self._offset(index)
        fields = _FIELDS.pack(pid, job, lease, attempt, started, pgid)
        body = fields + _CRC.pack(zlib.crc32(fields))
        seq = _SEQ.unpack_from(self._map, offset)[0]
        _SEQ.pack_into(self._map, offset, seq + 1)  # odd: write in progress
        self._map[offset + _SEQ.size : offset + _SEQ.size + _BODY] = body
        _SEQ.pack_into(self._map, offset, seq + 2)

    # -- written by a worker ---------------------------------------------------

    def hold(
        self,
        index: int,
        pid: int,
        job_id: uuid.UUID,
        lease_token: uuid.UUID,
        attempt: int,
        now: float,
    ) -> Holding:
        """Worker `index` starts job `job_id` under `lease_token`; what its slot now says."""
        self.heartbeat_ok(index, now)
        self._write(index, pid, job_id.bytes, lease_token.bytes, attempt, now)
        return Holding(job_id, lease_token, attempt, now, now)

    def group_started(self, index: int, pid: int, holding: Holding, pgid: int) -> None:
        """The command of the job worker `index` holds runs in process group `pgid`."""
        self._write(
            index,
            pid,
            holding.job_id.bytes,
            holding.lease_token.bytes,
            holding.attempt,
            holding.started,
            pgid,
        )

    def release(self, index: int, pid: int) -> None:
        """Worker `index` holds no job any more."""
        self._write(index, pid, _EMPTY_UUID, _EMPTY_UUID, 0, 0.0)

    def heartbeat_ok(self, index: int, now: float) -> None:
        """Worker `index` renewed its lease (or reached the database) at `now`."""
        _HEARTBEAT.pack_into(self._map, self._offset(index) + _HEARTBEAT_AT, now)

    # -- read by the parent ----------------------------------------------------

    def holding(self, index: int) -> Holding | None:
        """The job worker `index` holds, or None (also when its slot is half-written)."""
        offset = self._offset(index)
        for _ in range(100):
            before = _SEQ.unpack_from(self._map, offset)[0]
            body = self._map[offset + _SEQ.size : offset + _SEQ.size + _BODY]
            heartbeat_ok = _HEARTBEAT.unpack_from(self._map, offset + _HEARTBEAT_AT)[0]
            after = _SEQ.unpack_from(self._map, offset)[0]
            if before == 0:
                return None  # never written
            # Consistent only if no write began or ended while we copied, and the
            # copy is one whole write.
            fields = body[: _FIELDS.size]
            if (
                before == after
                and before % 2 == 0
                and _CRC.unpack_from(body, _FIELDS.size)[0] == zlib.crc32(fields)
            ):
                _pid, job, lease, attempt, started, pgid = _FIELDS.unpack(fields)
                if job == _EMPTY_UUID:
                    return None
                return Holding(
                    uuid.UUID(bytes=job),
                    uuid.UUID(bytes=lease),
                    attempt,
                    started,
                    heartbeat_ok,
                    pgid,
                )
        return None

    def clear(self, index: int) -> None:
        """Forget slot `index` (its worker is gone and its job dealt with)."""
        self._write(index, 0, _EMPTY_UUID, _EMPTY_UUID, 0, 0.0)

    def tick(self, now: float, workers_alive: int) -> None:
        """The parent's loop turned at `now` with `workers_alive` workers."""
        _HEADER.pack_into(self._map, 0, now, workers_alive)

    def parent_state(self) -> tuple[float, int]:
        """(last loop turn, workers alive) as the parent last wrote them."""
        last, alive = _HEADER.unpack_from(self._map, 0)
        return float(last), int(alive)
