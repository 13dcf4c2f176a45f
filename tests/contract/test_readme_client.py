"""The README's Python client, run as it is written while a worker runs its job; and a
listener opened before an enqueue, which misses none of that job's news."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from typing import Any

import psycopg

from mobvibe.client import JobQueue
from mobvibe.sql import store
from mobvibe.vocabulary import EndReason
from tests.support.commands import command_env
from tests.support.source import ROOT
from tests.support.waiting import wait_for


def snippet() -> str:
    """The README's Python client, as written."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split("The Python client")[1].split("```python\n")[1].split("```")[0]


def run_one_job(url: str) -> uuid.UUID:
    """A worker's part: claim the first job to come, report a step, complete it."""
    with psycopg.connect(url, autocommit=True) as conn:
        job = wait_for(lambda: store.claim(conn, "readme-worker"), timeout=30)
        store.add_events(conn, job.id, job.lease_token, [("step", {"text": "scaffolding"})])
        store.end_attempt(conn, job.id, job.lease_token, EndReason.COMPLETED, None, "todo app")
        return job.id


def test_the_readmes_client_runs_as_written(db_url: str) -> None:
    worker = threading.Thread(target=run_one_job, args=(db_url,), daemon=True)
    worker.start()
    done = subprocess.run(
        [sys.executable, "-c", snippet()],
        env=command_env(db_url),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    worker.join(30)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("job_progress ") and "'step'" in line for line in lines), lines
    assert any("'new_status': 'completed'" in line for line in lines), lines
    assert lines[-1].startswith("todo app [Event(")


def test_a_listener_opened_before_an_enqueue_misses_none_of_its_news(
    queue: JobQueue, conn: Any
) -> None:
    with queue.listen(["job_status_changed"]) as news:
        job = queue.enqueue("done before anyone iterates")
        claimed = store.claim(conn, "w")
        assert claimed is not None and claimed.id == job
        store.end_attempt(conn, job, claimed.lease_token, EndReason.COMPLETED)
        seen = []
        for note in news.iterate(timeout=10):
            seen.append(note.payload["new_status"])
            if note.payload["new_status"] == "completed":
                break
    assert seen == ["processing", "completed"]


def test_the_client_finds_the_database_as_the_commands_do(db_url: str, monkeypatch: Any) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    with JobQueue() as queue:
        assert queue.url == db_url and queue.stats().pending_count == 0
