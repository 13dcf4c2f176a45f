"""deploy/prometheus/alerts.yml: valid, firing as its unit tests expect, on real metric names."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from mobvibe import metrics
from tests.deploy.support import ALERTS, ROOT

# Gauges computed from the database at scrape time (supervisor/httpserver.py).
SCRAPE_TIME_METRICS = {
    "mobvibe_database_up",
    "mobvibe_queue_jobs",
    "mobvibe_queue_oldest_pending_age_seconds",
    "mobvibe_queue_retries_waiting",
    "mobvibe_queue_jobs_delayed",
    "mobvibe_reaper_last_sweep_timestamp_seconds",
    "mobvibe_jobs_in_progress",
    "mobvibe_queue_events_dropped_total",
    "mobvibe_queue_event_bytes_dropped_total",
    "mobvibe_queue_releases_counted_total",
}


def promtool() -> str:
    found = shutil.which("promtool") or (
        str(ROOT / ".tools" / "promtool") if (ROOT / ".tools" / "promtool").exists() else None
    )
    if found is None:
        pytest.skip("promtool is not installed (`make test` unpacks it into .tools/)")
    return found


def test_promtool_check_rules_passes() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", "alerts.test.yml"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ALERTS.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_use_only_metrics_the_supervisor_exports() -> None:
    exported = SCRAPE_TIME_METRICS | {m.exposed_name() for m in metrics.defined()}
    used = set(re.findall(r"\bmobvibe_[a-z_]+", ALERTS.read_text()))
    assert used <= exported, f"unknown metrics in alerts.yml: {sorted(used - exported)}"
