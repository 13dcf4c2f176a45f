"""The stateful suites share one database of their own, so that their queue
settings (no jitter, a short backoff) never leak into the other suites."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.support.sqlclock import migrate_with_test_clock


@pytest.fixture(scope="session")
def stateful_url(new_database: Any) -> str:
    """A migrated database used only by tests/stateful."""
    url: str = new_database("mobvibe_stateful")
    with psycopg.connect(url, autocommit=True) as conn:
        migrate_with_test_clock(conn)
    return url
