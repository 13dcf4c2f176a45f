"""What the guides tell a newcomer holds: the --exec contract (progress on descriptor 3) in
every guide an operator reads."""

from __future__ import annotations

import re

from tests.support.source import ROOT


def section(path: str, title: str) -> str:
    """The text of a Markdown section, up to the next heading of its level or above."""
    text = (ROOT / path).read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def bullets(text: str) -> list[str]:
    """The top-level bullets of a Markdown text, each on one line."""
    items = re.split(r"\n(?=- )", text)
    return [" ".join(item.split()) for item in items if item.startswith("- ")]


def test_every_guide_of_the_agent_tells_the_progress_descriptor() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (exec_row,) = [
        line for line in readme.splitlines() if 'mobvibe-supervisor --exec "CMD"' in line
    ]
    agent = section("deploy/README.md", "Plugging in the agent")
    for text in (exec_row, agent):
        assert "descriptor 3" in text and "MOBVIBE_PROGRESS_FD=3" in text
        assert ">&3" in text  # how a shell writes to it


def test_the_agent_guide_never_denies_the_variable_the_command_gets() -> None:
    agent = section("deploy/README.md", "Plugging in the agent")
    denying = [b for b in bullets(agent) if "never" in b and "`MOBVIBE_*`" in b]
    assert denying, "the guide says which variables the command never gets"
    assert all("MOBVIBE_PROGRESS_FD" in bullet for bullet in denying), denying
