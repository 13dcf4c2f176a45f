"""Durations and reaper settings, without a database."""

from __future__ import annotations

import os

import click
import pytest

from mobvibe.durations import Duration, format_duration, parse_duration
from mobvibe.errors import ConfigError
from mobvibe.reaper.sweep import ReaperSettings, SweepResult

DAY = 86400.0


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30", 30),
        ("30s", 30),
        ("1.5", 1.5),
        ("500ms", 0.5),
        ("5m", 300),
        ("2h", 7200),
        ("7d", 7 * DAY),
        (" 7 D ", 7 * DAY),
        ("0", 0),
        (".5s", 0.5),
    ],
)
def test_durations_parse_seconds_or_a_unit(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7x", "-5", "5 days", "1e3", "s"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_duration_type_says_what_0_means_or_refuses_it() -> None:
    with pytest.raises(click.BadParameter, match="0 means keep forever"):
        Duration(zero="keep forever").convert("soon", None, None)
    assert Duration(zero="keep forever").convert("0", None, None) == 0
    with pytest.raises(click.BadParameter, match="must be greater than 0"):
        Duration().convert("0", None, None)


@pytest.mark.parametrize(
    "seconds, text",
    [(604800, "7d"), (30, "30s"), (90, "90s"), (300, "5m"), (0.2, "0.2s"), (0, "0s")],
)
def test_durations_format_in_the_largest_exact_unit(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_default_settings_are_valid_and_name_this_process() -> None:
    settings = ReaperSettings().validate()
    assert (settings.interval, settings.batch_size, settings.prune_batch) == (5, 500, 1000)
    assert settings.name.endswith(f":{os.getpid()}")


def test_the_limits_are_not_the_reapers_to_set() -> None:
    """The heartbeat timeout and the retention live in queue_config."""
    assert set(ReaperSettings.__dataclass_fields__) == {
        "interval",
        "batch_size",
        "prune_batch",
        "name",
    }


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"interval": 0}, "must be greater than 0"),
        ({"batch_size": 0}, "--batch-size must be from 1"),
        ({"prune_batch": 10**6}, "--prune-batch must be from 1"),
        ({"name": ""}, "--name"),
    ],
)
def test_settings_that_cannot_work_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ReaperSettings(**changes).validate()  # type: ignore[arg-type]


def test_summary_starts_with_the_four_keys_of_the_issue() -> None:
    summary = SweepResult(
        requeued=2, dead_lettered=1, pruned_completed=3, pruned_failed=4, duration_ms=12.5
    ).as_dict()
    assert list(summary) == [
        "requeued",
        "dead_lettered",
        "pruned",
        "duration_ms",
        "pruned_completed",
        "pruned_failed",
        "waiting_retries",
        "cancelled",
        "pruned_cancelled",
        "next_retry_at",
        "heartbeat_timeout_s",
        "retain_completed_s",
        "retain_failed_s",
    ]
    assert summary["pruned"] == 7 and summary["duration_ms"] == 12.5
    assert summary["next_retry_at"] is None
