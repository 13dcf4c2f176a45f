"""The queue's closed sets of words: a job's status, why an attempt ended, why a worker left.

Each is a StrEnum: a member is its word (it equals the string, psycopg sends it as
text, JSON writes it as a string), and a misspelt member is a type error where a
misspelt string would be a silent miss. They live at the bottom of the layers
because the metrics, below the data layer, label their counters with them.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """coding_jobs.status (the plan's four, and cancelled); failed is the dead letters."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


# The statuses a job never leaves (the reaper prunes them after their retention).
FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class EndReason(StrEnum):
    """Why an attempt ended, as the supervisor and the reaper write it (end_reason).

    The column itself is free text: an operator's fail_job may give any reason, and a
    requeue from the dead letters writes one of its own, so rows are read as str.
    """

    COMPLETED = "completed"
    ERROR = "error"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    WORKER_EXITED = "worker_exited"
    HEARTBEAT_EXPIRED = "heartbeat_expired"
    LEASE_LOST = "lease_lost"
    RELEASED = "released"
    CANCELLED = "cancelled"


class WaitingFor(StrEnum):
    """coding_jobs.waiting_for: why a pending job cannot start yet (NULL: it may)."""

    SESSION = "session"  # earlier prompts of its session hold every place
    RUN_AT = "run_at"  # its run_at (a delay, a retry's backoff) is ahead
    USER = "user"  # its user runs as many jobs as the user's limit allows


class LimitSource(StrEnum):
    """Whose a user's limit in force is (queue_user_list())."""

    OWN = "own"  # the user's row in queue_user_limits (`users limit`)
    DEFAULT = "default"  # queue_config.user_max_concurrency


class ExitCause(StrEnum):
    """Why a worker process left, as the supervisor counts it."""

    CLEAN = "clean"  # asked to stop, or gave up a lost lease
    ERROR = "error"  # a non-zero exit nobody asked for
    SIGNAL = "signal"  # killed by a signal nobody here sent for a reason
    DEADLINE = "deadline"  # killed past --job-timeout
    RECYCLED = "recycled"  # did its --max-jobs-per-worker
    CANCELLED = "cancelled"  # killed: its job ignored a cancel


class Channel(StrEnum):
    """The queue's notification channels."""

    NEW_JOB = "new_job"  # the plan's
    JOB_STATUS_CHANGED = "job_status_changed"  # the plan's
    JOB_PROGRESS = "job_progress"  # an event of a running attempt
    JOB_CANCEL = "job_cancel"  # a cancel asked of a running attempt, for its supervisor


class SweepOutcome(StrEnum):
    """How a reaper's sweep went."""

    OK = "ok"
    ERROR = "error"
