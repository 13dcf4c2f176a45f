"""The fault suite's job handler: record each execution, then act as the prompt says.

  rec:PATH:SECONDS   record the execution in PATH, sleep SECONDS, complete
  hang:PATH          record the execution in PATH, then spin in pure Python forever
                     (the heartbeat thread stays alive: only --job-timeout ends it)
  crash              kill the worker process with SIGKILL (a poison job)

A record is one line, "job_id attempt pid time", written when the handler
starts: a job's lines are its real executions, which may outnumber its
completions when attempts are lost.
"""

from __future__ import annotations

import os
import signal
import time
from typing import NamedTuple

from mobvibe.sql.jobs import Job


class Execution(NamedTuple):
    job_id: str
    attempt: int
    pid: int
    at: float  # time.time() when the handler started


def run(job: Job) -> None:
    verb, _, arg = job.prompt.partition(":")
    if verb == "rec":
        path, _, seconds = arg.rpartition(":")
        _record(path, job)
        time.sleep(float(seconds))
    elif verb == "hang":
        _record(arg, job)
        while True:
            pass
    elif verb == "crash":
        os.kill(os.getpid(), signal.SIGKILL)


def _record(path: str, job: Job) -> None:
    with open(path, "a") as out:
        out.write(f"{job.id} {job.attempt} {os.getpid()} {time.time():.6f}\n")


def executions(path: str | os.PathLike[str]) -> list[Execution]:
    """Every execution recorded in `path`, in the order written (a torn last line is skipped)."""
    try:
        with open(path) as records:
            lines = records.read().split("\n")
    except FileNotFoundError:
        return []
    found = []
    for line in lines:
        parts = line.split()
        if len(parts) == 4:
            found.append(Execution(parts[0], int(parts[1]), int(parts[2]), float(parts[3])))
    return found
