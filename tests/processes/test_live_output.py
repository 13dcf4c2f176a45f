"""What a running command prints is seen while it runs: its output so far kept with the job,
shown by `jobs show` and the status page, at a bounded rate."""

from __future__ import annotations

from collections.abc import Callable

from mobvibe.client import JobQueue
from tests.support.commands import queue_output
from tests.support.http import get_text
from tests.support.supervisor import FAST, Running
from tests.support.waiting import wait_for

# Says something at once, something else a second later, then works until cancelled.
TALKER = "echo 'reading the repository'; sleep 1; echo 'running the tests'; exec sleep 60"


def test_a_running_commands_output_is_seen_before_it_ends(
    queue: JobQueue, db_url: str, supervisor: Callable[..., Running]
) -> None:
    job = queue.enqueue("talk while you work")
    running = supervisor("--exec", TALKER, "--workers", "1", *FAST, metrics=True)

    def shown() -> str:
        return queue_output(db_url, "jobs", "show", str(job))

    first = wait_for(lambda: "reading the repository" in (text := shown()) and text, timeout=20)
    assert "status:           processing" in first
    assert "Output so far (its end):\n  reading the repository" in first
    both = wait_for(lambda: "running the tests" in (text := shown()) and text, timeout=20)
    assert "status:           processing" in both
    status, page = get_text(running.port, f"/jobs/{job}")
    assert status == 200 and "running the tests" in page

    assert queue.cancel(job) is True
    wait_for(lambda: getattr(queue.get(job), "status", None) == "cancelled", timeout=20)
    assert queue.get(job).output == "reading the repository\nrunning the tests\n"  # type: ignore[union-attr]
