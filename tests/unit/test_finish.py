"""How the end of an attempt is counted and logged: one row of a table per kind of end."""

from __future__ import annotations

import logging

import pytest

from mobvibe import metrics
from mobvibe.supervisor.finish import REPORTS, Ending, ending, record_end
from mobvibe.vocabulary import EndReason, JobStatus

FIELDS = {"job_id": "j", "worker": "w"}
CASES = [
    # status, reason, by the holder, what it is, the counters that go up
    (JobStatus.COMPLETED, EndReason.COMPLETED, True, Ending.COMPLETED, ["JOBS_COMPLETED"]),
    (JobStatus.CANCELLED, EndReason.ERROR, True, Ending.CANCELLED, []),
    (JobStatus.PENDING, EndReason.RELEASED, True, Ending.RELEASED, []),
    (JobStatus.PENDING, EndReason.ERROR, True, Ending.RETRIED, ["JOBS_FAILED", "JOBS_RETRIED"]),
    (
        JobStatus.FAILED,
        EndReason.DEADLINE_EXCEEDED,
        True,
        Ending.DEAD_LETTERED,
        ["JOBS_FAILED", "JOBS_DEAD_LETTERED"],
    ),
    (None, EndReason.COMPLETED, True, Ending.LEASE_LOST, ["LEASES_LOST"]),
    (None, EndReason.WORKER_EXITED, False, Ending.ALREADY_ENDED, []),
]
COUNTERS = ["JOBS_COMPLETED", "JOBS_FAILED", "JOBS_RETRIED", "JOBS_DEAD_LETTERED", "LEASES_LOST"]


def test_every_kind_of_end_has_a_report() -> None:
    assert set(REPORTS) == set(Ending)
    assert {case[3] for case in CASES} == set(Ending)


@pytest.mark.parametrize(("status", "reason", "by_holder", "kind", "counted"), CASES)
def test_an_end_is_counted_and_logged_once_as_its_kind(
    status: JobStatus | None,
    reason: EndReason,
    by_holder: bool,
    kind: Ending,
    counted: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert ending(status, reason, by_holder=by_holder) == kind
    before = {name: getattr(metrics, name).value() for name in COUNTERS}
    ended = {r: metrics.ATTEMPTS_ENDED.value(r) for r in EndReason}
    with caplog.at_level(logging.DEBUG, logger="mobvibe.supervisor.finish"):
        record_end(status, reason, "boom", dict(FIELDS), by_holder=by_holder)
    after = {name: getattr(metrics, name).value() for name in COUNTERS}
    assert {name for name in COUNTERS if after[name] != before[name]} == set(counted)
    grown = {r for r in EndReason if metrics.ATTEMPTS_ENDED.value(r) != ended[r]}
    report = REPORTS[kind]
    assert grown == (set() if not report.counted else {report.label or reason})
    (record,) = caplog.records
    assert record.__dict__["event"] == report.event and record.levelno == report.level
    assert record.__dict__["job_id"] == "j"


def test_a_retry_says_when_and_why() -> None:
    message = REPORTS[Ending.RETRIED].message.format(error="{x}", retry_at="12:00")
    assert message == "attempt failed, retry at 12:00: {x}"
