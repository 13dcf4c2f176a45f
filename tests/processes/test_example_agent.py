"""deploy/agent/example-agent through a real supervisor, in its sandbox: one session's first
prompt clones the project into the session's workspace (a cold start), its second, under a
supervisor started again, pulls the commit made since (a warm start)."""

from __future__ import annotations

import functools
import http.server
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mobvibe.client import JobQueue
from tests.support.commands import ROOT
from tests.support.supervisor import FAST, Running

AGENT = ROOT / "deploy" / "agent" / "example-agent"
IDENTITY = ["-c", "user.name=Test", "-c", "user.email=test@example.invalid"]


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        ["git", *IDENTITY, *args], cwd=cwd, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


class Project:
    """A project in git, and its bare copy served over HTTP (git's dumb protocol)."""

    def __init__(self, where: Path) -> None:
        self.work, self.served = where / "work", where / "served"
        self.work.mkdir()
        self.served.mkdir()
        git("init", "--quiet", "--initial-branch=main", cwd=self.work)
        self.commit("first version")
        git("clone", "--quiet", "--bare", str(self.work), "project.git", cwd=self.served)
        self.publish()

    def commit(self, message: str) -> None:
        (self.work / "NOTES").write_text(message)
        git("add", "NOTES", cwd=self.work)
        git("commit", "--quiet", "-m", message, cwd=self.work)

    def publish(self) -> None:
        bare = self.served / "project.git"
        git("push", "--quiet", str(bare), "main", cwd=self.work)
        git("update-server-info", cwd=bare)


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Project, str]]:
    """The project, and the URL a sandboxed job clones it from (the host's network)."""
    made = Project(tmp_path)
    handler = functools.partial(Quiet, directory=str(made.served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield made, f"http://127.0.0.1:{server.server_address[1]}/project.git"
    server.shutdown()
    server.server_close()


def test_the_example_agent_clones_on_a_cold_start_and_pulls_on_a_warm_one(
    queue: JobQueue,
    supervisor: Callable[..., Running],
    tmp_path: Path,
    project: tuple[Project, str],
) -> None:
    served, url = project
    session = queue.create_session()
    root = tmp_path / "workspaces"
    options = ["--exec", str(AGENT), "--exec-env", "AGENT_PROJECT_URL"]
    options += ["--workspaces", str(root), "--workers", "1", "--drain", *FAST]
    outputs = []
    for change in ("first version", "second version"):
        if change != "first version":
            served.commit(change)
            served.publish()
        head = git("rev-parse", "--short", "HEAD", cwd=served.work)
        job = queue.enqueue("add a button", session_id=session)
        running = supervisor(*options, env={"AGENT_PROJECT_URL": url})
        assert running.wait_exit(60) == 0, running.log()[-3000:]
        row = queue.get(job)
        assert row is not None and row.status == "completed", (row, running.log()[-3000:])
        outputs.append((row.output or "").splitlines())
        assert f"project at {head}: {change}" in outputs[-1], outputs[-1]
    assert outputs[0][0] == "cold start: cloned the project"
    assert outputs[1][0] == "warm start: pulled the project"
    kept = root / str(session) / "project"
    assert (kept / "NOTES").read_text() == "second version"
