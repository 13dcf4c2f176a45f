"""Each `--exec` attempt in a bubblewrap sandbox: the job is a stranger.

A coding agent runs whatever its prompt steers it to, so its command runs under
`bwrap` (Debian's `bubblewrap`, the sandbox coding agents use on Linux) in
namespaces of its own. Its own PID namespace: it sees, signals and outlives no
process outside its attempt (the namespace's first process dies with its parent,
and the kernel ends the rest with it). Its own mount namespace: the system
read-only (/usr, /etc and the merged-/usr links, nothing else of the host: no
/run, /var, /home or /root, so no database socket and no credential file), its
own /tmp and HOME on tmpfs, its own /dev and /proc, and its program's file
read-only at its own path. Its own IPC, UTS and cgroup namespaces, where they
cost nothing; its own network namespace with `--sandbox-network off`.

This module only builds bwrap's argument list and checks, once at start, that a
sandbox can be made here (docs/backend/JOB_QUEUE.md, "The sandbox").
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, replace

from mobvibe.errors import ConfigError

SYSTEM = ("/usr", "/etc")  # shown read-only
# Top-level names that merged-/usr systems make links into /usr (real directories on
# older ones, shown read-only then).
ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
HOME = "/home/job"
TMP = "/tmp"  # noqa: S108 - a tmpfs of the sandbox's own, not the host's /tmp
PROBE_TIMEOUT = 10.0
INSTALL = "install bubblewrap (apt-get install bubblewrap)"
ALLOW = (
    "let it make namespaces (in a container: the seccomp profile "
    "deploy/kubernetes/seccomp/mobvibe-sandbox.json and the settings of deploy/README.md, "
    '"The sandbox"; on a host: unprivileged user namespaces allowed)'
)
OR_NOT = "or give --unsandboxed to run jobs without a sandbox (never for untrusted code)"


class SandboxUnavailableError(ConfigError):
    """No sandbox can be made here: bwrap is missing, or the kernel refuses its namespaces."""


@dataclass(frozen=True)
class Sandbox:
    """What an attempt's sandbox shows; argv() wraps a command in it."""

    bwrap: str
    network: bool = True
    # A /proc of the sandbox's own (False: an empty directory, where the runtime masks
    # the host's /proc and the kernel then refuses a new one).
    fresh_proc: bool = True
    program: str | None = None  # the --exec program's file, shown read-only at its path
    # One directory the job may write, at its own path: where a session's workspace goes.
    writable: str | None = None

    def argv(self, command: Sequence[str], info_fd: int | None = None) -> list[str]:
        """bwrap's command line that runs `command` in this sandbox (its first process's pid
        written as JSON to `info_fd`)."""
        return [
            self.bwrap,
            *self._namespaces(),
            *_filesystem(self.fresh_proc),
            *self._own_files(),
            *(["--info-fd", str(info_fd)] if info_fd is not None else []),
            "--",
            *command,
        ]

    def _namespaces(self) -> list[str]:
        # A user namespace even as root: the job's processes then hold no capability
        # anywhere. --disable-userns keeps them from making user namespaces of their own;
        # bwrap does it through /proc/sys, which runtimes that mask /proc make read-only.
        return [
            "--unshare-user",
            *(["--disable-userns"] if self.fresh_proc else []),
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            *([] if self.network else ["--unshare-net"]),
            "--die-with-parent",
            # Its own session: no controlling terminal to push input into (TIOCSTI).
            "--new-session",
            "--cap-drop",
            "ALL",
        ]

    def _own_files(self) -> list[str]:
        found = []
        if self.program is not None and not shows_system(self.program):
            found += ["--ro-bind", self.program, self.program]
        if self.writable is not None:
            found += ["--bind", self.writable, self.writable]
        return found

    def shows(self, path: str) -> bool:
        """True if the job could see `path` (a file, or a directory's contents)."""
        path = os.path.normpath(path)
        own = [p for p in (self.program, self.writable) if p is not None]
        return shows_system(path) or any(_under(path, p) for p in own)

    def describe(self) -> str:
        """For the log line at start."""
        proc = (
            "its own /proc"
            if self.fresh_proc
            else "an empty /proc and user namespaces of its own allowed (the host's /proc "
            "is masked)"
        )
        network = "the host's network" if self.network else "no network"
        return f"{proc}, {network}"


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def shows_system(path: str) -> bool:
    """True if `path` lies in the system part every sandbox shows (read-only)."""
    path = os.path.normpath(path)
    top = path.lstrip("/").split("/", 1)[0]
    return any(_under(path, d) for d in SYSTEM) or top in ROOT_LINKS


def _filesystem(fresh_proc: bool) -> list[str]:
    args = []
    for directory in SYSTEM:
        args += ["--ro-bind", directory, directory]
    for name in ROOT_LINKS:
        path = f"/{name}"
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return [
        *args,
        "--dev",
        "/dev",
        *(["--proc", "/proc"] if fresh_proc else ["--dir", "/proc"]),
        "--tmpfs",
        TMP,
        "--tmpfs",
        "/home",
        "--dir",
        HOME,
        "--setenv",
        "HOME",
        HOME,
        "--setenv",
        "TMPDIR",
        TMP,
        "--chdir",
        HOME,
    ]


def prepare(network: bool, program: str | None, writable: str | None = None) -> Sandbox:
    """The sandbox jobs will run in, once a trivial command ran in it here.

    A /proc of its own first; where the kernel refuses one (the runtime masks the
    host's), an empty /proc. SandboxUnavailableError, naming the cause and the fix,
    when neither can be made.
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailableError(
            f"cannot sandbox --exec commands: no bwrap on PATH: {INSTALL}, {OR_NOT}"
        )
    sandbox = Sandbox(bwrap, network, True, program, writable)
    failure = _probe(sandbox)
    if failure is None:
        return sandbox
    if _probe(replace(sandbox, fresh_proc=False)) is None:
        return replace(sandbox, fresh_proc=False)
    raise SandboxUnavailableError(f"cannot sandbox --exec commands: {failure}: {ALLOW}, {OR_NOT}")


def _probe(sandbox: Sandbox) -> str | None:
    """None if `true` runs in the sandbox; else bwrap's complaint, in one line."""
    try:
        done = subprocess.run(
            sandbox.argv(["true"]),
            capture_output=True,
            timeout=PROBE_TIMEOUT,
            check=False,
            env={"PATH": os.defpath},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{sandbox.bwrap}: {exc}"
    if done.returncode == 0:
        return None
    said = done.stderr.decode(errors="replace").strip().splitlines()
    if not said:
        return f"{sandbox.bwrap} exited {done.returncode}"
    # Its first sentence: bwrap's pointers to its own documentation make the line long.
    return said[-1].split(" See <")[0].rstrip(".")
