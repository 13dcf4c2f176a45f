"""A real `mobvibe-supervisor` as a subprocess: start it, find its workers, read their memory."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

from bench import cpu

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


class Supervisor:
    """`mobvibe-supervisor ARGS` (or `program`) against `url`; its log goes to a temporary
    file."""

    def __init__(
        self,
        url: str,
        *args: str,
        env: dict[str, str] | None = None,
        program: str = "mobvibe-supervisor",
    ) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="mobvibe-bench-sup-"))
        self.log_path = self.workdir / "supervisor.log"
        command = [str(BIN / program), *args]
        # PYTHONPATH: so that --handler bench.handlers:... imports from this checkout.
        full_env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT), **(env or {})}
        self.started = time.monotonic()
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                command,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[int]:
        """Pids of the supervisor's child processes (workers, the hub, the HTTP child)."""
        return cpu.children(self.pid)

    def workers(self) -> list[int]:
        """Pids of the worker processes."""
        return self.named("mobvibe-worker")

    def named(self, name: str) -> list[int]:
        """Pids of the children called `name` in /proc/PID/comm (the supervisor names
        them: mobvibe-worker, mobvibe-hub, mobvibe-http)."""
        found = []
        for pid in self.children():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                    found.append(pid)
        return found

    def wait(self, timeout: float) -> int:
        """Wait for the supervisor to exit; kill it and raise after `timeout` seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(
                f"the supervisor did not exit within {timeout:g} s; its log: {self.log_tail()}"
            ) from None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (after SIGCONT, in case it was stopped), then SIGKILL of its group."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGCONT)
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rss_mb(pid: int) -> dict[str, float]:
    """VmRSS (all resident pages, shared ones included) and RssAnon (private) in MB."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            found[key] = round(int(value.split()[0]) / 1024, 1)
    return found


def supervisor_args(workers: int, handler: str | None, *extra: str) -> list[str]:
    """The command line every benchmark run shares (no --handler when `handler` is None)."""
    return [
        "--workers",
        str(workers),
        *(["--handler", handler] if handler else []),
        "--metrics-port",
        "0",
        "--log-level",
        "warning",
        *extra,
    ]
