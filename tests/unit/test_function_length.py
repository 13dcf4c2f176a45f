"""Functions that fit on a screen: over the package (not the tests, not the benchmarks), the
median function is at most 10 lines long and none is longer than 40.

A function's length is the lines of its `def`, from the `def` line to its last line,
docstring, comments and blank lines inside included, decorators excluded; a nested
function counts on its own and inside the one that holds it.
"""

from __future__ import annotations

import ast
import statistics
from pathlib import Path

from tests.support.source import ROOT, package_files

MEDIAN_MAX = 10
LONGEST = 40


def lengths(path: Path) -> list[tuple[int, str]]:
    """(length, where) of every function and method in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return [
        (node.end_lineno - node.lineno + 1, f"{shown}:{node.lineno} {node.name}")
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno
    ]


def every_length() -> list[tuple[int, str]]:
    return [found for path in package_files() for found in lengths(path)]


def test_the_median_function_is_at_most_10_lines() -> None:
    found = every_length()
    assert len(found) > 100  # the whole package was read
    assert statistics.median(length for length, _ in found) <= MEDIAN_MAX


def test_no_function_is_longer_than_40_lines() -> None:
    longer = sorted(found for found in every_length() if found[0] > LONGEST)
    assert not longer, f"split these into named pieces: {longer}"


def test_a_function_is_measured_from_its_def_to_its_last_line(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text('@decorated\ndef f() -> None:\n    """One."""\n\n    return None\n')
    assert [length for length, _ in lengths(source)] == [4]
