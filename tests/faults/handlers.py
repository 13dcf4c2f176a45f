"""The fault suite's job handler: record each execution, then act as the prompt says.

  rec:PATH:SECONDS   append "job_id attempt pid" to PATH at the start, sleep, complete
  crash              kill the worker process with SIGKILL (a poison job)
  hang               spin in pure Python (the heartbeat thread stays alive)
"""

from __future__ import annotations

import os
import signal
import time

from supervisor.jobs import Job


def run(job: Job) -> None:
    verb, _, arg = job.prompt.partition(":")
    if verb == "rec":
        path, _, seconds = arg.rpartition(":")
        with open(path, "a") as out:
            out.write(f"{job.id} {job.attempt} {os.getpid()}\n")
        time.sleep(float(seconds))
    elif verb == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    elif verb == "hang":
        while True:
            pass


def executions(path: str | os.PathLike[str]) -> list[tuple[str, int, int]]:
    """(job id, attempt, worker pid) of every execution recorded in `path`."""
    try:
        with open(path) as records:
            lines = records.read().split("\n")
    except FileNotFoundError:
        return []
    found = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3:
            found.append((parts[0], int(parts[1]), int(parts[2])))
    return found
