"""Every Prometheus metric of the queue, and the scrape endpoint.

Import this module only after PROMETHEUS_MULTIPROC_DIR is set (the supervisor's
entry point does that): prometheus_client picks its storage at import time.
Names follow Prometheus rules: mobvibe_ prefix, base units, _total counters,
never a job or session id as a label.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Why an attempt ended: the one label set shared by the job row's end_reason
# and the metrics.
END_REASONS = ("completed", "error", "deadline_exceeded", "worker_exited", "heartbeat_expired",
               "lease_lost", "released")
DURATION_BUCKETS = (0.005, 0.05, 0.25, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)

JOBS_CLAIMED = Counter("mobvibe_jobs_claimed_total", "Jobs claimed by workers.")
JOBS_COMPLETED = Counter("mobvibe_jobs_completed_total", "Jobs completed.")
JOBS_FAILED = Counter("mobvibe_jobs_failed_total",
                      "Failed attempts recorded by this supervisor (retried or dead-lettered).")
JOBS_RETRIED = Counter("mobvibe_jobs_retried_total", "Failed attempts scheduled for a retry.")
JOBS_DEAD_LETTERED = Counter("mobvibe_jobs_dead_lettered_total",
                             "Jobs moved to the dead letters (status failed).")
ATTEMPTS_ENDED = Counter("mobvibe_attempts_ended_total", "Attempts ended, by reason.", ["reason"])
JOB_DURATION = Histogram("mobvibe_job_duration_seconds", "Run time of an attempt.",
                         buckets=DURATION_BUCKETS)
LEASES_LOST = Counter("mobvibe_leases_lost_total",
                      "Writes refused because the attempt's lease was taken away.")
HEARTBEAT_FAILURES = Counter("mobvibe_heartbeat_failures_total",
                             "Heartbeats that could not reach the database.")
WORKER_RESTARTS = Counter("mobvibe_worker_restarts_total", "Worker processes started again.")
WORKER_EXITS = Counter("mobvibe_worker_exits_total", "Worker process exits, by cause.", ["cause"])
WORKERS_ALIVE = Gauge("mobvibe_workers_alive", "Worker processes running.",
                      multiprocess_mode="livemax")
JOBS_IN_PROGRESS = Gauge("mobvibe_jobs_in_progress", "Jobs running now.",
                         multiprocess_mode="livesum")

REAPER_REQUEUED = Counter("mobvibe_reaper_jobs_requeued_total",
                          "Expired attempts requeued by the reaper.")
REAPER_DEAD_LETTERED = Counter("mobvibe_reaper_jobs_dead_lettered_total",
                               "Expired attempts dead-lettered by the reaper.")
REAPER_PRUNED = Counter("mobvibe_reaper_jobs_pruned_total",
                        "Finished jobs deleted by retention.", ["status"])
REAPER_SWEEP_DURATION = Histogram("mobvibe_reaper_sweep_duration_seconds",
                                  "Duration of one reaper sweep.",
                                  buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30))
REAPER_SWEEPS = Counter("mobvibe_reaper_sweeps_total", "Reaper sweeps, by result.", ["result"])
REAPER_LAST_SUCCESS = Gauge("mobvibe_reaper_last_success_timestamp_seconds",
                            "Unix time of the last successful sweep of this reaper.",
                            multiprocess_mode="max")

# One child per reason, made once: labels() takes a lock and a dict lookup per call.
ENDED = {reason: ATTEMPTS_ENDED.labels(reason) for reason in END_REASONS}
for _cause in ("clean", "error", "signal", "deadline", "recycled"):
    WORKER_EXITS.labels(_cause)
for _status in ("completed", "failed"):
    REAPER_PRUNED.labels(_status)
for _result in ("ok", "error"):
    REAPER_SWEEPS.labels(_result)
