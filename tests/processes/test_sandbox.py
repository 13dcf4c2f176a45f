"""The sandbox at start: made and said so, or refused in one line that names the fix, unless
the operator runs without it on purpose; and what a job sees from inside."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from mobvibe.client import JobQueue
from mobvibe.supervisor.attempt import KILL_GRACE, Outcome
from mobvibe.supervisor.command import _Stopper, sandbox_init
from mobvibe.supervisor.sandbox import prepare
from tests.support.commands import BIN, ROOT
from tests.support.supervisor import FAST, Running


def run_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "mobvibe-supervisor"), "--metrics-port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        cwd=cwd,
        check=False,
    )


def path_without_bwrap(tmp_path: Path) -> str:
    """A PATH with a shell and nothing else: no bwrap on it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sh").symlink_to("/bin/sh")
    return str(bin_dir)


def test_without_bwrap_the_supervisor_refuses_to_start_in_one_line_naming_the_fix(
    db_url: str, tmp_path: Path
) -> None:
    result = run_cli(
        "--exec", "true", env={"DATABASE_URL": db_url, "PATH": path_without_bwrap(tmp_path)}
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "no bwrap on PATH" in result.stderr
    assert "apt-get install bubblewrap" in result.stderr and "--unsandboxed" in result.stderr
    assert "Traceback" not in result.stderr


def test_unsandboxed_on_purpose_runs_the_command_and_warns(
    db_url: str, tmp_path: Path, queue: JobQueue
) -> None:
    job = queue.enqueue("hello")
    env = {"DATABASE_URL": db_url, "PATH": path_without_bwrap(tmp_path), "MOBVIBE_UNSANDBOXED": "1"}
    result = run_cli(
        "--exec",
        'read -r line; echo "$line"',
        "--drain",
        "--workers",
        "1",
        "--log-format",
        "json",
        *FAST,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    (warning,) = [r for r in records if r.get("event") == "sandbox_off"]
    assert warning["level"] == "WARNING" and "without a sandbox" in warning["message"]
    assert getattr(queue.get(job), "output", None) == "hello\n"


def test_a_database_socket_directory_the_job_would_see_is_refused(db_url: str) -> None:
    result = run_cli(
        "--exec",
        "true",
        "--listen-url",
        "postgresql://mobvibe@/mobvibe?host=/etc/postgresql",
        env={"DATABASE_URL": db_url},
    )
    assert result.returncode == 2, result.stderr
    assert "/etc/postgresql would be visible to the sandboxed jobs" in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr


def test_a_program_given_by_a_relative_path_is_refused(db_url: str, tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    agent.write_text("#!/bin/sh\necho hi\n")
    agent.chmod(0o755)
    result = run_cli("--exec", "./agent", env={"DATABASE_URL": db_url}, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "give the full path of './agent'" in result.stderr


def test_a_job_sees_the_system_its_program_and_its_own_processes_only(
    queue: JobQueue, supervisor: Callable[..., Running], tmp_path: Path
) -> None:
    """The program lies in /tmp, which the sandbox replaces with a tmpfs of its own: its
    file is shown at its own path all the same, read-only."""
    program = tmp_path / "look"
    program.write_text(
        "#!/bin/sh\n"
        'echo "root: $(ls -A / | tr "\\n" " ")"\n'
        'echo "processes: $(ls /proc | grep -c "^[0-9]")"\n'
        'echo "pid: $$ ppid: $PPID"\n'
        f"touch {program} 2>/dev/null && echo 'program: writable' || echo 'program: read-only'\n"
        "echo x > /usr/x 2>/dev/null && echo 'usr: writable' || echo 'usr: read-only'\n"
        "echo x > /tmp/x && echo \"tmp: $(ls -A /tmp | tr '\\n' ' ')\"\n"
        'echo "home: $HOME $(pwd)"\n'
        'echo "beside: $(ls -A "$(dirname "$0")" | tr "\\n" " ")"\n'
    )
    program.chmod(0o755)
    job = queue.enqueue("look around")
    running = supervisor("--exec", str(program), "--workers", "1", "--drain", *FAST)
    assert running.wait_exit(30) == 0, running.log()[-2000:]
    (ready,) = running.events("sandbox_ready")
    assert ready["proc"] == "fresh" and ready["network"] is True
    row = queue.get(job)
    assert row is not None and row.status == "completed", row
    seen = dict(line.split(": ", 1) for line in (row.output or "").splitlines())
    system = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc"}
    assert set(seen["root"].split()) <= {*system, "dev", "proc", "tmp", "home"}, seen
    pid, _, ppid = seen["pid"].partition(" ppid: ")
    assert int(pid) <= 3 and int(ppid) <= 2, seen  # the namespace's own pids
    assert int(seen["processes"]) < 10, seen  # its own few, not the host's hundreds
    assert seen["program"] == "read-only" and seen["usr"] == "read-only"
    # the host's /tmp is not there: only the path to the program, in a tmpfs of its own
    assert set(seen["tmp"].split()) == {"x", tmp_path.parts[2]}, seen
    assert seen["beside"].split() == ["look"]  # not the supervisor's log beside it
    assert seen["home"] == "/home/job /home/job"


def test_a_stop_before_the_sandboxed_command_started_kills_the_sandbox_at_once() -> None:
    """The sandbox's first process ignores SIGTERM and the command it has yet to start would
    never get it: a cancel in an attempt's first milliseconds must not wait out the grace."""
    sandbox = prepare(True, None)
    info_r, info_w = os.pipe()
    hold_r, hold_w = os.pipe()  # bwrap starts the command once a byte comes: never here
    argv = sandbox.argv(["sleep", "60"], info_fd=info_w)
    argv[1:1] = ["--block-fd", str(hold_r)]
    proc = subprocess.Popen(argv, pass_fds=(info_w, hold_r))
    os.close(info_w)
    os.close(hold_r)
    try:
        init = sandbox_init(info_r)
        assert init is not None
        stopper = _Stopper(init, sandboxed=True)
        stopper.stop(Outcome(False, "cancelled by request", "cancelled"), KILL_GRACE)
        assert proc.wait(timeout=2) != 0, "killed, not left to the grace"
    finally:
        os.close(hold_w)
        proc.kill()
        proc.wait()
