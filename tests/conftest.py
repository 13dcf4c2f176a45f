"""PostgreSQL for the tests: TEST_DATABASE_URL's server, else a throwaway embedded one.

Each test session gets a database of its own, migrated once; each test that
asks for `db_url` starts from empty tables.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

from mobvibe.client import JobQueue
from tests.support.roles import LoginRoles
from tests.support.sqlclock import migrated

RESET = """
TRUNCATE coding_jobs, coding_job_attempts, coding_job_events, coding_sessions, queue_reaper_runs,
    queue_users, queue_user_limits;
INSERT INTO queue_users (user_key) VALUES ('00000000-0000-0000-0000-000000000000');
UPDATE queue_config SET backoff_base = DEFAULT, backoff_cap = DEFAULT, backoff_jitter = DEFAULT,
    heartbeat_timeout = DEFAULT, retain_completed = DEFAULT, retain_failed = DEFAULT,
    max_events_per_attempt = DEFAULT, max_event_bytes_per_attempt = DEFAULT,
    max_releases_per_job = DEFAULT, user_max_concurrency = DEFAULT;
UPDATE queue_counters SET events_dropped = 0, event_bytes_dropped = 0, releases_counted = 0;
"""


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A PostgreSQL server the tests may create databases on."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield given
        return
    import pgserver

    with tempfile.TemporaryDirectory(prefix="mobvibe-pg-") as directory:
        server = pgserver.get_server(directory, cleanup_mode="delete")
        yield str(server.get_uri())
        server.cleanup()


@pytest.fixture(scope="session")
def new_database(server_url: str) -> Iterator[Any]:
    """A factory of fresh, empty databases on the test server, dropped at the end."""
    created: list[str] = []

    def make(prefix: str = "mobvibe_test") -> str:
        name = f"{prefix}_{secrets.token_hex(4)}"
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return conninfo.make_conninfo(server_url, dbname=name)

    yield make
    with psycopg.connect(server_url, autocommit=True) as admin:
        for name in created:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def migrated_url(new_database: Any) -> str:
    """The session's migrated database, its test clock on (tests steer queue_now())."""
    return migrated(new_database())


@pytest.fixture
def own_server() -> Iterator[Any]:
    """A PostgreSQL server of this test's own, to stop and start: never the shared one.

    pgserver listens on a Unix socket in the data directory, which a restart keeps, so
    the URL stays valid.
    """
    import pgserver

    with tempfile.TemporaryDirectory(prefix="mobvibe-own-pg-") as directory:
        server = pgserver.get_server(directory, cleanup_mode="delete")
        yield server
        server.cleanup()


@pytest.fixture
def db_url(migrated_url: str) -> str:
    """The migrated database, with empty tables and the default settings."""
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(RESET.encode())
    return migrated_url


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the clean, migrated database."""
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def login_role(conn: psycopg.Connection[Any], db_url: str) -> Iterator[Callable[..., str]]:
    """login_role(*groups) makes a login role in `groups` and returns its URL; the roles are
    dropped at the end."""
    roles = LoginRoles(conn, db_url)
    yield roles.make
    roles.drop()


@pytest.fixture
def queue(db_url: str) -> Iterator[JobQueue]:
    with JobQueue(db_url) as client:
        yield client


@pytest.fixture
def session_id(queue: JobQueue) -> Any:
    return queue.create_session()
