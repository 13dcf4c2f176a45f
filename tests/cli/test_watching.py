"""stats --watch, stats --until-drained and watch: refreshed with a timestamp, every 2 s by
default, redrawn in place on a terminal, and stopped by Ctrl-C with exit code 0."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time
from typing import Any

import psycopg

from mobvibe.client import JobQueue
from mobvibe.sql import store
from tests.support.commands import start_command
from tests.support.rows import WORKER
from tests.support.waiting import wait_for

TITLE = re.compile(
    r"^Queue statistics at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ \(every 2s; Ctrl-C stops\):$"
)


def start(url: str, *args: str, **popen: Any) -> subprocess.Popen[str]:
    return start_command("mobvibe-queue", *args, url=url, **popen)


def read_lines(proc: subprocess.Popen[str], count: int, timeout: float = 20) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while len(lines) < count:
        assert time.monotonic() < deadline, f"only {lines!r} after {timeout} s"
        lines.append(proc.stdout.readline().rstrip("\n"))
    return lines


def interrupt(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Ctrl-C: the exit code and what the command wrote on stderr."""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    return proc.returncode, err


def test_stats_watch_prints_a_timestamped_block_every_2s_and_ctrl_c_exits_0(
    queue: JobQueue, db_url: str
) -> None:
    queue.enqueue("one")
    proc = start(db_url, "stats", "--watch")
    first = read_lines(proc, 8)  # title, five counts, oldest pending, a blank line
    began = time.monotonic()
    second = read_lines(proc, 1)
    waited = time.monotonic() - began
    assert TITLE.match(first[0]), first[0]
    assert first[1] == "  Pending:    1" and first[-1] == ""
    assert TITLE.match(second[0]) and 1.5 < waited < 4
    code, err = interrupt(proc)
    assert code == 0
    assert "Aborted" not in err and "Traceback" not in err and not err.strip()


def test_stats_watch_on_a_terminal_redraws_in_place(db_url: str) -> None:
    leader, follower = pty.openpty()
    try:
        proc = start(db_url, "stats", "--watch", "--interval", "0.2", stdout=follower)
        seen = b""
        deadline = time.monotonic() + 20
        while seen.count(b"Queue statistics at") < 2 and time.monotonic() < deadline:
            if select.select([leader], [], [], 0.5)[0]:
                seen += os.read(leader, 65536)
        code, _ = interrupt(proc)
    finally:
        os.close(leader)
        os.close(follower)
    assert seen.count(b"\x1b[2J") >= 2  # the screen cleared before each block
    assert code == 0


def test_stats_watch_json_gives_each_reading_its_time(db_url: str) -> None:
    proc = start(db_url, "stats", "--watch", "--json", "--interval", "0.2")
    lines = read_lines(proc, 2)
    assert all(line.startswith('{"time": "') and '"pending_count": 0' in line for line in lines)
    assert interrupt(proc)[0] == 0


def test_watch_exits_0_on_ctrl_c(db_url: str, conn: psycopg.Connection[Any]) -> None:
    proc = start(db_url, "watch")

    def listening() -> bool:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mobvibe-listener' "
            "AND datname = current_database()"
        ).fetchone()
        return bool(row and row[0])

    wait_for(listening, timeout=20, message="watch to listen")
    code, err = interrupt(proc)
    assert code == 0 and "Traceback" not in err and "Aborted" not in err


def test_until_drained_says_when_a_retry_is_due_and_exits_once_nothing_is_left(
    queue: JobQueue, conn: psycopg.Connection[Any], db_url: str
) -> None:
    job_id = queue.enqueue("fails once")
    job = store.claim(conn, WORKER)
    assert job is not None
    assert store.fail(conn, job_id, "boom", job.lease_token) is True  # retried in about 10 s
    proc = start(db_url, "stats", "--until-drained", "--interval", "0.2")
    (line,) = read_lines(proc, 1)
    assert re.match(
        r"^\d\d:\d\d:\d\d pending 1 \(1 waiting for a retry, the next due in \d+ s\), "
        r"processing 0, completed 0, failed 0, cancelled 0$",
        line,
    ), line
    assert queue.cancel(job_id) is True
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert out.splitlines()[-1].endswith(
        "pending 0, processing 0, completed 0, failed 0, cancelled 1"
    )
