"""The package's Python files, for the tests that read the code itself (layers, words,
function lengths)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Where each installed package's files are (mobvibe/supervisor and the others are links).
FOLDERS = {
    "mobvibe": ROOT / "mobvibe",
    "mobvibe.supervisor": ROOT / "supervisor",
    "mobvibe.reaper": ROOT / "reaper",
    "mobvibe.sql": ROOT / "sql",
}
LINKED = ("supervisor", "reaper", "sql")


def modules() -> Iterator[tuple[str, Path]]:
    """(module name, file) of every module of the package, each once."""
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(folder).with_suffix("")
            if package == "mobvibe" and relative.parts[0] in LINKED:
                continue  # the links: listed under their own package
            parts = [p for p in relative.parts if p != "__init__"]
            yield ".".join([package, *parts]), path


def package_files() -> list[Path]:
    """Every Python file of the package (not the tests, not the benchmarks)."""
    return [path for _, path in modules()]
