"""The fault suite runs the real supervisor; its fixture comes from the process tests."""

from collections.abc import Callable
from typing import Any

import pytest

from tests.processes.conftest import supervisor  # noqa: F401 - a fixture, used by name


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Callable[..., None]:
    """report(name, figure=value, ...) prints the test's figures past pytest's capture."""

    def say(name: str, **figures: Any) -> None:
        line = " ".join(f"{key}={value}" for key, value in figures.items())
        with capsys.disabled():
            print(f"\nFAULT {name}: {line}")

    return say
