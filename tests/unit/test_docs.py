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


# The folders of the README's map, each row naming every module of its folder.
MAP_FOLDERS = ("mobvibe/", "mobvibe/cli/", "mobvibe/web/", "sql/", "supervisor/", "reaper/")


def table_rows(text: str) -> list[list[str]]:
    """The cells of each row of the Markdown tables in `text`, header rows and rules left out."""
    lines = [line.strip() for line in text.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    return [row for row in rows[2:] if not set(row[0]) <= set("-| ")]


def test_the_map_of_the_code_names_every_module_and_none_that_is_gone() -> None:
    rows = {row[0].strip("`"): row for row in table_rows(section("README.md", "Map of the code"))}
    for folder in MAP_FOLDERS:
        named = set(re.findall(r"`(\w+\.py)`", " ".join(rows[folder])))
        present = {p.name for p in (ROOT / folder).glob("*.py") if p.name != "__init__.py"}
        assert named == present, (folder, sorted(named - present), sorted(present - named))


def test_each_place_to_change_exists_and_holds_what_it_says() -> None:
    rows = table_rows(section("README.md", "Where to change what"))
    assert len(rows) >= 10
    for what, where, look in rows:
        paths = [ROOT / path for path in re.findall(r"`([^` ]+/[^` ]*)`", where)]
        assert 1 <= len(paths) <= 2, what  # one or two places, never a hunt
        assert all(path.exists() for path in paths), (what, paths)
        files = [
            f for p in paths for f in ([p] if p.is_file() else sorted(p.glob("*"))) if f.is_file()
        ]
        needle = look.strip("`")
        assert any(needle in f.read_text(encoding="utf-8") for f in files), (what, needle)
