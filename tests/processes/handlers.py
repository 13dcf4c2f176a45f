"""Job handlers for the process tests; the prompt says what to do.

ok             complete at once
sleep:S        sleep S seconds, then complete
fail           raise, so the attempt fails
crash          kill the worker process with SIGKILL
exit:N         leave the worker process with os._exit(N)
hang           spin in pure Python forever
mark:PATH      append the job id to PATH, then complete (counts executions)

talk, stubborn and polite are handlers of their own (progress, cancels); in_workspace
keeps a file in the session's workspace.
"""

from __future__ import annotations

import os
import signal
import time

from mobvibe.sql.jobs import Job
from mobvibe.supervisor.attempt import RunningJob


def by_prompt(job: Job) -> None:
    verb, _, arg = job.prompt.partition(":")
    if verb == "sleep":
        time.sleep(float(arg))
    elif verb == "fail":
        raise RuntimeError("the prompt asked to fail")
    elif verb == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    elif verb == "exit":
        os._exit(int(arg))
    elif verb == "hang":
        while True:
            pass
    elif verb == "mark":
        with open(arg, "a") as out:
            out.write(f"{job.id} {job.attempt} {os.getpid()}\n")


def talk(job: Job) -> str:
    """Report progress three times (a dict, a text line, a dict with a kind), return an output."""
    report = job.progress  # type: ignore[attr-defined]  # a RunningJob
    report({"kind": "step", "text": "reading"})
    report("plain words")
    report({"kind": "done", "files": 2})
    return f"done with {job.prompt}"


def stubborn(job: Job) -> None:
    """Ignore a cancel: keep running until killed."""
    while True:
        time.sleep(0.05)


def polite(job: Job) -> str:
    """Stop soon after a cancel is asked, with a word on it."""
    while not job.cancelled:  # type: ignore[attr-defined]  # a RunningJob
        time.sleep(0.02)
    return "stopped as asked"


def in_workspace(job: RunningJob) -> str:
    """Keep a file of this prompt in the session's workspace; say where it is and what it
    found there."""
    assert job.workspace is not None
    found = sorted(os.listdir(job.workspace))
    with open(os.path.join(job.workspace, f"prompt-{job.id}"), "w") as out:
        out.write(job.prompt)
    return f"{job.workspace} {' '.join(found)}".strip()
