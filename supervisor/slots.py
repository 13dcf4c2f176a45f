"""Shared memory between the processes of a supervisor: which job each worker holds.

A worker writes its slot at every claim and finish: a few microseconds, no
system call. The parent reads the slot of a worker that died, to end the job
it held at once (the fast path), and reads all slots to enforce --job-timeout.
The hub renews the leases of the jobs it sees held, records each renewal in
the slot, and asks a worker to stop a job (cancelled, lease lost) through it.
A sequence number, odd while a write is in progress, keeps a reader from
acting on a half-written slot (a seqlock).
"""

from __future__ import annotations

import mmap
import struct
import uuid
import zlib
from dataclasses import dataclass

from mobvibe.vocabulary import EndReason

# seq, then pid, job_id, lease_token, attempt, started (monotonic), the process
# group of the job's command (0: none) and a CRC-32 of those fields, then
# outside the seqlock four words, each one aligned 8-byte store by one writer:
# the last good heartbeat (monotonic; the hub), the worker's idle generation (0:
# busy; the worker), a stop request (the hub or the parent; see stop()) and the
# attempts ended in the slot (the workers that had it, one after another).
# The sequence number and the words use the native format: struct's standard
# ("=") formats read and write 8-byte integers one byte at a time, so a reader
# could see half of a new value. The checksum makes a torn copy of the fields
# detectable whatever order the stores become visible in.
_SEQ = struct.Struct("Q")
_FIELDS = struct.Struct("=q16s16sqdq")
_CRC = struct.Struct("=I")
_BODY = _FIELDS.size + _CRC.size
_HEARTBEAT = struct.Struct("d")
_WORD = struct.Struct("q")
_HEARTBEAT_AT = _SEQ.size + _BODY + 4  # 8-byte aligned
_IDLE_AT = _HEARTBEAT_AT + 8
_STOP_AT = _IDLE_AT + 8
_ENDED_AT = _STOP_AT + 8
_SLOT_SIZE = _ENDED_AT + 8
# parent's last loop turn (monotonic), workers alive, the queue drained (--drain)
_HEADER = struct.Struct("=dqq")
# A stop request: the reason's code in the top byte, the low 56 bits of the lease
# token it is for below, so that a request never reaches the worker's next job.
STOP_REASONS = (None, EndReason.LEASE_LOST, EndReason.CANCELLED)
_TOKEN_BITS = (1 << 56) - 1
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
    pid: int = 0  # the worker's


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
        return Holding(job_id, lease_token, attempt, now, now, 0, pid)

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
        """The lease of worker `index`'s job was renewed (or its claim made) at `now`."""
        _HEARTBEAT.pack_into(self._map, self._offset(index) + _HEARTBEAT_AT, now)

    def heartbeat_at(self, index: int) -> float:
        """When the lease of worker `index`'s job was last renewed (monotonic)."""
        return float(_HEARTBEAT.unpack_from(self._map, self._offset(index) + _HEARTBEAT_AT)[0])

    def idle(self, index: int, generation: int) -> None:
        """Worker `index` waits for work (`generation` counts its waits), or is busy (0)."""
        _WORD.pack_into(self._map, self._offset(index) + _IDLE_AT, generation)

    def idle_generation(self, index: int) -> int:
        """The worker's wait that is going on (0: it is busy)."""
        return int(_WORD.unpack_from(self._map, self._offset(index) + _IDLE_AT)[0])

    def stop(self, index: int, lease_token: uuid.UUID, reason: EndReason) -> None:
        """Ask worker `index` to stop the job held under `lease_token`, for `reason`."""
        code = STOP_REASONS.index(reason) << 56 | lease_token.int & _TOKEN_BITS
        _WORD.pack_into(self._map, self._offset(index) + _STOP_AT, code)

    def stop_requested(self, index: int, lease_token: uuid.UUID) -> EndReason | None:
        """The reason the job held under `lease_token` must stop, if one was asked."""
        word = int(_WORD.unpack_from(self._map, self._offset(index) + _STOP_AT)[0])
        if word >> 56 and word & _TOKEN_BITS == lease_token.int & _TOKEN_BITS:
            return STOP_REASONS[word >> 56]
        return None

    def attempt_ended(self, index: int) -> None:
        """Worker `index` has ended an attempt (and given its workspace back)."""
        offset = self._offset(index) + _ENDED_AT
        _WORD.pack_into(self._map, offset, _WORD.unpack_from(self._map, offset)[0] + 1)

    # -- read by the parent ----------------------------------------------------

    def attempts_ended(self) -> int:
        """Attempts ended by every worker so far: the parent sweeps workspaces when it moves."""
        return sum(
            int(_WORD.unpack_from(self._map, self._offset(i) + _ENDED_AT)[0])
            for i in range(self.count)
        )

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
                pid, job, lease, attempt, started, pgid = _FIELDS.unpack(fields)
                if job == _EMPTY_UUID:
                    return None
                return Holding(
                    uuid.UUID(bytes=job),
                    uuid.UUID(bytes=lease),
                    attempt,
                    started,
                    heartbeat_ok,
                    pgid,
                    pid,
                )
        return None

    def clear(self, index: int) -> None:
        """Forget slot `index` (its worker is gone and its job dealt with): it holds no job
        and waits for none, so the hub counts no idle worker there until the next starts."""
        self._write(index, 0, _EMPTY_UUID, _EMPTY_UUID, 0, 0.0)
        self.idle(index, 0)

    def tick(self, now: float, workers_alive: int) -> None:
        """The parent's loop turned at `now` with `workers_alive` workers."""
        _HEARTBEAT.pack_into(self._map, 0, now)
        _WORD.pack_into(self._map, 8, workers_alive)

    def parent_state(self) -> tuple[float, int]:
        """(last loop turn, workers alive) as the parent last wrote them."""
        last, alive, _drained = _HEADER.unpack_from(self._map, 0)
        return float(last), int(alive)

    def drained(self) -> None:
        """The hub saw nothing pending or processing (for --drain)."""
        _WORD.pack_into(self._map, 16, 1)

    def is_drained(self) -> bool:
        return bool(_WORD.unpack_from(self._map, 16)[0])
