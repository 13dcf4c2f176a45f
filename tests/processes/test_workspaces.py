"""Workspaces with real supervisors: a session's next prompt finds what its last one kept,
in a sandbox that shows it its own workspace alone; the parent evicts beyond the limits at
start and after attempts, never the workspace of a running attempt."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

from mobvibe.client import JobQueue
from tests.processes.test_metrics import value
from tests.support.commands import assert_one_error_line, run_command
from tests.support.http import get_text
from tests.support.supervisor import FAST, Running
from tests.support.waiting import wait_for


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def lines(output: str | None) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in (output or "").splitlines() if ": " in line)


def completed(queue: JobQueue, job: uuid.UUID) -> str:
    row = queue.get(job)
    assert row is not None and row.status == "completed", row
    return row.output or ""


def test_the_next_prompt_finds_what_the_last_kept_and_no_other_sessions_workspace(
    queue: JobQueue, supervisor: Callable[..., Running], tmp_path: Path
) -> None:
    root = tmp_path / "workspaces"
    other, mine = queue.create_session(), queue.create_session()
    secret = root / str(other) / "secret"
    agent = script(
        tmp_path / "agent",
        'cd "$MOBVIBE_WORKSPACE"\n'
        'echo "workspace: $MOBVIBE_WORKSPACE"\n'
        "echo \"found: $(ls -A | tr '\\n' ' ')\"\n"
        "echo \"beside: $(ls -A .. | tr '\\n' ' ')\"\n"
        f'echo "other: $(cat {secret} 2>/dev/null || echo unseen)"\n'
        'echo "$JOB_ID" > "prompt-$JOB_ID"\n'
        'echo "written by $SESSION_ID" > secret\n',
    )
    jobs = [queue.enqueue("go", session_id=s) for s in (other, mine, mine)]
    running = supervisor(
        "--exec", agent, "--workspaces", str(root), "--workers", "1", "--drain", *FAST
    )
    assert running.wait_exit(60) == 0, running.log()[-3000:]
    first, second = (lines(completed(queue, job)) for job in jobs[1:])
    assert first["workspace"] == second["workspace"] == str(root / str(mine))
    assert first["found"] == ""  # cold
    assert second["found"].split() == [f"prompt-{jobs[1]}", "secret"]  # warm
    assert first["beside"].strip() == str(mine)  # nothing else of the directory
    assert first["other"] == second["other"] == "unseen"
    assert secret.read_text() == f"written by {other}\n"
    assert stat.S_IMODE((root / str(mine)).stat().st_mode) == 0o700
    starts = [(e["session_id"], e["start"]) for e in running.events("workspace_taken")]
    assert starts == [(str(other), "cold"), (str(mine), "cold"), (str(mine), "warm")]


def test_a_python_handler_gets_the_workspace_and_the_pod_names_its_workers(
    queue: JobQueue, supervisor: Callable[..., Running], tmp_path: Path
) -> None:
    root = tmp_path / "workspaces"
    session = queue.create_session()
    jobs = [queue.enqueue(f"prompt {i}", session_id=session) for i in range(2)]
    running = supervisor(
        "--handler",
        "tests.processes.handlers:in_workspace",
        "--workspaces",
        str(root),
        "--pod-id",
        "mobvibe-supervisor-7f9c-x2",
        "--drain",
        *FAST,
    )
    assert running.wait_exit(60) == 0, running.log()[-3000:]
    path = str(root / str(session))
    assert completed(queue, jobs[0]) == path
    assert completed(queue, jobs[1]) == f"{path} prompt-{jobs[0]}"
    for job in jobs:
        (attempt,) = queue.attempts(job)
        assert (attempt.worker_id or "").startswith("mobvibe-supervisor-7f9c-x2:"), attempt


def test_beyond_the_count_the_idle_workspace_goes_and_the_running_ones_stays(
    queue: JobQueue, supervisor: Callable[..., Running], tmp_path: Path
) -> None:
    root = tmp_path / "workspaces"
    held, idle = queue.create_session(), queue.create_session()
    agent = script(
        tmp_path / "agent",
        'cd "$MOBVIBE_WORKSPACE"\n'
        'echo "mine" > kept\n'
        # links for the eviction to trip on: to /, to every workspace, to the held one
        'ln -s / to-root; ln -s "$(dirname "$PWD")" to-all\n'
        f"ln -s {root / str(held)} to-held\n"
        'if [ "$(cat)" = hold ]; then\n'
        "  while [ ! -e go ]; do sleep 0.05; done\n"
        "fi\n"
        "cat kept\n",
    )
    hold = queue.enqueue("hold", session_id=held)
    running = supervisor(
        "--exec",
        agent,
        "--workspaces",
        str(root),
        "--workspaces-max-count",
        "1",
        "--workers",
        "2",
        *FAST,
        metrics=True,
    )
    wait_for((root / str(held) / "kept").exists, 30, message="the held attempt")
    quick = queue.enqueue("quick", session_id=idle)
    (evicted,) = running.wait_event("workspace_evicted", timeout=30)
    assert (evicted["session_id"], evicted["over"]) == (str(idle), "count")
    assert completed(queue, quick) == "mine\n"
    assert not (root / str(idle)).exists()
    assert (root / str(held) / "kept").read_text() == "mine\n"
    (root / str(held) / "go").touch()
    wait_for(lambda: getattr(queue.get(hold), "status", None) == "completed", 30)
    text = wait_for(
        lambda: (
            (t := get_text(running.port, "/metrics")[1])
            and value(t, "mobvibe_workspace_starts_total", start="cold") == 2
            and t
        ),
        message="the metrics of both attempts",
    )
    assert value(text, "mobvibe_workspace_starts_total", start="warm") == 0
    assert value(text, "mobvibe_workspace_evictions_total") == 1
    wait_for(
        lambda: value(get_text(running.port, "/metrics")[1], "mobvibe_workspaces") == 1,
        message="one workspace kept after the held attempt's end",
    )
    # measured without following its links to /, to every workspace and to itself
    wait_for(
        lambda: 0 < value(get_text(running.port, "/metrics")[1], "mobvibe_workspace_bytes") < 1e6,
        message="the kept workspace measured",
    )
    wait_for(lambda: os.listdir(root) == [str(held)], message="the evicted one removed")


def test_at_start_the_supervisor_evicts_beyond_the_limits_oldest_first(
    supervisor: Callable[..., Running], tmp_path: Path
) -> None:
    root = tmp_path / "workspaces"
    sessions = [str(uuid.uuid4()) for _ in range(3)]
    for age, session in enumerate(sessions):
        (root / session).mkdir(parents=True)
        (root / session / "data").write_bytes(b"x" * 50_000)
        used = 1_000_000.0 + age
        os.utime(root / session, (used, used))
    (root / sessions[2] / "to-root").symlink_to("/")
    (root / sessions[2] / "to-sibling").symlink_to(root / sessions[1])
    running = supervisor(
        "--handler",
        "tests.processes.handlers:by_prompt",
        "--workspaces",
        str(root),
        "--workspaces-max-bytes",
        "100KiB",
        *FAST,
    )
    evicted = [e["session_id"] for e in running.wait_event("workspace_evicted", 2)]
    assert evicted == sessions[:2], running.log()[-3000:]
    wait_for(lambda: os.listdir(root) == [sessions[2]], message="the evicted ones removed")
    assert (root / sessions[2] / "data").stat().st_size == 50_000


def test_limits_without_a_directory_and_a_bad_pod_id_are_refused_in_one_line(
    db_url: str, tmp_path: Path
) -> None:
    handler = ["--handler", "tests.processes.handlers:by_prompt", "--metrics-port", "0"]
    refused = [
        (["--workspaces-max-count", "3"], "need --workspaces DIR"),
        (["--pod-id", "pod:1"], "--pod-id must be"),
        (["--workspaces", "/etc/mobvibe"], "every session would see every workspace"),
        (["--workspaces", str(tmp_path), "--workspaces-max-bytes", "lots"], "is not a size"),
    ]
    for args, said in refused:
        result = run_command("mobvibe-supervisor", *handler, *args, url=db_url)
        assert said in assert_one_error_line(result, 2), args
    assert not os.path.exists("/etc/mobvibe")


def test_an_attempt_without_its_workspace_fails_and_the_supervisor_runs_on(
    queue: JobQueue, supervisor: Callable[..., Running], tmp_path: Path
) -> None:
    root = tmp_path / "workspaces"
    running = supervisor(
        "--handler", "tests.processes.handlers:by_prompt", "--workspaces", str(root), *FAST
    )
    root.rmdir()
    root.write_text("not a directory any more")  # the volume gone from under it
    job = queue.enqueue("ok", max_retries=1)
    wait_for(lambda: getattr(queue.get(job), "status", None) == "failed", 30)
    row = queue.get(job)
    assert row is not None and "the session's workspace cannot be had" in (row.error_message or "")
    (unavailable,) = running.wait_event("workspace_unavailable")
    assert unavailable["job_id"] == str(job)
    assert running.proc.poll() is None
