"""What a job, a producer or a worker wrote reaches an operator's terminal visible, never
obeyed: no control character but newline and tab in what the commands print; --json exact.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

from click.testing import Result

from mobvibe import logs
from mobvibe.client import JobQueue
from mobvibe.logs import event
from mobvibe.sql import store
from mobvibe.terminal import visible
from tests.support.sqlclock import Clock

Cli = Callable[..., Result]
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# What a hostile prompt, output or worker id may carry: OSC 52 (write the clipboard), OSC 8
# (a link), OSC 0 (the window's title), DCS, CSI, a carriage return, C1 CSI and DCS, DEL.
CLIPBOARD = "\x1b]52;c;cm0gLXJmIH4=\x07"
LINK = "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\"
TITLE = "\x1b]0;owned\x07"
DCS = "\x1bP+q544e\x1b\\"
CSI = "\x1b[2J\x1b[31m"
C1 = "\x9b31m\x90q\x9c\x7f"
HOSTILE = f"{CLIPBOARD}{LINK}{TITLE}{DCS}{CSI}{C1}fine\rEVIL\tand\nmore"


def test_visible_shows_every_control_character_but_newline_and_tab() -> None:
    shown = visible(HOSTILE)
    assert not CONTROL.search(shown)
    assert shown.startswith("\\x1b]52;c;cm0gLXJmIH4=\\x07")
    assert "\\x9b31m\\x90q\\x9c\\x7f" in shown and "fine\\rEVIL\tand\nmore" in shown
    assert visible("plain: é ✓ 🚀\ttab\nline") == "plain: é ✓ 🚀\ttab\nline"


def test_jobs_workers_dlq_and_doctor_print_what_they_were_given_visible(
    queue: JobQueue, conn: Any, clock: Clock, cli: Cli
) -> None:
    session = queue.create_session(max_concurrency=3)
    failed = queue.enqueue(f"prompt {HOSTILE}", session_id=session, max_retries=1)
    running = queue.enqueue(f"second {HOSTILE}", session_id=session, idempotency_key=TITLE)
    first = store.claim(conn, f"worker {CLIPBOARD}")
    assert first is not None and first.id == failed
    payload = {"text": HOSTILE, "kind": "step"}
    assert store.add_events(conn, failed, first.lease_token, [(f"kind{CSI}", payload)]) == 1
    assert store.end_attempt(conn, failed, first.lease_token, f"err{DCS}", HOSTILE, HOSTILE)
    assert store.claim(conn, f"worker {LINK}") is not None
    # silent for an hour: the doctor names its worker
    conn.execute(
        "UPDATE coding_jobs SET heartbeat_at = now() - interval '1 hour' WHERE id = %s",
        [running],
    )

    printed = {
        "jobs show": cli("jobs", "show", str(failed)),
        "jobs show running": cli("jobs", "show", str(running)),
        "jobs list": cli("jobs", "list"),
        "workers": cli("workers"),
        "dlq list": cli("dlq", "list"),
        "doctor": cli("doctor"),
    }
    for command, result in printed.items():
        assert result.exit_code in (0, 1), result.output
        assert not CONTROL.search(result.stdout), f"{command}: {result.stdout!r}"
    assert "fine\\rEVIL" in printed["jobs show"].stdout
    assert "\\x1b]52;c;" in printed["workers"].stdout + printed["jobs show"].stdout
    assert "\\x1b]8;;" in printed["doctor"].stdout

    # --json is the data, exactly
    shown = json.loads(cli("jobs", "show", str(failed), "--json").stdout)
    assert shown["job"]["prompt"] == f"prompt {HOSTILE}" and shown["job"]["output"] == HOSTILE
    assert shown["events"][0]["payload"] == payload
    assert shown["events"][0]["kind"] == f"kind{CSI}"
    assert shown["attempts"][0]["worker_id"] == f"worker {CLIPBOARD}"
    assert shown["attempts"][0]["end_reason"] == f"err{DCS}"
    listed = [json.loads(line) for line in cli("jobs", "list", "--json").stdout.splitlines()]
    assert {job["worker_id"] for job in listed} >= {f"worker {LINK}"}


def test_the_text_log_shows_a_jobs_error_visible(capsys: Any) -> None:
    logs.setup("text", "info")
    try:
        event(logging.getLogger("t"), logging.WARNING, "job_failed", "failed", error=HOSTILE)
    finally:
        logging.getLogger().handlers.clear()
    line = capsys.readouterr().err
    assert "error=\\x1b]52;c;" in line
    assert not CONTROL.search(line.rstrip("\n"))
