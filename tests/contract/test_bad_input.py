"""Bad input gets one clear error and changes nothing: through the client, plain SQL and the CLI."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg import errors as pgerrors

from mobvibe.client import JobQueue
from mobvibe.errors import InvalidJobError
from mobvibe.sql.jobs import NewJob
from tests.support.commands import assert_one_error_line, run_queue_cli
from tests.support.rows import claim, insert_job, scalar, table_counts

MIB = 1024 * 1024

# (what is wrong, keyword arguments of enqueue, a word the message must contain)
BAD_JOBS = [
    ("priority -1", {"priority": -1}, "priority"),
    ("priority 11", {"priority": 11}, "priority"),
    ("priority 'high'", {"priority": "high"}, "priority"),
    ("priority 3.5", {"priority": 3.5}, "priority"),
    ("priority True", {"priority": True}, "priority"),
    ("empty prompt", {"prompt": ""}, "prompt"),
    ("whitespace-only prompt", {"prompt": " \n\t "}, "prompt"),
    ("prompt of 1 MiB + 1 byte", {"prompt": "a" * (MIB + 1)}, "prompt"),
    ("multi-byte prompt of 1 MiB + 1 byte", {"prompt": "a" * (MIB - 1) + "é"}, "prompt"),
    ("NUL in the prompt", {"prompt": "before\x00after"}, "prompt"),
    ("lone surrogate in the prompt", {"prompt": "broken \ud800 text"}, "prompt"),
    ("session id that is not a UUID", {"session_id": "session-1"}, "session"),
    ("max_retries 0", {"max_retries": 0}, "max_retries"),
    ("max_retries True", {"max_retries": True}, "max_retries"),
    ("max_retries 101", {"max_retries": 101}, "max_retries"),
    ("naive run_at", {"run_at": datetime(2030, 1, 1, 12, 0)}, "run_at"),
    ("negative delay", {"delay": -1}, "delay"),
    ("empty idempotency key", {"idempotency_key": ""}, "idempotency key"),
    ("idempotency key of 201 characters", {"idempotency_key": "é" * 201}, "idempotency key"),
    ("NUL in the idempotency key", {"idempotency_key": "a\x00"}, "idempotency key"),
]


def enqueue_args(**overrides: Any) -> dict[str, Any]:
    return {"prompt": "a good prompt", **overrides}


@pytest.mark.parametrize(("what", "overrides", "field"), BAD_JOBS, ids=[b[0] for b in BAD_JOBS])
def test_enqueue_refuses_a_bad_job_naming_the_field_and_writes_nothing(
    queue: JobQueue, conn: Any, session_id: Any, what: str, overrides: dict[str, Any], field: str
) -> None:
    before = table_counts(conn)
    args = enqueue_args(**overrides)
    prompt = args.pop("prompt")
    with pytest.raises(InvalidJobError, match=field):
        queue.enqueue(prompt, **args)
    with pytest.raises(InvalidJobError, match=field):
        queue.enqueue_many([NewJob("a good job", session_id), NewJob(prompt, **args)])
    assert table_counts(conn) == before


def test_enqueue_to_an_unknown_session_writes_nothing(
    queue: JobQueue, conn: Any, session_id: Any
) -> None:
    before = table_counts(conn)
    unknown = uuid.uuid4()
    with pytest.raises(InvalidJobError, match="session"):
        queue.enqueue("orphan", session_id=unknown)
    # a batch that also starts a new session: that session is rolled back with the rest
    with pytest.raises(InvalidJobError, match="session"):
        queue.enqueue_many(
            [NewJob("new session"), NewJob("good", session_id), NewJob("orphan", unknown)]
        )
    assert table_counts(conn) == before


@pytest.mark.parametrize(
    "method", ["complete", "fail", "get", "heartbeat", "release", "requeue_failed"]
)
@pytest.mark.parametrize("bad_id", ["not-a-uuid", "", 42, None])
def test_a_job_id_that_is_not_a_uuid_is_refused(
    queue: JobQueue, conn: Any, session_id: Any, method: str, bad_id: Any
) -> None:
    job = insert_job(conn, session_id)
    before = conn.execute("SELECT * FROM coding_jobs").fetchall()
    calls = {
        "complete": lambda: queue.complete(bad_id),
        "fail": lambda: queue.fail(bad_id, "error"),
        "get": lambda: queue.get(bad_id),
        "heartbeat": lambda: queue.heartbeat(bad_id, uuid.uuid4()),
        "release": lambda: queue.release(bad_id, uuid.uuid4()),
        "requeue_failed": lambda: queue.requeue_failed(bad_id),
    }
    with pytest.raises(InvalidJobError, match="job id"):
        calls[method]()
    assert conn.execute("SELECT * FROM coding_jobs").fetchall() == before
    assert queue.get(job) is not None


def test_a_lease_token_that_is_not_a_uuid_is_refused(
    queue: JobQueue, conn: Any, session_id: Any
) -> None:
    job = insert_job(conn, session_id)
    with pytest.raises(InvalidJobError, match="lease token"):
        queue.complete(job, "stale")


# -- the database refuses the same jobs from a plain INSERT ----------------------------------

SQL_REFUSALS = [
    ("priority -1", {"priority": -1}, pgerrors.CheckViolation),
    ("priority 11", {"priority": 11}, pgerrors.CheckViolation),
    ("priority 'high'", {"priority": "high"}, pgerrors.InvalidTextRepresentation),
    ("priority True", {"priority": True}, pgerrors.DatatypeMismatch),
    ("empty prompt", {"prompt": ""}, pgerrors.CheckViolation),
    ("prompt of 1 MiB + 1 byte", {"prompt": "a" * (MIB + 1)}, pgerrors.CheckViolation),
    (
        "multi-byte prompt of 1 MiB + 1 byte",
        {"prompt": "a" * (MIB - 1) + "é"},
        pgerrors.CheckViolation,
    ),
    # psycopg refuses these before they reach the server
    ("NUL in the prompt", {"prompt": "before\x00after"}, psycopg.DataError),
    ("lone surrogate in the prompt", {"prompt": "broken \ud800 text"}, UnicodeEncodeError),
    ("unknown session", {"session_id": uuid.UUID(int=1)}, pgerrors.ForeignKeyViolation),
    ("max_retries 0", {"max_retries": 0}, pgerrors.CheckViolation),
    ("max_retries 101", {"max_retries": 101}, pgerrors.CheckViolation),
    ("max_retries True", {"max_retries": True}, pgerrors.DatatypeMismatch),
    ("unknown status", {"status": "done"}, pgerrors.CheckViolation),
    ("processing without a lease", {"status": "processing"}, pgerrors.CheckViolation),
    (
        "retry_count above max_retries",
        {"retry_count": 4, "max_retries": 3},
        pgerrors.CheckViolation,
    ),
]


@pytest.mark.parametrize(
    ("what", "columns", "error"), SQL_REFUSALS, ids=[r[0] for r in SQL_REFUSALS]
)
def test_a_plain_insert_of_a_bad_job_is_refused_by_the_database(
    conn: Any, session_id: Any, what: str, columns: dict[str, Any], error: type[Exception]
) -> None:
    before = table_counts(conn)
    columns = {"session_id": session_id, **columns}
    with pytest.raises(error):
        insert_job(conn, columns.pop("session_id"), **columns)
    assert table_counts(conn) == before


def test_a_fractional_priority_from_plain_sql_is_rounded_into_the_range(
    conn: Any, session_id: Any
) -> None:
    # PostgreSQL's assignment cast rounds 3.5 to a smallint 4: in range, so the
    # table accepts it; only the Python client refuses a fraction outright.
    job = insert_job(conn, session_id, priority=3.5)
    assert scalar(conn, "SELECT priority FROM coding_jobs WHERE id = %s", [job]) == 4


# -- valid edge cases are stored byte for byte -------------------------------------------------

GOOD_PROMPTS = [
    ("emoji", "🚀 build me an app 👩‍💻 with 🇫🇷 flags"),
    ("right-to-left marks", "\u200fשלום עולם\u200e and مرحبا"),
    ("combining characters", "e\u0301 (decomposed) vs \u00e9 and Z\u0351\u0300\u0353"),
    ("whitespace", "  leading and trailing\n\ttabs\r\nCRLF  "),
    ("exactly 1 MiB of ASCII", "a" * MIB),
    ("exactly 1 MiB of two-byte characters", "é" * (MIB // 2)),
    ("exactly 1 MiB ending in a four-byte character", "a" * (MIB - 4) + "😀"),
]


@pytest.mark.parametrize(("what", "prompt"), GOOD_PROMPTS, ids=[g[0] for g in GOOD_PROMPTS])
def test_a_valid_prompt_is_stored_and_read_back_byte_for_byte(
    queue: JobQueue, conn: Any, what: str, prompt: str
) -> None:
    job = queue.enqueue(prompt)
    stored = queue.get(job)
    assert stored is not None and stored.prompt == prompt
    assert scalar(conn, "SELECT octet_length(prompt) FROM coding_jobs WHERE id = %s", [job]) == len(
        prompt.encode()
    )
    claimed = queue.claim()
    assert claimed is not None and claimed.prompt.encode() == prompt.encode()


def test_the_edges_of_the_ranges_are_accepted(queue: JobQueue, conn: Any) -> None:
    later = datetime.now(timezone(timedelta(hours=-5))) + timedelta(hours=1)
    ids = [
        queue.enqueue("lowest", priority=0, max_retries=1),
        queue.enqueue("highest", priority=10, max_retries=100),
        queue.enqueue("zoned", run_at=later),
        queue.enqueue("no delay", delay=0),
    ]
    rows = {row.prompt: row for row in map(queue.get, ids) if row}
    assert (rows["lowest"].priority, rows["lowest"].max_retries) == (0, 1)
    assert (rows["highest"].priority, rows["highest"].max_retries) == (10, 100)
    assert rows["zoned"].run_at == later.astimezone(UTC)
    assert claim(conn)["job_id"] == ids[1]  # type: ignore[index]


# -- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (["enqueue", "--priority", "11", "a prompt"], "priority"),
        (["enqueue", "--priority", "-1", "a prompt"], "priority"),
        (["enqueue", "--priority", "high", "a prompt"], "priority"),
        (["enqueue", ""], "prompt"),
        (["enqueue", "--max-retries", "0", "a prompt"], "max_retries"),
        (["enqueue", "--session", "not-a-uuid", "a prompt"], "session"),
        (["enqueue", "--delay", "-5", "a prompt"], "delay"),
    ],
)
def test_the_enqueue_command_refuses_bad_input_with_one_error_line(
    db_url: str, conn: Any, args: list[str], word: str
) -> None:
    result = run_queue_cli(*args, database_url=db_url)
    assert word in assert_one_error_line(result, 2).lower()
    assert table_counts(conn) == (0, 0)


def test_the_enqueue_command_refuses_an_unknown_session(db_url: str, conn: Any) -> None:
    result = run_queue_cli("enqueue", "--session", str(uuid.uuid4()), "orphan", database_url=db_url)
    # exit 1, as for every unknown id (`jobs show`, `cancel`), and the line says how to make it
    assert "sessions create" in assert_one_error_line(result, 1)
    assert table_counts(conn) == (0, 0)


MALFORMED_URLS = [
    "mysql://u:p@h/db",
    "postgresql://u:secret@h:notaport/db",
    "postgresql://h/db?sslmode=maybe",
    "mysql://u:secret@h/db",
    "postgresql://u:secret@h/db?sslmode=maybe",
    "postgresql://u:my/secret@h/db",  # an unencoded / in the password
]


def assert_config_error(result: Any) -> None:
    line = assert_one_error_line(result, 2)
    output = result.stdout + result.stderr
    assert len(output.strip().splitlines()) == 1, output
    assert "DATABASE_URL" in line
    assert "secret" not in output and "my/" not in output


@pytest.mark.parametrize("url", MALFORMED_URLS)
def test_a_malformed_database_url_is_one_line_exit_2_and_never_shows_the_password(url: str) -> None:
    assert_config_error(run_queue_cli("stats", database_url=url))


@pytest.mark.parametrize("command", [["migrate"], ["enqueue", "x"], ["config"]])
def test_every_command_refuses_a_malformed_database_url_the_same_way(command: list[str]) -> None:
    assert_config_error(run_queue_cli(*command, database_url="postgresql://u:secret@h:x/db"))


@pytest.mark.parametrize("command", [["stats"], ["migrate"], ["enqueue", "x"]])
def test_an_unreachable_database_is_one_line_exit_1(command: list[str]) -> None:
    result = run_queue_cli(*command, database_url="postgresql://postgres@127.0.0.1:1/test")
    line = assert_one_error_line(result, 1)
    assert "connect" in line
    assert len((result.stdout + result.stderr).strip().splitlines()) == 1
