"""The checks a job passes before it reaches the database: no database needed to refuse one."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from mobvibe.client import JobQueue
from mobvibe.errors import InvalidJobError, QueueError
from mobvibe.sql.jobs import (
    MAX_RETRIES_DEFAULT,
    PRIORITY_DEFAULT,
    PROMPT_MAX_BYTES,
    NewJob,
    parse_uuid,
    validate_prompt,
)

MIB = 1024 * 1024
# Port 1 on loopback: nothing listens there. A call that reached the database
# would fail with DatabaseUnavailableError, not InvalidJobError.
NOWHERE = "postgresql://nobody@127.0.0.1:1/nothing"

BAD_FIELDS = [
    ("priority -1", {"priority": -1}, "priority"),
    ("priority 11", {"priority": 11}, "priority"),
    ("priority 'high'", {"priority": "high"}, "priority"),
    ("priority 3.5", {"priority": 3.5}, "priority"),
    ("priority True", {"priority": True}, "priority"),
    ("priority None", {"priority": None}, "priority"),
    ("empty prompt", {"prompt": ""}, "prompt"),
    ("whitespace-only prompt", {"prompt": " \n\t "}, "prompt"),
    ("prompt that is not text", {"prompt": b"bytes"}, "prompt"),
    ("prompt of 1 MiB + 1 byte", {"prompt": "a" * (MIB + 1)}, "prompt"),
    ("multi-byte prompt of 1 MiB + 1 byte", {"prompt": "a" * (MIB - 1) + "é"}, "prompt"),
    ("four-byte character past 1 MiB", {"prompt": "a" * (MIB - 3) + "😀"}, "prompt"),
    ("NUL in the prompt", {"prompt": "a\x00b"}, "prompt"),
    ("lone surrogate", {"prompt": "a\udc80b"}, "prompt"),
    ("session id that is not a UUID", {"session_id": "abc"}, "session id"),
    ("session id of the wrong type", {"session_id": 12}, "session id"),
    ("max_retries 0", {"max_retries": 0}, "max_retries"),
    ("max_retries True", {"max_retries": True}, "max_retries"),
    ("max_retries 101", {"max_retries": 101}, "max_retries"),
    ("max_retries '3'", {"max_retries": "3"}, "max_retries"),
    ("naive run_at", {"run_at": datetime(2030, 1, 1)}, "run_at"),
    ("negative delay", {"delay": -0.5}, "delay"),
    ("NaN delay", {"delay": float("nan")}, "delay"),
    ("a delay of over a year", {"delay": 366 * 86400.0}, "at most a year"),
    ("an infinite delay", {"delay": float("inf")}, "at most a year"),
    ("delay True", {"delay": True}, "delay"),
    ("delay as text", {"delay": "5"}, "delay"),
    ("empty idempotency key", {"idempotency_key": ""}, "idempotency key"),
    ("idempotency key of 201 characters", {"idempotency_key": "k" * 201}, "idempotency key"),
    ("NUL in the idempotency key", {"idempotency_key": "a\x00b"}, "idempotency key"),
    ("idempotency key that is not text", {"idempotency_key": 7}, "idempotency key"),
    ("lone surrogate in the idempotency key", {"idempotency_key": "a\udc80"}, "idempotency key"),
]


def new_job(**overrides: Any) -> NewJob:
    return NewJob(**{"prompt": "a good prompt", **overrides})


@pytest.mark.parametrize(("what", "overrides", "field"), BAD_FIELDS, ids=[b[0] for b in BAD_FIELDS])
def test_a_bad_field_is_refused_with_a_message_naming_it(
    what: str, overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidJobError, match=field) as refused:
        new_job(**overrides).validated()
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(("what", "overrides", "field"), BAD_FIELDS, ids=[b[0] for b in BAD_FIELDS])
def test_the_client_refuses_a_bad_job_before_it_connects(
    what: str, overrides: dict[str, Any], field: str
) -> None:
    with JobQueue(NOWHERE) as queue, pytest.raises(InvalidJobError, match=field):
        queue.enqueue_many([new_job(), new_job(**overrides)])


@pytest.mark.parametrize(
    "call",
    [
        "complete",
        "fail",
        "get",
        "heartbeat",
        "release",
        "requeue_failed",
        "cancel",
        "attempts",
        "events",
    ],
)
@pytest.mark.parametrize("bad_id", ["not-a-uuid", "", "1234", 42, None, b"x" * 16])
def test_the_client_refuses_a_job_id_that_is_not_a_uuid_before_it_connects(
    call: str, bad_id: Any
) -> None:
    lease = uuid.uuid4()
    calls = {
        "complete": lambda q: q.complete(bad_id),
        "fail": lambda q: q.fail(bad_id, "e"),
        "get": lambda q: q.get(bad_id),
        "heartbeat": lambda q: q.heartbeat(bad_id, lease),
        "release": lambda q: q.release(bad_id, lease),
        "requeue_failed": lambda q: q.requeue_failed(bad_id),
        "cancel": lambda q: q.cancel(bad_id),
        "attempts": lambda q: q.attempts(bad_id),
        "events": lambda q: q.events(bad_id),
    }
    with JobQueue(NOWHERE) as queue, pytest.raises(InvalidJobError, match="job id"):
        calls[call](queue)


@pytest.mark.parametrize("bad_id", ["not-a-uuid", 42, None])
def test_the_client_refuses_a_session_id_that_is_not_a_uuid_before_it_connects(
    bad_id: Any,
) -> None:
    with JobQueue(NOWHERE) as queue, pytest.raises(InvalidJobError, match="session id"):
        queue.cancel_session(bad_id)


@pytest.mark.parametrize("value", [0, 101, -1, True, 2.5, "3"])
def test_the_client_refuses_a_max_concurrency_out_of_range_before_it_connects(
    value: Any,
) -> None:
    with JobQueue(NOWHERE) as queue, pytest.raises(InvalidJobError, match="max_concurrency"):
        queue.create_session(max_concurrency=value)


@pytest.mark.parametrize("key", ["k", "k" * 200, "tap 🚀 2030-01-01", " spaces "])
def test_a_valid_idempotency_key_is_kept_as_given(key: str) -> None:
    assert NewJob("p", idempotency_key=key).validated().idempotency_key == key


def test_invalid_job_error_is_a_value_error_with_the_usage_exit_code() -> None:
    assert issubclass(InvalidJobError, ValueError) and issubclass(InvalidJobError, QueueError)
    assert InvalidJobError.exit_code == 2


@pytest.mark.parametrize(
    "prompt",
    [
        "x",
        "a" * PROMPT_MAX_BYTES,
        "é" * (PROMPT_MAX_BYTES // 2),
        "a" * (PROMPT_MAX_BYTES - 4) + "😀",
        "🚀 emoji 👩‍💻 and flags 🇫🇷",
        "\u200fright-to-left\u200e",
        "e\u0301 combining",
        "  spaces, tabs\t and newlines\r\n  ",
    ],
)
def test_a_valid_prompt_is_returned_unchanged(prompt: str) -> None:
    assert validate_prompt(prompt) is prompt


def test_the_limit_is_one_mebibyte_of_utf8() -> None:
    assert PROMPT_MAX_BYTES == MIB
    with pytest.raises(InvalidJobError, match=f"{MIB + 1} bytes"):
        validate_prompt("a" * (MIB + 1))


def test_the_nul_message_says_where_it_is() -> None:
    with pytest.raises(InvalidJobError, match="position 3"):
        validate_prompt("abc\x00")


def test_a_valid_job_keeps_its_fields_and_the_defaults() -> None:
    session = uuid.uuid4()
    later = datetime.now(timezone(timedelta(hours=9))) + timedelta(minutes=1)
    job = NewJob("p", str(session).upper(), 10, 100, later, 0).validated()
    assert job == NewJob("p", session, 10, 100, later, 0.0)
    assert NewJob("p").validated() == NewJob(
        "p", None, PRIORITY_DEFAULT, MAX_RETRIES_DEFAULT, None, 0.0, None
    )
    assert (PRIORITY_DEFAULT, MAX_RETRIES_DEFAULT) == (0, 3)
    assert NewJob("p", priority=0, max_retries=1, delay=2).validated().delay == 2.0


@pytest.mark.parametrize(
    "text",
    [
        str(uuid.UUID(int=7)),
        f"  {uuid.UUID(int=7)}  ",
        str(uuid.UUID(int=7)).upper(),
        uuid.UUID(int=7).hex,
        f"{{{uuid.UUID(int=7)}}}",
    ],
)
def test_parse_uuid_accepts_the_usual_spellings(text: str) -> None:
    assert parse_uuid(text) == uuid.UUID(int=7)


def test_parse_uuid_shows_a_short_excerpt_of_a_bad_value() -> None:
    with pytest.raises(InvalidJobError) as refused:
        parse_uuid("z" * 500, "job id")
    assert len(str(refused.value)) < 100


def test_an_aware_run_at_in_any_zone_is_accepted() -> None:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    assert NewJob("p", run_at=at).validated().run_at == at
