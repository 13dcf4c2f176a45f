"""The queue's words are StrEnums: each member is its word wherever it goes (PostgreSQL,
JSON, logs), and the code compares against members, never against bare strings."""

from __future__ import annotations

import ast
import json
from enum import StrEnum
from pathlib import Path

import pytest
from psycopg.adapt import PyFormat, Transformer

from mobvibe import metrics
from mobvibe.supervisor.children import ChildKind
from mobvibe.supervisor.finish import Ending
from mobvibe.supervisor.hub import Duty
from mobvibe.vocabulary import (
    Channel,
    EndReason,
    ExitCause,
    JobStatus,
    SweepOutcome,
    WaitingFor,
)
from tests.support.source import ROOT, package_files

KINDS: list[type[StrEnum]] = [
    JobStatus,
    EndReason,
    WaitingFor,
    ExitCause,
    Channel,
    SweepOutcome,
    ChildKind,
    Ending,
    Duty,
]
MEMBERS = [member for kind in KINDS for member in kind]
# The words the code must name by their members: the data's and the process model's.
WORDS = {member.value for kind in (JobStatus, EndReason, WaitingFor, ExitCause) for member in kind}


@pytest.mark.parametrize("member", MEMBERS, ids=str)
def test_a_member_is_its_word_in_text_json_and_for_psycopg(member: StrEnum) -> None:
    word = member.value
    assert member == word and str(member) == word and f"{member}" == word
    assert json.loads(json.dumps({"k": member})) == {"k": word}
    for form in (PyFormat.TEXT, PyFormat.BINARY):
        dumper = Transformer().get_dumper(member, form)
        assert bytes(dumper.dump(member)) == word.encode()


def test_the_metrics_are_labelled_with_every_end_reason_and_exit_cause() -> None:
    assert tuple(metrics.ATTEMPTS_ENDED.values) == tuple(EndReason)
    assert tuple(metrics.WORKER_EXITS.values) == tuple(ExitCause)
    assert set(metrics.ENDED) == set(EndReason)


def bare_words(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, word) of every vocabulary word compared as a bare string literal."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        for side in [node.left, *node.comparators]:
            items = side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
            for item in items:
                if isinstance(item, ast.Constant) and item.value in WORDS:
                    found.append((node.lineno, item.value))
    return found


@pytest.mark.parametrize("path", package_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_word_of_the_vocabulary_is_compared_as_a_bare_string(path: Path) -> None:
    found = bare_words(ast.parse(path.read_text(), str(path)))
    assert not found, f"{path.name}: compare with the member instead: {found}"


def test_the_check_finds_a_bare_word() -> None:
    tree = ast.parse('if status == "cancelled" or reason in ("error", "x"): pass')
    assert bare_words(tree) == [(1, "cancelled"), (1, "error")]
