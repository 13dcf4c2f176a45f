"""Fixtures of the command-line tests, shared with the reaper's: mobvibe-queue in this process
(`cli`), a steered clock, a database of a test's own (`fresh_url`)."""

from __future__ import annotations

from tests.reaper.conftest import cli, clock, fresh_url  # noqa: F401 - fixtures
