"""mobvibe-queue config: the settings the database holds, changed by operators, each in range."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import Result

from tests.support.commands import assert_one_error_line, invoke_queue, run_queue_cli

DAY = 86400.0
DEFAULTS = {
    "backoff_base_seconds": 10.0,
    "backoff_cap_seconds": 600.0,
    "backoff_jitter": 0.25,
    "heartbeat_timeout_seconds": 30.0,
    "retain_completed_seconds": 7 * DAY,
    "retain_failed_seconds": 30 * DAY,
    "max_events_per_attempt": 10_000,
    "max_event_bytes_per_attempt": 10 * 1024 * 1024,
    "max_releases_per_job": 20,
    "user_max_concurrency": None,  # no limit per user
}


@pytest.fixture
def config(db_url: str) -> Callable[..., Result]:
    """config(*options, url=) runs `mobvibe-queue config` in this process."""

    def invoke(*options: str, url: str | None = None) -> Result:
        return invoke_queue(url or db_url, "config", *options)

    return invoke


def settings(conn: Any) -> tuple[Any, ...]:
    row = conn.execute("SELECT * FROM queue_config").fetchone()
    assert row is not None
    return tuple(row)


def test_config_shows_every_setting_in_seconds(config: Callable[..., Result]) -> None:
    result = config()
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == DEFAULTS


def test_config_sets_the_reapers_limits_as_durations(
    config: Callable[..., Result], conn: Any
) -> None:
    result = config(
        "--heartbeat-timeout", "45s", "--retain-completed", "1d", "--retain-failed", "0"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        **DEFAULTS,
        "heartbeat_timeout_seconds": 45.0,
        "retain_completed_seconds": DAY,
        "retain_failed_seconds": None,  # 0: keep forever
    }
    row = conn.execute(
        "SELECT heartbeat_timeout, retain_completed, retain_failed FROM queue_settings()"
    ).fetchone()
    assert [None if v is None else v.total_seconds() for v in row] == [45.0, DAY, None]
    # an option not given is left alone
    assert json.loads(config("--backoff-base", "2m").stdout)["retain_failed_seconds"] is None


def test_config_sets_the_caps_of_events_and_releases(
    config: Callable[..., Result], conn: Any
) -> None:
    result = config(
        "--max-events-per-attempt",
        "500",
        "--max-event-bytes-per-attempt",
        "2MiB",
        "--max-releases-per-job",
        "3",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        **DEFAULTS,
        "max_events_per_attempt": 500,
        "max_event_bytes_per_attempt": 2 * 1024 * 1024,
        "max_releases_per_job": 3,
    }
    row = conn.execute(
        "SELECT max_events_per_attempt, max_event_bytes_per_attempt, max_releases_per_job "
        "FROM queue_config"
    ).fetchone()
    assert row == (500, 2 * 1024 * 1024, 3)


OUT_OF_RANGE = [
    ["--backoff-base", "1e13"],
    ["--backoff-base", "99999999999999999999999"],
    ["--backoff-base", "31d"],
    ["--backoff-base", "0"],
    ["--backoff-cap", "-5"],
    ["--backoff-jitter", "nan"],
    ["--backoff-jitter", "1.5"],
    ["--heartbeat-timeout", "500ms"],
    ["--heartbeat-timeout", "2d"],
    ["--heartbeat-timeout", "0"],
    ["--retain-completed", "-1"],
    ["--retain-completed", "0.5s"],
    ["--retain-failed", "3651d"],
    ["--backoff-base", "60", "--backoff-cap", "5"],
    ["--backoff-cap", "5"],  # below the base in the database (10 s)
    ["--backoff-jitter", "0", "--heartbeat-timeout", "1e13"],  # one bad value: nothing changes
    ["--max-events-per-attempt", "0"],
    ["--max-events-per-attempt", "1000001"],
    ["--max-event-bytes-per-attempt", "1KiB"],
    ["--max-event-bytes-per-attempt", "2GiB"],
    ["--max-event-bytes-per-attempt", "10MB"],
    ["--max-releases-per-job", "0"],
    ["--max-releases-per-job", "1001"],
]


@pytest.mark.parametrize("options", OUT_OF_RANGE, ids=[" ".join(o) for o in OUT_OF_RANGE])
def test_an_out_of_range_value_is_one_error_line_and_changes_nothing(
    config: Callable[..., Result], conn: Any, options: list[str]
) -> None:
    before = settings(conn)
    result = config(*options)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert settings(conn) == before


def test_the_installed_command_refuses_1e13_in_one_line(db_url: str, conn: Any) -> None:
    before = settings(conn)
    line = assert_one_error_line(
        run_queue_cli("config", "--backoff-base", "1e13", database_url=db_url), 2
    )
    assert "--backoff-base" in line
    assert settings(conn) == before


def test_only_an_operator_changes_the_settings(
    config: Callable[..., Result], conn: Any, login_role: Callable[..., str]
) -> None:
    before = settings(conn)
    worker = config("--heartbeat-timeout", "1s", url=login_role("mobvibe_worker"))
    assert worker.exit_code == 1
    (line,) = [line for line in worker.output.splitlines() if line.startswith("Error:")]
    assert "permission denied" in line and "mobvibe_operator" in line
    assert settings(conn) == before
    monitor = config(url=login_role("mobvibe_monitor"))  # reading is for everyone
    assert monitor.exit_code == 0 and json.loads(monitor.stdout) == DEFAULTS
    operator = config("--heartbeat-timeout", "1m", url=login_role("mobvibe_operator"))
    assert operator.exit_code == 0, operator.output
    assert json.loads(operator.stdout)["heartbeat_timeout_seconds"] == 60.0
    assert conn.execute("SELECT test_clock FROM queue_config").fetchone() == (True,)
