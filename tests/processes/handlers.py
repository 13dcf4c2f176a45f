"""Job handlers for the process tests; the prompt says what to do.

ok             complete at once
sleep:S        sleep S seconds, then complete
fail           raise, so the attempt fails
crash          kill the worker process with SIGKILL
exit:N         leave the worker process with os._exit(N)
hang           spin in pure Python forever
mark:PATH      append the job id to PATH, then complete (counts executions)
"""

from __future__ import annotations

import os
import signal
import time

from mobvibe.sql.jobs import Job


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
