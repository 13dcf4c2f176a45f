"""What the three commands' --help says: every option it names exists where it says, and the
--exec contract (descriptor 3 for progress) is told where an operator looks first."""

from __future__ import annotations

import re
from collections.abc import Iterator

import click

from mobvibe.cli import admin, reaper, supervisor

PROGRAMS = {
    "mobvibe-queue": admin.main,
    "mobvibe-supervisor": supervisor.main,
    "mobvibe-reaper": reaper.main,
}
# "the supervisors' --x", "a supervisor's --x", "the workers' --x": an option of the supervisor
SUPERVISOR_OPTION = re.compile(r"(?:supervisors?'s?|workers') (--[a-z-]+)")


def commands(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from commands(sub, f"{path} {name}")


def options(command: click.Command) -> set[str]:
    return {opt for param in command.params for opt in param.opts if opt.startswith("--")}


def helps() -> Iterator[tuple[str, str]]:
    """(command, every help text it has: its own and its options')."""
    for program, main in PROGRAMS.items():
        for path, command in commands(main, program):
            texts = [command.help or ""]
            texts += [getattr(param, "help", None) or "" for param in command.params]
            yield path, " ".join(" ".join(texts).split())


def test_an_option_a_help_says_is_the_supervisors_is_one() -> None:
    known = options(supervisor.main)
    named = {
        (path, option)
        for path, text in helps()
        for option in SUPERVISOR_OPTION.findall(text)
        if option not in known
    }
    assert not named


def test_the_exec_help_tells_the_progress_contract() -> None:
    (exec_option,) = [p for p in supervisor.main.params if "--exec" in p.opts]
    text = " ".join((getattr(exec_option, "help", "") or "").split())
    assert "descriptor 3" in text and "MOBVIBE_PROGRESS_FD" in text
    assert "progress event" in text
