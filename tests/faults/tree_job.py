"""A job command that leaves a process tree behind, and records when each process ran.

`tree_job.py main` reads its prompt (`tree:SECONDS`) from stdin, starts a child
in its process group, which starts a grandchild in a session of its own
(`setsid`), works for SECONDS and exits 0 without waiting for them. Every
process appends a monotonic timestamp to its own ledger file every TICK while
it runs: $TEST_LEDGER/JOB.ATTEMPT.ROLE.PID. The test reads when each attempt's
processes first and last ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

TICK = 0.02


def ticker(role: str) -> int:
    name = f"{os.environ['JOB_ID']}.{os.environ['ATTEMPT']}.{role}.{os.getpid()}"
    return os.open(
        os.path.join(os.environ["TEST_LEDGER"], name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
    )


def tick(fd: int) -> None:
    os.write(fd, f"{time.monotonic():.6f}\n".encode())


def main() -> None:
    role = sys.argv[1]
    fd = ticker(role)
    tick(fd)
    if role == "main":
        seconds = float(sys.stdin.read().partition(":")[2] or "1")
        subprocess.Popen([sys.executable, __file__, "child"])
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(TICK)
            tick(fd)
        return  # exits 0, its child and grandchild still running
    if role == "child":
        subprocess.Popen([sys.executable, __file__, "grandchild"], start_new_session=True)
    while True:
        time.sleep(TICK)
        tick(fd)


if __name__ == "__main__":
    main()
