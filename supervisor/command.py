"""`--exec CMD`: a job run by a command, watched until it ends, with all its processes.

The prompt goes to its stdin; its stdout's end is the job's output (kept as it
grows, progress.LiveOutput), its stderr's end the error of a failed attempt; lines on descriptor 3
(MOBVIBE_PROGRESS_FD) are progress. Every pipe is read as the command writes,
so the command never blocks on a full pipe, and only the ends are kept.

The command runs in its sandbox (sandbox.py), whose bwrap passes the pipes and
descriptor 3 through; bwrap tells the pid of the sandbox's first process, whose
process group is the command's, and whose death ends the whole sandbox. bwrap
itself exits with the command's status as soon as the command exits (a killed
command: 128 + the signal, as a shell says it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import selectors
import shlex
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import replace
from typing import IO

from mobvibe import clock
from mobvibe.errors import ConfigError
from mobvibe.sql.jobs import Job
from mobvibe.supervisor import contain
from mobvibe.supervisor.attempt import (
    END_DEADLINE,
    END_GRACE,
    KILL_GRACE,
    Attempt,
    Handler,
    Outcome,
)
from mobvibe.supervisor.progress import LiveOutput
from mobvibe.supervisor.sandbox import Sandbox
from mobvibe.vocabulary import EndReason

STDERR_TAIL = 2000  # characters of stderr in a failed attempt's error
OUTPUT_MAX = 64 * 1024  # bytes of stdout kept as the job's output
PROGRESS_FD = 3  # a single digit: every shell can redirect to it (dash cannot to 10+)
CHUNK = 65536
TICK = 0.2  # longest wait between two looks at the fence, the deadline and the progress
INFO_TIMEOUT = 10.0  # bwrap writes its first process's pid at once: a hang is a bug
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


def base_environment(passed: Sequence[str] = ()) -> dict[str, str]:
    """What a command inherits: the allow-list and the names passed on purpose."""
    return {
        name: value
        for name, value in os.environ.items()
        if name in ENV_ALLOWED or name.startswith(ENV_ALLOWED_PREFIXES) or name in passed
    }


def job_environment(
    job: Job, passed: Sequence[str] = (), workspace: str | None = None
) -> dict[str, str]:
    """The command's environment: the inherited part, then the job's own variables."""
    own = {"MOBVIBE_WORKSPACE": workspace} if workspace is not None else {}
    return {
        **base_environment(passed),
        "JOB_ID": str(job.id),
        "SESSION_ID": str(job.session_id),
        "ATTEMPT": str(job.attempt),
        "RETRY_COUNT": str(job.retry_count),
        "PRIORITY": str(job.priority),
        "MOBVIBE_PROGRESS_FD": str(PROGRESS_FD),
        **own,
    }


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


def check_command(command: str) -> str | None:
    """The path of the program `command` starts with, as its shell finds it (None for a
    shell builtin); ConfigError if there is none."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"--exec {command!r}: {exc}") from None
    while words and "=" in words[0] and not words[0].startswith(("/", ".")):
        words = words[1:]  # VAR=value cmd ...: the variables are the shell's
    if not words:
        raise ConfigError("--exec is empty: give the command that runs a job")
    program = words[0]
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
    path = found.stdout.decode(errors="replace").strip()
    return path if "/" in path else None


class Tail:
    """The last `limit` bytes written to a pipe, and how many were written in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.data += chunk
        if len(self.data) > 2 * self.limit:  # trim now and then, not at every chunk
            del self.data[: -self.limit]

    def text(self) -> str:
        """The end, decoded; at most `limit` bytes once encoded again."""
        kept = bytes(self.data[-self.limit :]).decode("utf-8", "replace")
        while len(kept.encode("utf-8")) > self.limit:  # a replacement is 3 bytes
            kept = kept[1:]
        return kept


class Lines:
    """Complete lines of a pipe; a line longer than `limit` is cut into pieces."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.partial = bytearray()

    def add(self, chunk: bytes) -> list[bytes]:
        self.partial += chunk
        *done, rest = self.partial.split(b"\n")
        lines = [bytes(line) for line in done]
        self.partial = bytearray(rest)
        while len(self.partial) > self.limit:
            lines.append(bytes(self.partial[: self.limit]))
            del self.partial[: self.limit]
        return lines

    def rest(self) -> list[bytes]:
        return [bytes(self.partial)] if self.partial else []


class ExecHandler(Handler):
    """`--exec CMD`, run with `sh -c` in a session of its own, in a sandbox unless it is None."""

    def __init__(
        self, command: str, env_names: Sequence[str] = (), sandbox: Sandbox | None = None
    ) -> None:
        self.command = command
        self.env_names = tuple(env_names)
        self.sandbox = sandbox
        self._abort: tuple[Outcome, float] | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def run(self, attempt: Attempt) -> Outcome:
        self._abort = None
        proc, group, progress_r = self._start(attempt)
        attempt.on_group(group)
        try:
            outcome, output, errors = self._watch(proc, group, progress_r, attempt)
        finally:
            os.close(progress_r)
            contain.end_attempt(group, (), END_GRACE, clock.monotonic() + END_DEADLINE)
        attempt.flush(force=True)  # every event is written before the attempt's end
        if outcome is not None:
            return Outcome(outcome.ok, outcome.error, outcome.reason, output)
        return _ended(proc.returncode, output, errors)

    def _start(self, attempt: Attempt) -> tuple[subprocess.Popen[bytes], int, int]:
        """Start the command: (its process, the process group that is the attempt's, the
        read end of its progress pipe)."""
        progress_r, progress_w = os.pipe()
        progress_w = _above_stdio(progress_w)
        info_r, info_w = os.pipe() if self.sandbox is not None else (-1, -1)
        argv = ["sh", "-c", self.command]
        if self.sandbox is not None:
            info_w = _above_stdio(info_w)
            # The session's workspace, writable at its own path; nothing else of the
            # workspaces' directory.
            jail = replace(self.sandbox, writable=attempt.workspace)
            argv = jail.argv(argv, info_fd=info_w)

        def prelude() -> None:  # in the child, before exec: no lock is taken here
            contain.die_with_parent(signal.SIGKILL)
            os.dup2(progress_w, PROGRESS_FD)

        try:
            # The operator's command line, run by `sh -c` on purpose; a session (and so a
            # process group) of its own, ended as a whole.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=job_environment(attempt.job, self.env_names, attempt.workspace),
                start_new_session=True,
                pass_fds=(PROGRESS_FD, info_w) if info_w >= 0 else (PROGRESS_FD,),
                preexec_fn=prelude,  # noqa: PLW1509 - prctl and dup2 only
            )
        finally:
            for fd in (progress_w, info_w):
                if fd >= 0:
                    os.close(fd)
        group = proc.pid
        if info_r >= 0:
            # The sandbox's first process: the command runs in its process group.
            group = sandbox_init(info_r) or proc.pid
        return proc, group, progress_r

    def _watch(
        self, proc: subprocess.Popen[bytes], group: int, progress_fd: int, attempt: Attempt
    ) -> tuple[Outcome | None, str, Tail]:
        """Serve the pipes until the command exits, keeping its output with the job as it
        grows; stop it on an abort, the fence or the deadline. (the outcome if it was
        stopped, its output, its stderr)"""
        stopper = _Stopper(group, sandboxed=self.sandbox is not None)
        live = LiveOutput()
        with _Pipes(proc, progress_fd, attempt, self._wake_r) as pipes:
            while proc.poll() is None:
                if stopper.outcome is None:
                    stopper.stop(*self._stop_reason(attempt))
                stopper.escalate()
                pipes.serve(TICK)
                if attempt.progress_due():
                    attempt.flush()
                if live.due(pipes.output.total):
                    attempt.show_output(pipes.output.text())
                    live.wrote(pipes.output.total)
        return stopper.outcome, pipes.output.text(), pipes.errors

    def _stop_reason(self, attempt: Attempt) -> tuple[Outcome | None, float]:
        """Why the command must stop now, and its grace; (None, 0) if it need not."""
        if self._abort is not None:
            return self._abort
        if attempt.fenced():
            # The lease could not be renewed: stop at once, before the reaper hands the
            # job to someone else.
            lost = Outcome(False, "the job's lease could not be renewed", EndReason.LEASE_LOST)
            return lost, 0.0
        if attempt.deadline is not None and clock.monotonic() >= attempt.deadline:
            late = Outcome(False, "job exceeded --job-timeout", EndReason.DEADLINE_EXCEEDED)
            return late, KILL_GRACE
        return None, 0.0

    def abort(self, outcome: Outcome, grace: float = KILL_GRACE) -> bool:
        """Stop the running command: TERM now, KILL after `grace` (at once with 0).

        Called from a signal handler while run() waits: it only records the
        request and wakes run(), which does the rest.
        """
        if self._abort is None:
            self._abort = (outcome, grace)
        with contextlib.suppress(BlockingIOError):  # full: already awake
            os.write(self._wake_w, b"!")
        return True


def _ended(returncode: int, output: str, errors: Tail) -> Outcome:
    """How a command that ended by itself ended: exit 0 completes, anything else fails with
    the end of its stderr."""
    if returncode == 0:
        return Outcome(True, output=output)
    tail = errors.text()[-STDERR_TAIL:].strip()
    code = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
    error = f"command failed ({code}): {tail}" if tail else f"command failed ({code})"
    return Outcome(False, error, EndReason.ERROR, output)


class _Stopper:
    """Stops a command once: TERM its group, KILL it when the grace is over."""

    def __init__(self, group: int, *, sandboxed: bool) -> None:
        self.group = group
        self.sandboxed = sandboxed
        self.outcome: Outcome | None = None
        self.kill_at: float | None = None

    def stop(self, outcome: Outcome | None, grace: float) -> None:
        if outcome is None:
            return
        self.outcome = outcome
        if grace > 0 and self.sandboxed and not _started(self.group):
            # The sandbox's first process ignores TERM, and the command it is about to
            # start would never get it: nothing has started that could stop gracefully.
            grace = 0.0
        if grace > 0:
            contain.signal_quietly(self.group, signal.SIGTERM, group=True)
        else:
            self._kill()
        self.kill_at = clock.monotonic() + grace

    def escalate(self) -> None:
        if self.kill_at is not None and clock.monotonic() >= self.kill_at:
            self._kill()
            self.kill_at = None

    def _kill(self) -> None:
        contain.signal_quietly(self.group, signal.SIGKILL, group=True)
        if self.sandboxed:
            # The sandbox's first process itself: while bwrap sets the sandbox up it is
            # not yet the leader of its group. The kernel ends the namespace with it.
            contain.signal_quietly(self.group, signal.SIGKILL)


def _started(init: int) -> bool:
    """True once the sandbox's first process `init` has started the command (its child)."""
    return any(proc.ppid == init for proc in contain.processes())


def _above_stdio(fd: int) -> int:
    """`fd` moved to a number above the ones a child's descriptors are put at (0 to 3)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


def sandbox_init(info_fd: int) -> int | None:
    """The pid of the sandbox's first process, from what bwrap writes to --info-fd (and
    closes at once); None if it wrote nothing (it failed before: its error says why)."""
    data = b""
    try:
        while ready := select.select([info_fd], [], [], INFO_TIMEOUT)[0]:
            chunk = os.read(ready[0], 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(info_fd)
    try:
        pid = json.loads(data)["child-pid"]
    except (ValueError, KeyError, TypeError):
        return None
    return pid if isinstance(pid, int) and pid > 1 else None


class _Pipes:
    """The command's pipes: the prompt written to stdin, stdout and stderr kept (their
    ends), progress lines handed to the attempt as they come."""

    def __init__(
        self, proc: subprocess.Popen[bytes], progress_fd: int, attempt: Attempt, wake_fd: int
    ) -> None:
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        self.proc, self.attempt, self.wake_fd = proc, attempt, wake_fd
        self.stdin = proc.stdin
        self.prompt = attempt.job.prompt.encode()
        self.output, self.errors = Tail(OUTPUT_MAX), Tail(STDERR_TAIL * 4)
        self.lines = Lines(16 * 1024)
        self.readers: dict[int, Tail | Lines] = {
            proc.stdout.fileno(): self.output,
            proc.stderr.fileno(): self.errors,
            progress_fd: self.lines,
        }
        self.sel = selectors.DefaultSelector()
        self.exited = os.pidfd_open(proc.pid)  # readable when the command exits

    def __enter__(self) -> _Pipes:
        for fd in self.readers:
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ)
        os.set_blocking(self.stdin.fileno(), False)
        self.sel.register(self.stdin, selectors.EVENT_WRITE)
        self.sel.register(self.wake_fd, selectors.EVENT_READ)
        self.sel.register(self.exited, selectors.EVENT_READ)
        return self

    def serve(self, timeout: float) -> None:
        """Wait up to `timeout` for the command, then serve what is ready."""
        for key, _ in self.sel.select(timeout):
            if key.fileobj is self.stdin:
                self.prompt = _feed(self.sel, self.stdin, self.prompt)
            elif key.fd in self.readers:
                self._read(key.fd)
            elif key.fd == self.wake_fd:
                _drain(self.wake_fd)

    def _read(self, fd: int, *, until_empty: bool = False) -> None:
        sink = self.readers[fd]
        while True:
            try:
                chunk = os.read(fd, CHUNK)
            except BlockingIOError:
                return
            if not chunk:
                self.sel.unregister(fd)
                return
            if isinstance(sink, Lines):
                for line in sink.add(chunk):
                    self.attempt.progress(line)
            else:
                sink.add(chunk)
            if not until_empty:
                return

    def __exit__(self, *exc: object) -> None:
        for fd in list(self.readers):  # what the command wrote before it ended
            if fd in self.sel.get_map():
                self._read(fd, until_empty=True)
        for line in self.lines.rest():
            self.attempt.progress(line)
        self.sel.close()
        os.close(self.exited)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def _feed(sel: selectors.BaseSelector, stdin: IO[bytes], prompt: bytes) -> bytes:
    """Write what the pipe takes of the prompt; close stdin when all of it is written."""
    try:
        written = os.write(stdin.fileno(), prompt[:CHUNK])
    except BrokenPipeError:
        written = len(prompt)  # the command does not read its stdin: fine
    except BlockingIOError:
        written = 0
    prompt = prompt[written:]
    if not prompt:
        sel.unregister(stdin)
        stdin.close()
    return prompt


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 512):
            pass
