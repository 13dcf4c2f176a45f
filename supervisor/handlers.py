"""What runs a job: a command (--exec), a Python function (--handler), or the demo (--demo)."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import selectors
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mobvibe import clock
from mobvibe.errors import ConfigError
from mobvibe.sql.jobs import Job
from mobvibe.supervisor import contain

log = logging.getLogger(__name__)
STDERR_TAIL = 2000
# After SIGTERM, how long a command may take to stop before SIGKILL (a release
# at shutdown, a cancel); leftovers of a command that exited get END_GRACE.
KILL_GRACE = 5.0
END_GRACE = 1.0
END_DEADLINE = 10.0  # a process that outlives SIGKILL this long is stuck in the kernel
# What a job's command inherits from the supervisor's environment; nothing else
# (no DATABASE_URL, no PG*, no MOBVIBE_* setting) unless --exec-env names it.
ENV_ALLOWED = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "TERM",
)
ENV_ALLOWED_PREFIXES = ("LC_",)
ENV_FORBIDDEN_PREFIXES = ("PG", "MOBVIBE_")
ENV_FORBIDDEN = ("DATABASE_URL",)
DEMO = "mobvibe.supervisor.handlers:demo_handler"


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: ok, or an error with its reason (an END_REASONS value)."""

    ok: bool
    error: str = ""
    reason: str = "completed"


COMPLETED = Outcome(True)


class Aborted(Exception):  # noqa: N818 - it is a signal to stop, not an error of the job
    """Raised in a Python handler's thread when its job must stop (lease lost, shutdown)."""


OnGroup = Callable[[int], None]


class Handler:
    """Runs one job at a time; abort() stops the running one from a signal handler or thread."""

    def run(self, job: Job, deadline: float | None, on_group: OnGroup) -> Outcome:
        """Run `job`; `on_group(pgid)` is told the process group of a command it starts."""
        raise NotImplementedError

    def abort(self, outcome: Outcome, grace: float = KILL_GRACE) -> bool:
        """Stop the running job with `outcome` if it can be stopped from outside; else False."""
        return False


def base_environment(passed: Sequence[str] = ()) -> dict[str, str]:
    """What a command inherits: the allow-list and the names passed on purpose."""
    return {
        name: value
        for name, value in os.environ.items()
        if name in ENV_ALLOWED or name.startswith(ENV_ALLOWED_PREFIXES) or name in passed
    }


def job_environment(job: Job, passed: Sequence[str] = ()) -> dict[str, str]:
    """The command's environment: the inherited part, then the job's own variables."""
    env = base_environment(passed)
    env.update(
        {
            "JOB_ID": str(job.id),
            "SESSION_ID": str(job.session_id),
            "ATTEMPT": str(job.attempt),
            "RETRY_COUNT": str(job.retry_count),
            "PRIORITY": str(job.priority),
        }
    )
    return env


def check_exec_env(names: Sequence[str]) -> tuple[str, ...]:
    """The --exec-env names, or ConfigError for one that would hand the job a credential."""
    for name in names:
        if not name or "=" in name:
            raise ConfigError(f"--exec-env takes a variable name, got {name!r}")
        if name in ENV_FORBIDDEN or name.startswith(ENV_FORBIDDEN_PREFIXES):
            raise ConfigError(
                f"--exec-env {name}: the job's command never gets the database's "
                "settings or the supervisor's own (DATABASE_URL, PG*, MOBVIBE_*)"
            )
    return tuple(names)


def _command_prelude() -> None:
    """In the command's process, before exec: die with the worker that started it."""
    contain.die_with_parent(signal.SIGKILL)


class ExecHandler(Handler):
    """`--exec CMD`: the prompt on stdin, JOB_ID/SESSION_ID/ATTEMPT in the environment."""

    def __init__(self, command: str, env_names: Sequence[str] = ()) -> None:
        self.command = command
        self.env_names = tuple(env_names)
        self._proc: subprocess.Popen[bytes] | None = None
        self._abort: tuple[Outcome, float] | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    def run(self, job: Job, deadline: float | None, on_group: OnGroup) -> Outcome:
        self._abort = None
        # The operator's command line, run as `sh -c` on purpose; a session (and so a
        # process group) of its own, ended as a whole.
        proc = subprocess.Popen(  # noqa: S602
            self.command,
            shell=True,
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=job_environment(job, self.env_names),
            start_new_session=True,
            preexec_fn=_command_prelude,  # noqa: PLW1509 - a prctl call, no lock taken
        )
        on_group(proc.pid)
        self._proc = proc
        try:
            outcome, stderr = self._supervise(proc, job.prompt.encode(), deadline)
        finally:
            self._proc = None
            contain.end_attempt(proc.pid, (), END_GRACE, clock.monotonic() + END_DEADLINE)
        if outcome is not None:
            return outcome
        if proc.returncode == 0:
            return COMPLETED
        tail = stderr.decode("utf-8", "replace")[-STDERR_TAIL:].strip()
        code = (
            f"killed by signal {-proc.returncode}"
            if proc.returncode < 0
            else f"exit status {proc.returncode}"
        )
        error = f"command failed ({code}): {tail}" if tail else f"command failed ({code})"
        return Outcome(False, error, "error")

    def _supervise(
        self, proc: subprocess.Popen[bytes], prompt: bytes, deadline: float | None
    ) -> tuple[Outcome | None, bytes]:
        """Feed stdin, collect stderr, wait for the exit, an abort or the deadline."""
        assert proc.stdin is not None
        assert proc.stderr is not None
        stderr = bytearray()
        outcome: Outcome | None = None
        kill_at: float | None = None
        with selectors.DefaultSelector() as sel, _pidfd(proc.pid) as exited:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE)
            sel.register(proc.stderr, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            sel.register(exited, selectors.EVENT_READ)
            while proc.poll() is None:
                if outcome is None and self._abort is not None:
                    outcome, grace = self._abort
                    kill_at = self._stop(proc, grace)
                if outcome is None and deadline is not None and clock.monotonic() >= deadline:
                    outcome = Outcome(False, "job exceeded --job-timeout", "deadline_exceeded")
                    kill_at = self._stop(proc, KILL_GRACE)
                if kill_at is not None and clock.monotonic() >= kill_at:
                    contain.signal_quietly(proc.pid, signal.SIGKILL, group=True)
                    kill_at = None
                wait = _until(deadline if outcome is None else kill_at)
                for key, _ in sel.select(wait):
                    prompt = self._serve(sel, key, proc, prompt, stderr)
            if proc.stderr in (key.fileobj for key in sel.get_map().values()):
                stderr += _drain(proc.stderr.fileno())  # what it wrote before it ended
        for pipe in (proc.stdin, proc.stderr):
            pipe.close()
        return outcome, bytes(stderr)

    def _serve(
        self,
        sel: selectors.BaseSelector,
        key: selectors.SelectorKey,
        proc: subprocess.Popen[bytes],
        prompt: bytes,
        stderr: bytearray,
    ) -> bytes:
        """One ready descriptor; returns what is left of the prompt to write."""
        if key.fileobj is proc.stdin:
            try:
                written = os.write(key.fd, prompt[:65536])
            except BrokenPipeError:
                written = len(prompt)  # the command does not read its stdin: fine
            except BlockingIOError:
                written = 0
            prompt = prompt[written:]
            if not prompt:
                sel.unregister(key.fileobj)
                proc.stdin.close()
        elif key.fileobj is proc.stderr:
            chunk = os.read(key.fd, 65536)
            if chunk:
                stderr += chunk
                del stderr[: -STDERR_TAIL * 4]  # keep the tail only
            else:
                sel.unregister(key.fileobj)
        elif key.fd == self._wake_r:
            os.read(self._wake_r, 512)
        return prompt

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes], grace: float) -> float:
        """TERM the command's group now (KILL with no grace); when to KILL it."""
        contain.signal_quietly(
            proc.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL, group=True
        )
        return clock.monotonic() + grace

    def abort(self, outcome: Outcome, grace: float = KILL_GRACE) -> bool:
        """Stop the running command: TERM now, KILL after `grace` (at once with 0).

        Called from a signal handler or the heartbeat thread while run() waits:
        it only records the request and wakes run(), which does the rest.
        """
        if self._abort is None:
            self._abort = (outcome, grace)
        with contextlib.suppress(BlockingIOError):  # full: already awake
            os.write(self._wake_w, b"!")
        return True


def _until(at: float | None) -> float:
    return 1.0 if at is None else max(0.0, min(1.0, at - clock.monotonic()))


def _drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1 << 20)
    except (BlockingIOError, OSError):
        return b""


class _pidfd:  # noqa: N801 - a context manager used like a function
    """A descriptor that becomes readable when process `pid` exits."""

    def __init__(self, pid: int) -> None:
        self.fd = os.pidfd_open(pid)

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


class PythonHandler(Handler):
    """`--handler pkg.mod:func`: func(job) returns to complete, raises to fail."""

    def __init__(self, func: Callable[[Job], Any]) -> None:
        self.func = func

    def run(self, job: Job, deadline: float | None, on_group: OnGroup) -> Outcome:
        try:
            self.func(job)
        except Aborted:
            raise
        except Exception as exc:  # noqa: BLE001 - any exception of a handler fails the attempt
            message = f"{type(exc).__name__}: {exc}"[-STDERR_TAIL:]
            return Outcome(False, message, "error")
        finally:
            # whatever it started ends with it (a look at /proc only if it started something)
            contain.end_attempt(0, (), END_GRACE, clock.monotonic() + END_DEADLINE)
        return COMPLETED


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


def check_command(command: str) -> None:
    """ConfigError unless the program `command` starts with can be found (as its shell would)."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"--exec {command!r}: {exc}") from None
    if not words:
        raise ConfigError("--exec is empty: give the command that runs a job")
    program = words[0]
    if "=" in program and not program.startswith(("/", ".")):
        return  # VAR=value cmd ...: left to the shell
    found = subprocess.run(
        ["sh", "-c", 'command -v -- "$1"', "sh", program],
        env=base_environment(),
        capture_output=True,
        check=False,
    )
    if found.returncode != 0:
        raise ConfigError(
            f"--exec: {program!r} is not a command the job's shell can find "
            f"(PATH={os.environ.get('PATH', '')}); give its full path"
        )


def make_handler(
    exec_cmd: str | None, handler: str | None, exec_env: Sequence[str] = ()
) -> Handler:
    """The handler the options name (the demo's spec for --demo)."""
    if exec_cmd:
        return ExecHandler(exec_cmd, exec_env)
    if handler is None:
        raise ConfigError(
            "no job handler: give --exec CMD or --handler PKG.MOD:FUNC "
            "(or --demo to run the demo handler)"
        )
    return PythonHandler(load_function(handler))


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
