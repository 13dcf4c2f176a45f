"""Every mobvibe-queue command says a user's mistake in one `Error:` line: an unmigrated
database, a mistyped option, a bad DATABASE_URL."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from tests.support.commands import assert_one_error_line, free_port, run_queue_cli

UNKNOWN = "00000000-0000-4000-8000-000000000000"
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/x"
NOT_MIGRATED = "Error: the database schema is not up to date: run `mobvibe-queue migrate`"

EVERY_COMMAND = [
    ["stats"],
    ["stats", "--watch"],
    ["stats", "--until-drained"],
    ["enqueue", "a prompt"],
    ["dlq", "list"],
    ["dlq", "requeue", "--all"],
    ["dlq", "purge", "--older-than", "0", "--yes"],
    ["config"],
    ["config", "--backoff-base", "5s"],
    ["jobs", "list"],
    ["jobs", "show", UNKNOWN],
    ["jobs", "retry", UNKNOWN],
    ["workers"],
    ["sessions", "create"],
    ["cancel", UNKNOWN],
    ["cancel", "--session", UNKNOWN],
    ["watch"],
    ["web", "--port", "0"],  # replaced by a free port
]


@pytest.fixture(scope="module")
def unmigrated_url(new_database: Callable[..., str]) -> str:
    return new_database("mobvibe_unmigrated")


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=" ".join)
def test_every_command_on_an_unmigrated_database_says_to_migrate_in_one_line(
    unmigrated_url: str, command: list[str]
) -> None:
    args = [str(free_port()) if arg == "0" and command[0] == "web" else arg for arg in command]
    result = run_queue_cli(*args, database_url=unmigrated_url, timeout=30)
    assert_one_error_line(result, 2)
    assert (result.stdout + result.stderr).strip() == NOT_MIGRATED


def test_a_statement_the_schema_lacks_is_the_same_one_line(fresh_url: str) -> None:
    """Past the check at connect time (a schema changed by hand), the same line, no traceback."""
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        conn.execute("DROP FUNCTION get_queue_stats()")
    result = run_queue_cli("stats", database_url=fresh_url)
    assert_one_error_line(result, 2)
    assert (result.stdout + result.stderr).strip() == NOT_MIGRATED


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["jobs", "list", "--limit", "x"], "'x' is not a valid integer range"),
        (["jobs", "list", "--status", "done"], "'done' is not one of 'pending'"),
        (["jobs", "list", "--session", "s1"], "session id must be a UUID"),
        (["jobs", "show"], "Missing argument 'JOB_ID'"),
        (
            ["jobs", "retry", "not-a-uuid"],
            "job id must be a UUID or the start of one (at least 4 hex digits), got 'not-a-uuid'",
        ),
        (["jobs", "frob"], "No such command 'frob'"),
        (["jobs", "show", "abc"], "job id must be a UUID or the start of one"),
        (["enqueue", "--session", "abcd-", "x"], "session id must be a UUID or the start of one"),
        (["sessions", "create", "abcd1234"], "session id must be a UUID, got 'abcd1234'"),
        (["sessions", "create", "--max-concurrency", "0"], "0 is not in the range 1<=x<=100"),
        (["workers", "--bogus"], "No such option '--bogus'"),
        (["web", "--port", "70000"], "70000 is not in the range 1<=x<=65535"),
        (["dlq", "list", "--limit", "x"], "'x' is not a valid integer range"),
        (["dlq", "requeue"], "give the job IDs to requeue, or --all"),
        (["doctor", "--limit", "x"], "'x' is not a valid integer range"),
        (["cancel"], "give the JOB_IDs to cancel, or --session SESSION_ID"),
        (["stats", "--interval", "x"], "'x' is not a duration"),
        (["stats", "--watch", "--until-drained"], "give --watch or --until-drained, not both"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = run_queue_cli(*args, database_url=UNREACHABLE)
    line = assert_one_error_line(result, 2)
    assert message in line
    assert len((result.stdout + result.stderr).strip().splitlines()) == 1


@pytest.mark.parametrize(
    "command", [["jobs", "list"], ["workers"], ["web"], ["watch"], ["stats", "--watch"]]
)
def test_a_bad_database_url_is_named_plainly_in_one_line(command: list[str]) -> None:
    result = run_queue_cli(*command, database_url="garbage")
    line = assert_one_error_line(result, 2)
    assert line == (
        "Error: DATABASE_URL is not a valid PostgreSQL URL: expected "
        "postgresql://user:password@host:5432/dbname (or key=value settings)"
    )


@pytest.mark.parametrize("command", [["jobs", "list"], ["workers"], ["watch"], ["web"]])
def test_an_unreachable_database_is_one_line_and_exit_1(command: list[str]) -> None:
    result = run_queue_cli(*command, database_url=UNREACHABLE, timeout=30)
    assert "cannot connect to the database" in assert_one_error_line(result, 1)


def test_the_doctor_lists_what_an_unmigrated_database_lacks(unmigrated_url: str) -> None:
    """The doctor's findings are its output, not an error: one per missing migration."""
    result = run_queue_cli("doctor", database_url=unmigrated_url)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert all("run `mobvibe-queue migrate`" in line for line in result.stdout.splitlines()[:-1])
