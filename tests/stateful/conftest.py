"""The stateful suites share one database of their own, so that their queue
settings (no jitter, a short backoff) never leak into the other suites."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.sqlclock import migrated


@pytest.fixture(scope="session")
def stateful_url(new_database: Any) -> str:
    """A migrated database used only by tests/stateful."""
    return migrated(new_database("mobvibe_stateful"))
