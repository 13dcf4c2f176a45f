"""What runs a job: a command (--exec, command.py), a Python function (--handler), the demo."""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from mobvibe import clock
from mobvibe.errors import ConfigError
from mobvibe.sql.jobs import Job
from mobvibe.supervisor import contain
from mobvibe.supervisor.attempt import (
    END_DEADLINE,
    END_GRACE,
    Aborted,
    Attempt,
    Handler,
    Outcome,
    RunningJob,
)
from mobvibe.supervisor.command import OUTPUT_MAX, STDERR_TAIL, ExecHandler
from mobvibe.supervisor.sandbox import Sandbox
from mobvibe.vocabulary import EndReason

log = logging.getLogger(__name__)
DEMO = "mobvibe.supervisor.handlers:demo_handler"


class PythonHandler(Handler):
    """`--handler pkg.mod:func`: func(job) returns to complete (its value is the job's
    output), raises to fail. The job also has progress() and cancelled."""

    def __init__(self, func: Callable[[Job], Any]) -> None:
        self.func = func

    def run(self, attempt: Attempt) -> Outcome:
        job = RunningJob(
            **{f.name: getattr(attempt.job, f.name) for f in dataclasses.fields(Job)},
            attempt_context=attempt,
        )
        try:
            value = self.func(job)
        except Aborted:
            raise
        except Exception as exc:  # noqa: BLE001 - any exception of a handler fails the attempt
            message = f"{type(exc).__name__}: {exc}"[-STDERR_TAIL:]
            return Outcome(False, message, EndReason.ERROR)
        finally:
            # whatever it started ends with it (a look at /proc only if it started something)
            contain.end_attempt(0, (), END_GRACE, clock.monotonic() + END_DEADLINE)
            attempt.flush(force=True)
        if attempt.cancelled():
            cancelled = Outcome(False, "cancelled by request", EndReason.CANCELLED)
            return replace(cancelled, output=as_output(value))
        return Outcome(True, output=as_output(value))


def as_output(value: object) -> str | None:
    """A handler's returned value as the job's output (its end, at most OUTPUT_MAX bytes)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    while len(text.encode("utf-8")) > OUTPUT_MAX:
        text = text[len(text) // 8 or 1 :]  # keep the end
    return text


def load_function(spec: str) -> Callable[[Job], Any]:
    """Import `pkg.mod:func` (the current directory first, as gunicorn does); ConfigError if not."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--handler must look like package.module:function, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to fix
        raise ConfigError(
            f"--handler {spec}: cannot import {module_name}: {type(exc).__name__}: {exc}"
        ) from None
    func = getattr(module, attr, None)
    if not callable(func):
        raise ConfigError(f"--handler {spec}: {module_name} has no function {attr!r}")
    return func  # type: ignore[no-any-return]


def make_handler(
    exec_cmd: str | None,
    handler: str | None,
    exec_env: Sequence[str] = (),
    sandbox: Sandbox | None = None,
) -> Handler:
    """The handler the options name (the demo's spec for --demo); a command runs in
    `sandbox` (None: without one)."""
    if exec_cmd:
        return ExecHandler(exec_cmd, exec_env, sandbox)
    if handler is None:
        raise ConfigError(
            "no job handler: give --exec CMD or --handler PKG.MOD:FUNC "
            "(or --demo to run the demo handler)"
        )
    return PythonHandler(load_function(handler))


def demo_handler(job: Job) -> str:
    """The demo: pretend to work on the prompt for a moment, fail if it asks to."""
    clock.sleep(0.2)
    if "fail" in job.prompt.lower():
        raise RuntimeError("the demo handler fails prompts that mention 'fail'")
    log.info(
        "demo job done",
        extra={"event": "demo_job_done", "job_id": str(job.id), "prompt_chars": len(job.prompt)},
    )
    return f"the demo handler read {len(job.prompt)} characters and did nothing with them"


def noop_handler(job: Job) -> None:
    """Complete at once: for benchmarks of the queue itself."""
