"""mobvibe-queue enqueue and sessions create as a newcomer meets them: the session of each job,
a session made from the command line, durations with units, a repeated idempotency key."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from click.testing import Result

from mobvibe.client import JobQueue
from mobvibe.sql.jobs import NewJob
from tests.support.rows import job_row, table_counts

Cli = Callable[..., Result]


def test_enqueue_prints_each_job_with_its_session(cli: Cli, conn: Any) -> None:
    result = cli("enqueue", "one", "two")
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines()]
    assert len(lines) == 2 and all(len(words) == 2 for words in lines)
    for job_id, session_id in lines:
        assert str(job_row(conn, job_id)["session_id"]) == session_id

    as_json = cli("enqueue", "--json", "three")
    (record,) = [json.loads(line) for line in as_json.stdout.splitlines()]
    row = job_row(conn, record["job_id"])
    assert record == {
        "job_id": str(row["id"]),
        "session_id": str(row["session_id"]),
        "added": True,
        "prompt_ignored": False,
    }


def test_sessions_create_makes_a_session_that_enqueue_sends_prompts_to(cli: Cli, conn: Any) -> None:
    made = cli("sessions", "create", "--max-concurrency", "3")
    assert made.exit_code == 0, made.output
    session = made.stdout.strip()
    assert conn.execute(
        "SELECT max_concurrency FROM coding_sessions WHERE id = %s", [session]
    ).fetchone() == (3,)
    sent = cli("enqueue", "--session", session, "a prompt")
    assert sent.exit_code == 0, sent.output
    assert sent.stdout.split()[1] == session

    chosen = str(uuid.uuid4())
    as_json = cli("sessions", "create", chosen, "--json")
    assert json.loads(as_json.stdout) == {
        "session_id": chosen,
        "max_concurrency": 1,
        "user_id": None,
    }
    again = cli("sessions", "create", chosen)
    assert again.exit_code == 2 and again.stderr.strip() == (
        f"Error: session {chosen} exists already: `enqueue --session` sends prompts to it"
    )


def test_sessions_create_records_the_user_who_owns_the_session(cli: Cli, conn: Any) -> None:
    owner = str(uuid.uuid4())
    made = cli("sessions", "create", "--user", owner, "--json")
    assert made.exit_code == 0, made.output
    record = json.loads(made.stdout)
    assert record["user_id"] == owner
    assert conn.execute(
        "SELECT user_id::text FROM coding_sessions WHERE id = %s", [record["session_id"]]
    ).fetchone() == (owner,)
    refused = cli("sessions", "create", "--user", "me")
    assert refused.exit_code == 2
    assert refused.stderr.strip() == "Error: user id must be a UUID, got 'me'"


def test_enqueue_to_a_missing_session_says_how_to_make_it(cli: Cli, conn: Any) -> None:
    missing = str(uuid.uuid4())
    result = cli("enqueue", "--session", missing, "orphan")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: session {missing} does not exist: `mobvibe-queue sessions create {missing}` "
        "makes it (enqueue without --session starts a new session)"
    )
    assert table_counts(conn) == (0, 0)


def test_the_start_of_an_id_names_the_job_or_session_everywhere(
    queue: JobQueue, cli: Cli, conn: Any
) -> None:
    session = queue.create_session(uuid.UUID("abcd1234-0000-4000-8000-000000000001"))
    job = queue.enqueue("first", session_id=session)
    short = str(session)[:8]  # as `jobs list` shows a session
    assert cli("enqueue", "--session", short, "second").stdout.split()[1] == str(session)
    listed = cli("jobs", "list", "--session", short, "--json").stdout.splitlines()
    assert len(listed) == 2
    assert cli("jobs", "show", str(job)[:8]).stdout.startswith(f"Job {job}\n")
    assert cli("cancel", str(job)[:13]).stdout.strip() == f"{job} cancelled"
    assert cli("jobs", "retry", str(job)[:8]).exit_code == 0
    cancelled = cli("cancel", "--session", short)
    assert cancelled.exit_code == 0 and cancelled.stdout.count("cancelled") == 2


def test_an_unknown_or_ambiguous_start_is_one_error_line(queue: JobQueue, cli: Cli) -> None:
    for n in (1, 2):
        queue.create_session(uuid.UUID(f"abcd1234-0000-4000-8000-00000000000{n}"))
    ambiguous = cli("enqueue", "--session", "abcd1234", "x")
    assert ambiguous.exit_code == 2
    assert ambiguous.stderr == (
        "Error: more than one session id starts with 'abcd1234': give more of it\n"
    )
    unknown = cli("jobs", "show", "0123abcd")
    assert unknown.exit_code == 1
    assert unknown.stderr == "Error: no job id starts with '0123abcd'\n"
    bad = cli("cancel", "nope")
    assert bad.exit_code == 2 and bad.stderr == (
        "Error: job id must be a UUID or the start of one (at least 4 hex digits), got 'nope'\n"
    )


def test_enqueue_takes_a_delay_with_a_unit_like_every_duration(cli: Cli, conn: Any) -> None:
    result = cli("enqueue", "--delay", "5m", "later")
    assert result.exit_code == 0, result.output
    row = job_row(conn, result.stdout.split()[0])
    assert abs((row["run_at"] - row["created_at"]).total_seconds() - 300) < 1
    refused = cli("enqueue", "--delay", "5 minutes", "later")
    assert refused.exit_code == 2 and "--delay" in refused.stderr and "5m" in refused.stderr


def test_stdin_of_blank_lines_is_said_to_hold_no_prompt(cli: Cli, conn: Any) -> None:
    result = cli("enqueue", "--stdin", input="\t\n  \n\n")
    assert result.exit_code == 2
    assert result.stderr == ("Error: --stdin: standard input held no prompt (only blank lines)\n")
    assert table_counts(conn) == (0, 0)


def test_a_repeated_key_with_another_prompt_says_the_prompt_was_ignored(
    queue: JobQueue, cli: Cli, conn: Any
) -> None:
    session = str(queue.create_session())
    args = ("enqueue", "--session", session, "--idempotency-key", "tap-1")
    first = cli(*args, "Build a todo app")
    same = cli(*args, "Build a todo app")
    other = cli(*args, "--json", "Build a chat app")
    job_id = first.stdout.split()[0]
    assert same.stdout == first.stdout and same.stderr == ""
    assert json.loads(other.stdout) == {
        "job_id": job_id,
        "session_id": session,
        "added": False,
        "prompt_ignored": True,
    }
    assert other.stderr == (
        f"the session's job {job_id} has idempotency key 'tap-1' with another prompt: "
        "this prompt was ignored (nothing was added)\n"
    )
    assert job_row(conn, job_id)["prompt"] == "Build a todo app"
    assert table_counts(conn)[0] == 1


def test_the_client_says_whether_a_repeated_key_ignored_a_prompt(queue: JobQueue) -> None:
    session = queue.create_session()
    first = queue.submit(NewJob("one", session, idempotency_key="k"))
    assert first.added and not first.prompt_ignored
    assert queue.submit(NewJob("one", session, idempotency_key="k")).prompt_ignored is False
    again = queue.submit(NewJob("two", session, idempotency_key="k"))
    assert (again.job_id, again.added, again.prompt_ignored) == (first.job_id, False, True)
    batch = queue.submit_many(
        [NewJob("a", session, idempotency_key="b"), NewJob("c", session, idempotency_key="b")]
    )
    assert [(r.added, r.prompt_ignored) for r in batch] == [(True, False), (False, True)]
    assert batch[0].job_id == batch[1].job_id
