"""Logs: text for a person at a terminal, JSON for a collector, times in ISO 8601 UTC."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = (
    "import logging, sys\n"
    "from mobvibe.logs import event, setup\n"
    "setup(*sys.argv[1:])\n"
    "event(logging.getLogger('t'), logging.INFO, 'job_completed', 'job completed', job_id='j1')\n"
)
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def _logged(*args: str, terminal: bool) -> str:
    """What the script writes on stderr, a pseudo-terminal's or a pipe's."""
    command = [sys.executable, "-c", SCRIPT, *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TZ": "America/New_York"}
    if not terminal:
        return subprocess.run(
            command, env=env, stderr=subprocess.PIPE, text=True, check=True, timeout=30
        ).stderr
    leader, follower = pty.openpty()
    try:
        subprocess.run(command, env=env, stderr=follower, check=True, timeout=30)
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed: everything was read
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)


def test_a_terminal_gets_one_text_line_with_a_utc_iso_time() -> None:
    (line,) = _logged(terminal=True).splitlines()
    assert re.match(rf"^{ISO} INFO +job_completed +job completed job_id=j1 pid=\d+$", line), line


def test_a_pipe_gets_json_with_a_utc_iso_time_whatever_the_local_zone() -> None:
    (line,) = _logged(terminal=False).splitlines()
    record = json.loads(line)
    assert re.fullmatch(ISO, record["time"])
    assert record["event"] == "job_completed" and record["job_id"] == "j1"
    assert record["level"] == "INFO" and record["message"] == "job completed"


def test_the_log_format_option_overrides_the_terminal() -> None:
    assert json.loads(_logged("json", terminal=True).strip())["event"] == "job_completed"
    assert not _logged("text", terminal=False).startswith("{")
