"""DATABASE_URL: what validate_url lets through, and how it refuses the rest without a secret."""

from __future__ import annotations

import pytest

from mobvibe.errors import ConfigError
from mobvibe.sql.db import validate_url

GOOD = [
    "postgresql://postgres@127.0.0.1/test",
    "postgresql://user:pass@db.example.com:5432/mobvibe?sslmode=require",
    "postgres://user:pass@localhost/mobvibe",
    "postgresql:///mobvibe?host=/var/run/postgresql",
    "postgresql://u:p%2Fq@h1:5432,h2:5433/db?target_session_attrs=read-write",
    "host=127.0.0.1 port=5432 dbname=test user=postgres",
    "host=/tmp dbname=test",
    "dbname=test sslmode=verify-full",
]

# Every password below is made of these fragments, so that a message that echoes
# any part of one is caught.
FRAGMENTS = ("S3cr", "3tPw")

# (url, words the message must contain)
BAD = [
    ("mysql://u:S3cr3tPw@h/db", ["not a PostgreSQL URL", "'mysql'", "postgresql://"]),
    ("http://u:S3cr3tPw@h/db", ["not a PostgreSQL URL", "'http'"]),
    ("postgresql://u:S3cr3tPw@h:notaport/db", ["invalid port"]),
    ("postgresql://u:S3cr3tPw@h:99999/db", ["invalid port"]),
    ("postgresql://u:S3cr3tPw@h:0/db", ["invalid port"]),
    ("postgresql://u:S3cr3tPw@h1:5432,h2:x/db", ["invalid port"]),
    ("host=h port=x password=S3cr3tPw", ["invalid port"]),
    ("postgresql://u:S3cr3tPw@h/db?sslmode=maybe", ["invalid sslmode 'maybe'"]),
    ("password=S3cr3tPw sslmode=always", ["invalid sslmode 'always'"]),
    ("postgresql://u:S3cr3tPw@h/db?bogus=1", ["not a valid PostgreSQL URL"]),
    ("postgresql://u:S3cr3tPw%zz@h/db", ["not a valid PostgreSQL URL"]),
    ("postgresql://u:S3cr3tPw@[::1/db", ["not a valid PostgreSQL URL"]),
    ("host=h password='S3cr3tPw", ["not a valid PostgreSQL URL"]),
    ("host=h password=S3cr 3tPw", ["not a valid PostgreSQL URL"]),
    ("S3cr3tPw", ["not a valid PostgreSQL URL", "expected postgresql://"]),
    ("garbage", ["not a valid PostgreSQL URL", "expected postgresql://"]),
    # an unencoded / ends the authority: the parser would take "S3cr" for the port
    ("postgresql://user:S3cr/3tPw@h/db", ["invalid port", "percent-encode"]),
    ("", ["empty"]),
    ("   ", ["empty"]),
]


@pytest.mark.parametrize("url", GOOD)
def test_a_valid_url_or_conninfo_is_returned_as_is(url: str) -> None:
    assert validate_url(url) is url


@pytest.mark.parametrize(("url", "words"), BAD, ids=[b[0] or "<empty>" for b in BAD])
def test_a_bad_url_is_refused_with_a_message_that_names_the_problem(
    url: str, words: list[str]
) -> None:
    with pytest.raises(ConfigError) as refused:
        validate_url(url)
    message = str(refused.value)
    assert message.startswith("DATABASE_URL ")
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(("url", "words"), BAD, ids=[b[0] or "<empty>" for b in BAD])
def test_a_refusal_never_echoes_the_password(url: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as refused:
        validate_url(url)
    message = str(refused.value)
    assert not [fragment for fragment in FRAGMENTS if fragment in message], message


def test_a_config_error_is_a_usage_error() -> None:
    assert ConfigError.exit_code == 2
