"""The arrows of the code point one way: shared helpers and the data layer, the columns that
show its records, the status website, then the supervisor and the reaper (whose HTTP child
serves the website), then the command lines (README, "Map of the code")."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.source import modules

# A module may import from its own layer and the layers below it.
LAYERS = {
    "helpers": 0,  # mobvibe.errors, logs, clock, durations, metrics, vocabulary
    "sql": 1,  # the data layer
    "columns": 2,  # the tables of records, for the pages and the terminal alike
    "web": 3,  # the status website
    "supervisor": 4,
    "reaper": 4,
    "client": 4,
    "cli": 5,
}
PROCESSES = 4  # the peers of this layer import none of each other
# Optional dependencies imported where they are needed, with the reason beside them.
LOCAL_IMPORTS_ALLOWED = {("mobvibe.sql.db", "pgserver")}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "helpers"
    if parts[1] in LAYERS:
        return parts[1]
    return "helpers"


def imports_of(path: Path) -> Iterator[tuple[str, bool]]:
    """(imported module, imported inside a function) for every import of ours in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    local: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            local |= {id(n) for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in local
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, id(node) in local
            for alias in node.names:  # `from mobvibe import metrics` imports mobvibe.metrics
                yield f"{node.module}.{alias.name}", id(node) in local


ALL = dict(modules())


@pytest.mark.parametrize("module", sorted(ALL))
def test_imports_point_down_the_layers(module: str) -> None:
    mine = layer_of(module)
    for imported, _ in imports_of(ALL[module]):
        if imported not in ALL or imported == "mobvibe":
            continue
        theirs = layer_of(imported)
        assert LAYERS[theirs] <= LAYERS[mine], f"{module} ({mine}) imports {imported} ({theirs})"
        if LAYERS[theirs] == LAYERS[mine] == PROCESSES:
            assert theirs == mine, f"{module} ({mine}) imports its peer {imported} ({theirs})"


@pytest.mark.parametrize("module", sorted(ALL))
def test_no_import_inside_a_function(module: str) -> None:
    for imported, local in imports_of(ALL[module]):
        top = imported.split(".")[0]
        if local and (module, top) not in LOCAL_IMPORTS_ALLOWED:
            pytest.fail(f"{module} imports {imported} inside a function")


def test_no_cycle_between_modules() -> None:
    graph = {m: {i for i, _ in imports_of(p) if i in ALL and i != m} for m, p in ALL.items()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import cycle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_only_the_store_names_a_query() -> None:
    named = {m for m, p in ALL.items() if "query(" in p.read_text() and m != "mobvibe.sql.files"}
    assert named == {"mobvibe.sql.store"}
