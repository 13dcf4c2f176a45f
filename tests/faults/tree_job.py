#!/usr/bin/env python3
"""A job command that leaves a process tree behind, and records when each process ran.

`tree_job.py main` reads its prompt (`tree:SECONDS`) from stdin, starts a child
in its process group, which starts a grandchild in a session of its own
(`setsid`), works for SECONDS and exits 0 without waiting for them. Every
process sends a monotonic timestamp to the test's ledger every TICK while it
runs (a datagram `JOB.ATTEMPT.ROLE.PID TIME` to the abstract socket named by
$TEST_LEDGER). The test reads when each attempt's processes first and last ran.

The command is its own program (run by its path), with nothing but the standard
library: a sandboxed job sees the system and its program's file, not this repository.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

TICK = 0.02


class Ticker:
    """One process's line in the ledger."""

    def __init__(self, role: str) -> None:
        self.name = f"{os.environ['JOB_ID']}.{os.environ['ATTEMPT']}.{role}.{os.getpid()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.connect("\0" + os.environ["TEST_LEDGER"])

    def tick(self) -> None:
        self.sock.send(f"{self.name} {time.monotonic():.6f}".encode())


def main() -> None:
    role = sys.argv[1]
    ticker = Ticker(role)
    ticker.tick()
    if role == "main":
        seconds = float(sys.stdin.read().partition(":")[2] or "1")
        subprocess.Popen([sys.executable, __file__, "child"])
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(TICK)
            ticker.tick()
        return  # exits 0, its child and grandchild still running
    if role == "child":
        subprocess.Popen([sys.executable, __file__, "grandchild"], start_new_session=True)
    while True:
        time.sleep(TICK)
        ticker.tick()


if __name__ == "__main__":
    main()
