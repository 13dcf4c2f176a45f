"""The agent of the status-page tests: what it does depends on the prompt.

"... (long running)"  runs until its cancel is asked, then stops with a word on it
"... (fails)"         fails with an error
anything else         reports three progress events and returns an output
"""

from __future__ import annotations

import time

from mobvibe.sql.jobs import Job


def agent(job: Job) -> str:
    if "(long running)" in job.prompt:
        while not job.cancelled:  # type: ignore[attr-defined]  # a RunningJob
            time.sleep(0.02)
        return "stopped as asked"
    if "(fails)" in job.prompt:
        raise RuntimeError("npm ERR! code ERESOLVE: could not resolve the dependency tree")
    report = job.progress  # type: ignore[attr-defined]
    report({"kind": "step", "text": "reading the project"})
    report({"kind": "step", "text": "editing 3 files"})
    report({"kind": "done", "files": 3})
    return f"Changed 3 files.\n{job.prompt}: done, the tests pass."
