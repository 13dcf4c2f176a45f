"""mobvibe-queue users limit / list, jobs list --user and config --user-max-concurrency: an
operator's limits per user, as the operator types them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import Result

from mobvibe.client import JobQueue
from mobvibe.sql import store
from tests.support.rows import scalar

Cli = Callable[..., Result]


def limits(conn: Any) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT user_id, max_concurrency FROM queue_user_limits").fetchall()


def test_users_limit_holds_the_users_jobs_to_it_and_list_shows_them(
    queue: JobQueue, conn: Any, cli: Cli
) -> None:
    user = uuid.uuid4()
    jobs = [
        queue.enqueue(f"prompt {n}", session_id=queue.create_session(user_id=user))
        for n in range(3)
    ]
    result = cli("users", "limit", str(user), "1")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"user {user}: at most 1 at once\n"
    claimed = store.claim(conn, "host:0:1:abc")
    assert claimed is not None and claimed.id == jobs[0]
    assert store.claim(conn, "host:0:2:abc") is None

    listed = cli("users", "list")
    assert listed.exit_code == 0, listed.output
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:4] == ["USER", "RUNNING", "READY", "WAITING"]
    mine = next(row.split() for row in rows if row.startswith(str(user)))
    assert mine[1:6] == ["1", "0", "2", "1", "(own)"]

    waiting = cli("users", "list", "--waiting", "--json")
    assert waiting.exit_code == 0, waiting.output
    (only,) = [json.loads(line) for line in waiting.stdout.splitlines()]
    assert only["user_id"] == str(user)
    assert (only["running"], only["waiting"], only["max_concurrency"]) == (1, 2, 1)

    cleared = cli("users", "limit", str(user), "--clear")
    assert (cleared.exit_code, cleared.stdout) == (0, f"user {user}: no limit\n")
    assert limits(conn) == []
    assert store.claim(conn, "host:0:3:abc") is not None


def test_jobs_list_by_user(queue: JobQueue, cli: Cli) -> None:
    user = uuid.uuid4()
    mine = queue.enqueue("mine", session_id=queue.create_session(user_id=user))
    queue.enqueue("the backend's")
    result = cli("jobs", "list", "--user", str(user), "--json")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == [str(mine)]


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (("users", "limit", "USER", "0"), 2, "0 is not in the range 1<=x<=1000"),
        (("users", "limit", "USER", "1001"), 2, "1001 is not in the range 1<=x<=1000"),
        (("users", "limit", "USER"), 2, "give N (1 to 1000) or --clear"),
        (("users", "limit", "USER", "3", "--clear"), 2, "give N (1 to 1000) or --clear"),
        (("users", "limit", "not-a-uuid", "3"), 2, "user id must be a UUID"),
        (("users", "limit", "OTHER", "3"), 1, "no session belongs to user"),
        (("jobs", "list", "--user", "42"), 2, "user id must be a UUID"),
        (("config", "--user-max-concurrency", "0"), 2, "0 is not in the range 1 to 1000"),
        (("config", "--user-max-concurrency", "many"), 2, "is not a number of jobs"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    queue: JobQueue, conn: Any, cli: Cli, args: tuple[str, ...], code: int, says: str
) -> None:
    user = uuid.uuid4()
    queue.create_session(user_id=user)
    assert cli("users", "limit", str(user), "2").exit_code == 0
    named = {"USER": str(user), "OTHER": str(uuid.uuid4())}
    result = cli(*(named.get(arg, arg) for arg in args))
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and says in lines[0], lines
    assert limits(conn) == [(user, 2)]
    assert scalar(conn, "SELECT user_max_concurrency FROM queue_config") is None


def test_config_sets_and_clears_the_default_limit(queue: JobQueue, conn: Any, cli: Cli) -> None:
    user = uuid.uuid4()
    for n in range(2):
        queue.enqueue(f"prompt {n}", session_id=queue.create_session(user_id=user))
    result = cli("config", "--user-max-concurrency", "1")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["user_max_concurrency"] == 1
    assert store.claim(conn, "host:0:1:abc") is not None
    assert store.claim(conn, "host:0:2:abc") is None
    result = cli("config", "--user-max-concurrency", "none")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["user_max_concurrency"] is None
    assert store.claim(conn, "host:0:3:abc") is not None
