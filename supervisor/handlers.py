"""What runs a job: a command (--exec), a Python function (--handler), or the demo handler."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mobvibe.errors import ConfigError
from mobvibe.sql.jobs import Job

log = logging.getLogger(__name__)
STDERR_TAIL = 2000
KILL_GRACE = 5.0


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: ok, or an error with its reason (an END_REASONS value)."""

    ok: bool
    error: str = ""
    reason: str = "completed"


COMPLETED = Outcome(True)


class Aborted(Exception):  # noqa: N818 - it is a signal to stop, not an error of the job
    """Raised in a Python handler's thread when its job must stop (lease lost, shutdown)."""


class Handler:
    """Runs one job at a time; abort() stops the running one from another thread."""

    def run(self, job: Job, deadline: float | None) -> Outcome:
        raise NotImplementedError

    def abort(self) -> bool:
        """Stop the running job if it can be stopped from outside; False if it cannot."""
        return False


class ExecHandler(Handler):
    """`--exec CMD`: the prompt on stdin, JOB_ID/SESSION_ID/ATTEMPT in the environment."""

    def __init__(self, command: str) -> None:
        self.command = command
        self._proc: subprocess.Popen[bytes] | None = None
        # Reentrant: abort() also runs in a signal handler, on the thread that
        # may be holding the lock in run().
        self._lock = threading.RLock()

    def run(self, job: Job, deadline: float | None) -> Outcome:
        env = {
            **os.environ,
            "JOB_ID": str(job.id),
            "SESSION_ID": str(job.session_id),
            "ATTEMPT": str(job.attempt),
            "RETRY_COUNT": str(job.retry_count),
            "PRIORITY": str(job.priority),
        }
        # Its own process group, so that a timeout kills the command's children too.
        # The operator's command line, run as `sh -c` on purpose.
        proc = subprocess.Popen(  # noqa: S602
            self.command,
            shell=True,
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        with self._lock:
            self._proc = proc
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                _, stderr = proc.communicate(job.prompt.encode(), timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill(proc)
                return Outcome(False, "job exceeded --job-timeout", "deadline_exceeded")
        finally:
            with self._lock:
                self._proc = None
        if proc.returncode == 0:
            return COMPLETED
        tail = stderr.decode("utf-8", "replace")[-STDERR_TAIL:].strip()
        code = (
            f"killed by signal {-proc.returncode}"
            if proc.returncode < 0
            else f"exit status {proc.returncode}"
        )
        return Outcome(
            False,
            f"command failed ({code}): {tail}" if tail else f"command failed ({code})",
            "error",
        )

    def abort(self) -> bool:
        """Stop the running command: TERM now, KILL after KILL_GRACE.

        Called from a signal handler or the heartbeat thread while run() waits
        in communicate(), so it only sends signals: run() sees the command end
        and collects it (communicate() must not be entered twice).
        """
        with self._lock:
            proc = self._proc
        if proc is not None:
            self._signal_group(proc, signal.SIGTERM)
            timer = threading.Timer(KILL_GRACE, self._kill_if_running, (proc,))
            timer.daemon = True
            timer.start()
        return True

    @classmethod
    def _kill_if_running(cls, proc: subprocess.Popen[bytes]) -> None:
        if proc.returncode is None:
            cls._signal_group(proc, signal.SIGKILL)

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        except OSError:
            proc.send_signal(sig)

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        """TERM the command's process group, KILL it if it has not gone after KILL_GRACE."""
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(KILL_GRACE)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        except ProcessLookupError:
            pass
        except OSError:
            proc.kill()
        if proc.stdin:
            proc.stdin.close()
        proc.communicate()


class PythonHandler(Handler):
    """`--handler pkg.mod:func`: func(job) returns to complete, raises to fail."""

    def __init__(self, func: Callable[[Job], Any]) -> None:
        self.func = func

    def run(self, job: Job, deadline: float | None) -> Outcome:
        try:
            self.func(job)
        except Aborted:
            raise
        except Exception as exc:  # noqa: BLE001 - any exception of a handler fails the attempt
            message = f"{type(exc).__name__}: {exc}"[-STDERR_TAIL:]
            return Outcome(False, message, "error")
        return COMPLETED


def load_function(spec: str) -> Callable[[Job], Any]:
    """Import `pkg.mod:func`; ConfigError with the reason when it cannot."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--handler must look like package.module:function, got {spec!r}")
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


def make_handler(exec_cmd: str | None, handler: str | None) -> Handler:
    """The handler the options name; the demo handler when they name none."""
    if exec_cmd:
        return ExecHandler(exec_cmd)
    return PythonHandler(load_function(handler or "mobvibe.supervisor.handlers:demo_handler"))


def demo_handler(job: Job) -> None:
    """The demo: pretend to work on the prompt for a moment, fail if it asks to."""
    time.sleep(0.2)
    if "fail" in job.prompt.lower():
        raise RuntimeError("the demo handler fails prompts that mention 'fail'")
    log.info(
        "demo job done",
        extra={"event": "demo_job_done", "job_id": str(job.id), "prompt_chars": len(job.prompt)},
    )


def noop_handler(job: Job) -> None:
    """Complete at once: for benchmarks of the queue itself."""
