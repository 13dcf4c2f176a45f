"""The arbiter's decisions, with time as numbers: crash loop, restart delays, kills, exit causes."""

from __future__ import annotations

import signal
import uuid
from dataclasses import replace

import pytest

from mobvibe.supervisor import attempt
from mobvibe.supervisor.children import Exit
from mobvibe.supervisor.policy import (
    EXEC_BACKSTOP_GRACE,
    CrashLoop,
    ExitCode,
    RestartDelays,
    aux_restart_delay,
    crash_restart_delay,
    exit_cause,
    is_crash,
    kill_reason,
    rescue_message,
    rescue_reason,
)
from mobvibe.supervisor.settings import JOB_TIMEOUT_DEFAULT, Settings
from mobvibe.vocabulary import EndReason, ExitCause

WINDOW = 60.0
KILLED = Exit(None, signal.SIGKILL)
CRASHED = Exit(1, None)

# -- the crash loop -------------------------------------------------------------


def test_the_crash_that_reaches_the_limit_within_the_window_stops_the_supervisor() -> None:
    loop = CrashLoop(limit=3, window=WINDOW)
    assert [loop.record(t, uuid.uuid4()) for t in (0.0, 10.0, 20.0)] == [False, False, True]
    assert loop.count == 3


def test_crashes_holding_no_job_each_count_toward_the_crash_loop() -> None:
    loop = CrashLoop(limit=3, window=WINDOW)
    assert [loop.record(t, None) for t in (0.0, 1.0, 2.0)] == [False, False, True]


def test_the_crashes_of_one_job_count_once_toward_the_crash_loop() -> None:
    loop = CrashLoop(limit=3, window=WINDOW)
    poison = uuid.uuid4()
    assert not any(loop.record(t, poison) for t in (0.0, 1.0, 2.0, 3.0, 4.0))
    assert loop.count == 1
    assert not loop.record(5.0, uuid.uuid4())
    assert loop.record(6.0, uuid.uuid4())


def test_a_crash_exactly_at_the_window_edge_still_counts() -> None:
    loop = CrashLoop(limit=3, window=WINDOW)
    loop.record(0.0, None)
    loop.record(30.0, None)
    assert loop.record(WINDOW, None)


def test_crashes_older_than_the_window_are_forgotten() -> None:
    loop = CrashLoop(limit=3, window=WINDOW)
    loop.record(0.0, None)
    loop.record(30.0, None)
    assert not loop.record(WINDOW + 0.5, None)
    assert loop.count == 2


def test_a_job_whose_crash_is_still_within_the_window_at_its_edge_does_not_count_again() -> None:
    loop = CrashLoop(limit=2, window=WINDOW)
    poison = uuid.uuid4()
    loop.record(0.0, poison)
    assert not loop.record(WINDOW, poison)
    assert loop.count == 1


def test_a_job_counts_again_once_its_counted_crash_left_the_window() -> None:
    loop = CrashLoop(limit=2, window=WINDOW)
    poison = uuid.uuid4()
    loop.record(0.0, poison)
    loop.record(40.0, None)
    # the poison job's first crash (at 0) is forgotten; the one at 40 still counts
    assert loop.record(WINDOW + 0.5, poison)


# -- restart delays -------------------------------------------------------------


def test_the_first_crash_of_a_worker_is_replaced_at_once() -> None:
    assert RestartDelays(WINDOW).after_crash(0, 100.0) == 0.0


def test_a_second_crash_within_the_window_waits_longer() -> None:
    delays = RestartDelays(WINDOW)
    assert [delays.after_crash(0, t) for t in (0.0, 1.0, 2.0, 3.0)] == [0.0, 0.1, 0.2, 0.4]


def test_a_crash_restart_waits_at_most_10_seconds() -> None:
    assert crash_restart_delay(8) == pytest.approx(6.4)
    assert crash_restart_delay(9) == 10.0
    assert crash_restart_delay(1000) == 10.0


def test_the_crashes_of_one_worker_do_not_delay_another() -> None:
    delays = RestartDelays(WINDOW)
    delays.after_crash(0, 0.0)
    delays.after_crash(0, 1.0)
    assert delays.after_crash(1, 2.0) == 0.0


def test_a_crash_at_the_window_edge_still_waits() -> None:
    delays = RestartDelays(WINDOW)
    delays.after_crash(0, 0.0)
    assert delays.after_crash(0, WINDOW) == pytest.approx(0.1)


def test_a_crash_after_the_window_is_replaced_at_once_again() -> None:
    delays = RestartDelays(WINDOW)
    delays.after_crash(0, 0.0)
    delays.after_crash(0, 1.0)
    assert delays.after_crash(0, 1.0 + WINDOW + 0.5) == 0.0


def test_only_signal_and_error_exits_are_crashes() -> None:
    crashes = {cause for cause in ExitCause if is_crash(cause)}
    assert crashes == {ExitCause.SIGNAL, ExitCause.ERROR}


def test_an_aux_child_failing_at_start_waits_1_second_then_twice_as_long() -> None:
    first = aux_restart_delay(ran_for=0.2, previous=None)
    second = aux_restart_delay(ran_for=0.2, previous=first)
    assert (first, second) == (1.0, 2.0)


def test_an_aux_child_failing_at_start_waits_at_most_a_minute() -> None:
    assert aux_restart_delay(ran_for=0.2, previous=32.0) == 60.0
    assert aux_restart_delay(ran_for=0.2, previous=60.0) == 60.0


def test_an_aux_child_that_ran_over_a_minute_restarts_at_once() -> None:
    assert aux_restart_delay(ran_for=60.5, previous=32.0) == 0.0
    assert aux_restart_delay(ran_for=60.0, previous=32.0) == 60.0  # exactly a minute: not yet


# -- kill deadlines ---------------------------------------------------------------

# fence_after = max(30 - 2 * 5, (2 * 5 + 30) / 2) = 20 s; silent for more than
# kill_after = (20 + 30) / 2 = 25 s is hung
SETTINGS = Settings(
    database_url="postgresql://unused", heartbeat_interval=5.0, heartbeat_timeout=30.0
)


def reason_at(
    now: float,
    *,
    heartbeat_ok: float | None = None,
    job_timeout: float = JOB_TIMEOUT_DEFAULT,
    exec_cmd: str | None = None,
) -> str | None:
    """The kill reason at `now` for a job started at 0, heartbeating until `heartbeat_ok`."""
    settings = replace(SETTINGS, job_timeout=job_timeout, exec_cmd=exec_cmd)
    beat = now if heartbeat_ok is None else heartbeat_ok
    return kill_reason(started=0.0, heartbeat_ok=beat, now=now, settings=settings)


def test_a_heartbeating_worker_within_its_deadline_is_left_alone() -> None:
    assert reason_at(now=100.0, job_timeout=100.0) is None


def test_a_worker_past_its_job_timeout_is_killed_for_deadline_exceeded() -> None:
    assert reason_at(now=100.5, job_timeout=100.0) == "deadline_exceeded"


def test_an_exec_worker_gets_a_grace_before_the_deadline_kill() -> None:
    assert reason_at(now=106.5, job_timeout=100.0, exec_cmd="true") is None
    assert reason_at(now=107.5, job_timeout=100.0, exec_cmd="true") == "deadline_exceeded"


def test_the_deadline_kill_leaves_an_exec_command_its_own_kill_grace() -> None:
    assert EXEC_BACKSTOP_GRACE > attempt.KILL_GRACE


def test_a_job_timeout_of_0_means_no_deadline() -> None:
    assert reason_at(now=1e9, job_timeout=0.0) is None


def test_a_worker_silent_up_to_the_fence_plus_an_interval_is_left_alone() -> None:
    assert reason_at(now=125.0, heartbeat_ok=100.0) is None


def test_a_worker_silent_past_the_fence_is_killed_for_heartbeat_expired() -> None:
    assert reason_at(now=125.5, heartbeat_ok=100.0) == "heartbeat_expired"


def test_a_worker_past_its_deadline_and_silent_is_killed_for_the_deadline() -> None:
    assert reason_at(now=200.0, heartbeat_ok=0.0, job_timeout=100.0) == "deadline_exceeded"


# (interval, timeout, fence_after, kill_after)
FENCES = [
    (5.0, 30.0, 20.0, 25.0),  # the defaults: two intervals before the timeout, as ever
    (1.0, 10.0, 8.0, 9.0),
    (2.0, 6.0, 5.0, 5.5),  # a third: halfway between two intervals and the timeout
    (1.0, 4.0, 3.0, 3.5),
    (0.3, 3.0, 2.4, 2.7),  # the fault suite's
]


@pytest.mark.parametrize(("interval", "timeout", "fence", "kill"), FENCES)
def test_the_fence_and_the_kill_fall_between_a_renewal_passed_over_and_the_timeout(
    interval: float, timeout: float, fence: float, kill: float
) -> None:
    settings = Settings(
        database_url="postgresql://unused", heartbeat_interval=interval, heartbeat_timeout=timeout
    ).validate()
    assert settings.fence_after == pytest.approx(fence)
    assert settings.kill_after == pytest.approx(kill)


@pytest.mark.parametrize("ratio", [3.0, 3.3, 4.0, 5.5, 6.0, 10.0, 100.0])
def test_one_renewal_passed_over_never_fences_a_worker_at_any_allowed_interval(
    ratio: float,
) -> None:
    """The renewal after one passed over comes two intervals after the last: the worker
    waits longer; it still stops, and the supervisor kills it if it does not, before the
    timeout after which the reaper may hand the job to another worker."""
    interval = 2.0
    settings = Settings(
        database_url="postgresql://unused",
        heartbeat_interval=interval,
        heartbeat_timeout=ratio * interval,
    ).validate()
    slack = min(interval / 2, settings.heartbeat_timeout / 2 - interval)
    assert settings.fence_after >= 2 * interval + slack
    assert settings.kill_after >= settings.fence_after + slack / 2
    assert settings.heartbeat_timeout >= settings.kill_after + slack / 2


# -- exit causes --------------------------------------------------------------------


def cause(
    how: Exit,
    killed_for: EndReason | None = None,
    *,
    stopping: bool = False,
    retiring: bool = False,
) -> ExitCause:
    """exit_cause with the usual case as defaults: not killed, not stopping, not retiring."""
    return exit_cause(how, killed_for, stopping=stopping, retiring=retiring)


def test_a_worker_the_arbiter_killed_for_its_deadline_exits_for_deadline() -> None:
    assert cause(KILLED, EndReason.DEADLINE_EXCEEDED) == "deadline"
    assert cause(Exit(ExitCode.OK, None), EndReason.DEADLINE_EXCEEDED, stopping=True) == "deadline"


def test_a_worker_that_exits_0_unasked_was_recycled() -> None:
    assert cause(Exit(ExitCode.OK, None)) == "recycled"


@pytest.mark.parametrize(("stopping", "retiring"), [(True, False), (False, True)])
def test_a_worker_that_exits_0_when_asked_exits_clean(stopping: bool, retiring: bool) -> None:
    assert cause(Exit(ExitCode.OK, None), stopping=stopping, retiring=retiring) == "clean"


def test_a_worker_that_gave_up_its_lease_exits_clean() -> None:
    assert cause(Exit(ExitCode.LEASE_LOST, None)) == ExitCause.CLEAN


def test_a_worker_killed_by_a_signal_exits_for_signal() -> None:
    assert cause(KILLED) == "signal"
    assert cause(KILLED, EndReason.HEARTBEAT_EXPIRED) == "signal"


@pytest.mark.parametrize("code", [1, 2, ExitCode.CRASH_LOOP, 137])
def test_a_worker_with_any_other_exit_code_exits_for_error(code: int) -> None:
    assert cause(Exit(code, None)) == "error"


def test_the_exit_codes_the_parent_reads_are_distinct_from_each_other_and_from_click() -> None:
    codes = set(ExitCode)
    assert len(codes) == len(ExitCode.__members__)
    assert codes.isdisjoint({1, 2})


# -- rescue of the job a dead worker held --------------------------------------------


def test_the_job_of_a_worker_that_lost_its_lease_is_not_rescued() -> None:
    assert rescue_reason(Exit(ExitCode.LEASE_LOST, None), None) is None


@pytest.mark.parametrize(
    "killed_for",
    [EndReason.DEADLINE_EXCEEDED, EndReason.HEARTBEAT_EXPIRED, EndReason.RELEASED],
)
def test_a_job_is_rescued_for_the_reason_the_arbiter_killed_its_worker(
    killed_for: EndReason,
) -> None:
    assert rescue_reason(KILLED, killed_for) == killed_for


@pytest.mark.parametrize("how", [KILLED, CRASHED, Exit(ExitCode.OK, None)])
def test_the_job_of_a_worker_that_died_by_itself_is_rescued_for_worker_exited(how: Exit) -> None:
    assert rescue_reason(how, None) == "worker_exited"


def test_a_job_past_its_deadline_is_failed_naming_the_timeout() -> None:
    message = rescue_message(KILLED, EndReason.DEADLINE_EXCEEDED, 90.0)
    assert message == "job exceeded --job-timeout (90 s)"


def test_a_silent_worker_stopped_renewing_the_lease() -> None:
    message = rescue_message(KILLED, EndReason.HEARTBEAT_EXPIRED, 90.0)
    assert message == "worker stopped renewing the lease"


def test_a_job_killed_at_shutdown_was_released() -> None:
    assert rescue_message(KILLED, EndReason.RELEASED, 90.0) == "released at shutdown"


def test_a_worker_that_died_by_itself_is_described_by_its_exit() -> None:
    assert rescue_message(CRASHED, None, 90.0) == "worker exited (exit code 1)"
    assert rescue_message(KILLED, None, 90.0) == (
        "worker exited (signal 9 (SIGKILL) (out of memory?))"
    )
