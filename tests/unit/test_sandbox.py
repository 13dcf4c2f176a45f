"""The sandbox's argument list for bwrap: what a job's sandbox shows, and in which order."""

from __future__ import annotations

from mobvibe.supervisor.sandbox import Sandbox

BWRAP = "/usr/bin/bwrap"


def pairs(argv: list[str], flag: str) -> list[str]:
    """The values that follow each `flag` in argv."""
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_the_command_runs_after_the_options_in_namespaces_of_its_own() -> None:
    argv = Sandbox(BWRAP).argv(["sh", "-c", "agent"], info_fd=12)
    assert argv[0] == BWRAP and argv[-4:] == ["--", "sh", "-c", "agent"]
    for flag in ("--unshare-pid", "--unshare-user", "--disable-userns", "--die-with-parent"):
        assert flag in argv
    assert "--new-session" in argv and pairs(argv, "--cap-drop") == ["ALL"]
    assert pairs(argv, "--info-fd") == ["12"]
    assert "--unshare-net" not in argv  # the network is on unless the operator says off
    assert "--unshare-net" in Sandbox(BWRAP, network=False).argv(["true"])


def test_the_system_is_read_only_and_tmp_home_dev_proc_are_the_sandboxs_own() -> None:
    argv = Sandbox(BWRAP).argv(["true"])
    assert {"/usr", "/etc"} <= set(pairs(argv, "--ro-bind"))
    assert not {"/", "/run", "/var", "/home", "/root"} & set(pairs(argv, "--ro-bind"))
    assert pairs(argv, "--tmpfs") == ["/tmp", "/home"]
    assert pairs(argv, "--proc") == ["/proc"] and pairs(argv, "--dev") == ["/dev"]
    empty = Sandbox(BWRAP, fresh_proc=False).argv(["true"])
    assert "--proc" not in empty and "/proc" in pairs(empty, "--dir")
    assert "--disable-userns" not in empty  # bwrap needs a /proc/sys it can write for it


def test_the_program_is_shown_read_only_at_its_own_path_even_in_tmp() -> None:
    argv = Sandbox(BWRAP, program="/tmp/agents/run").argv(["true"])
    bind = argv.index("/tmp/agents/run") - 1
    assert argv[bind] == "--ro-bind" and argv[bind + 2] == "/tmp/agents/run"
    assert bind > argv.index("/tmp"), "bound after the sandbox's own /tmp, not under it"
    system = Sandbox(BWRAP, program="/usr/local/bin/agent").argv(["true"])
    assert "/usr/local/bin/agent" not in system  # /usr is shown already


def test_what_a_job_could_see() -> None:
    sandbox = Sandbox(BWRAP, program="/opt/agent/run", writable="/srv/workspaces/s1")
    for seen in ("/usr/lib/x", "/etc/passwd", "/bin/sh", "/opt/agent/run", "/srv/workspaces/s1/a"):
        assert sandbox.shows(seen), seen
    for hidden in (
        "/tmp/pg",
        "/var/run/postgresql",
        "/run/postgresql",
        "/home/me/.pgpass",
        "/opt/agent",
        "/srv/workspaces",
        "/usrx",
    ):
        assert not sandbox.shows(hidden), hidden
    assert pairs(sandbox.argv(["true"]), "--bind") == ["/srv/workspaces/s1"]
