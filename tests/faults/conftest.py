"""The fault suite runs the real supervisor; its fixture comes from the process tests.

A job's processes report to the test through the ledger: an abstract Unix datagram
socket the test listens on, named by $TEST_LEDGER. Abstract sockets belong to the
network namespace, which a sandboxed job shares with its host while the sandbox's
network is on (the default): a channel out that needs no file the job could write.
Each datagram is `NAME TIME` (a tick of one process: appended to the file NAME in the
ledger directory) or a JSON object (a finding of a hostile job: appended to
findings.jsonl).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.processes.conftest import supervisor  # noqa: F401 - a fixture, used by name
from tests.support.processes import processes_with

FINDINGS = "findings.jsonl"
# Rows of the hostile-job matrix, printed at the end of the run.
MATRIX: list[dict[str, str]] = []


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Callable[..., None]:
    """report(name, figure=value, ...) prints the test's figures past pytest's capture."""

    def say(name: str, **figures: Any) -> None:
        line = " ".join(f"{key}={value}" for key, value in figures.items())
        with capsys.disabled():
            print(f"\nFAULT {name}: {line}")

    return say


def _record(directory: Path, datagram: bytes) -> None:
    if datagram.startswith(b"{"):
        with (directory / FINDINGS).open("ab") as out:
            out.write(datagram.rstrip(b"\n") + b"\n")
        return
    name, _, tick = datagram.decode().partition(" ")
    if name and "/" not in name and not name.startswith("."):
        with (directory / name).open("a") as out:
            out.write(tick + "\n")


def _collect(sock: socket.socket, directory: Path) -> None:
    while True:
        try:
            datagram = sock.recv(65536)
        except OSError:
            return  # closed: the test is over
        if not datagram:
            return
        _record(directory, datagram)


def job_processes(ledger: Path, *, roles_only: bool = False) -> list[int]:
    """Live processes of this test's jobs (found by the ledger in their environment): every
    one, the shells and sandboxes included, or only those of the jobs' own roles (the job
    scripts, run by their interpreter)."""
    found = []
    for pid, args in processes_with(f"TEST_LEDGER={ledger}"):
        if any(b"mobvibe-supervisor" in arg for arg in args):  # it has the marker too
            continue
        if not roles_only or (len(args) > 1 and args[1].endswith(b"_job.py")):
            found.append(pid)
    return found


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Path]:
    """The ledger's directory, whose path is also the name of its abstract socket."""
    path = tmp_path / "ledger"
    path.mkdir()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + str(path))
    reader = threading.Thread(target=_collect, args=(sock, path), daemon=True)
    reader.start()
    try:
        yield path
    finally:
        for pid in job_processes(path):  # never leave a process behind, even when failing
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        reader.join(5)


def findings(ledger: Path) -> dict[str, list[Any]]:
    """What a hostile job reported: attack -> what it reached (empty: nothing)."""
    path = ledger / FINDINGS
    if not path.exists():
        return {}
    found: dict[str, list[Any]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        found.setdefault(record["attack"], []).extend(record["reached"])
    return found


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The hostile-job matrix: each attack, what it reached, what stopped it."""
    if not MATRIX:
        return
    columns = ("attack", "reached", "stopped by", "overlaps", "left")
    widths = {c: max(len(c), *(len(row[c]) for row in MATRIX)) for c in columns}
    terminalreporter.write_sep("-", "hostile-job matrix")
    terminalreporter.write_line("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for row in MATRIX:
        terminalreporter.write_line("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())


def matrix_row(
    attack: str, reached: str, stopped_by: str, overlaps: int = 0, left: int = 0
) -> None:
    """Add a row to the hostile-job matrix."""
    MATRIX.append(
        {
            "attack": attack,
            "reached": reached,
            "stopped by": stopped_by,
            "overlaps": str(overlaps),
            "left": str(left),
        }
    )
