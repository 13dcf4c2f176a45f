"""The fault suite runs the real supervisor; its fixture comes from the process tests."""

from tests.processes.conftest import supervisor  # noqa: F401 - a fixture, used by name
