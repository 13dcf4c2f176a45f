"""The supervisor's settings: one frozen object, defaults as named constants, one validation."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from mobvibe.errors import ConfigError

POLL_INTERVAL_DEFAULT = 10.0
HEARTBEAT_INTERVAL_DEFAULT = 5.0
HEARTBEAT_TIMEOUT_DEFAULT = 30.0
JOB_TIMEOUT_DEFAULT = 3600.0
SHUTDOWN_TIMEOUT_DEFAULT = 25.0
METRICS_PORT_DEFAULT = 9400
REAPER_INTERVAL_DEFAULT = 5.0
CRASH_LOOP_LIMIT_DEFAULT = 10
CRASH_LOOP_WINDOW_DEFAULT = 60.0
WORKERS_MAX = 256


@dataclass(frozen=True)
class Settings:
    """Everything the supervisor and its workers need; built once, before fork."""

    database_url: str
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    exec_cmd: str | None = None
    handler: str | None = None
    poll_interval: float = POLL_INTERVAL_DEFAULT
    heartbeat_interval: float = HEARTBEAT_INTERVAL_DEFAULT
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT_DEFAULT
    job_timeout: float = JOB_TIMEOUT_DEFAULT  # 0: no deadline
    shutdown_timeout: float = SHUTDOWN_TIMEOUT_DEFAULT
    max_jobs_per_worker: int = 0  # 0: never recycle
    metrics_port: int = METRICS_PORT_DEFAULT  # 0: no HTTP endpoint
    metrics_host: str = "0.0.0.0"  # noqa: S104 - scraped from outside the pod
    reaper: bool = True
    reaper_interval: float = REAPER_INTERVAL_DEFAULT
    drain: bool = False  # exit 0 once no job is pending or processing
    crash_loop_limit: int = CRASH_LOOP_LIMIT_DEFAULT
    crash_loop_window: float = CRASH_LOOP_WINDOW_DEFAULT
    durable_completions: bool = True
    status_notifications: bool = True  # job_status_changed from the workers' transitions
    node: str = field(default_factory=socket.gethostname)

    def validate(self) -> Settings:
        """Return self, or raise ConfigError naming the first setting that cannot work."""
        if not 1 <= self.workers <= WORKERS_MAX:
            raise ConfigError(f"--workers must be from 1 to {WORKERS_MAX}, got {self.workers}")
        if self.exec_cmd and self.handler:
            raise ConfigError("give either --exec or --handler, not both")
        for name in ("poll_interval", "heartbeat_interval", "heartbeat_timeout", "reaper_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}"
                )
        if self.job_timeout < 0 or self.shutdown_timeout < 0:
            raise ConfigError("--job-timeout and --shutdown-timeout must be >= 0")
        if self.heartbeat_timeout < 2 * self.heartbeat_interval:
            raise ConfigError(
                f"--heartbeat-timeout ({self.heartbeat_timeout:g} s) must be at "
                f"least twice --heartbeat-interval ({self.heartbeat_interval:g} s); "
                "3x or more is safer"
            )
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port must be from 0 to 65535, got {self.metrics_port}")
        return self

    def worker_id(self, index: int, pid: int) -> str:
        """The id worker `index` (process `pid`) claims under; the supervisor finds a dead
        worker's claims by it."""
        return f"{self.node}:{index}:{pid}"

    @property
    def fence_after(self) -> float:
        """Seconds without a renewed lease after which a worker stops its job itself.

        Two heartbeat intervals before the reaper may hand the job to another
        worker, so that two copies of one job never run at once.
        """
        return max(self.heartbeat_interval, self.heartbeat_timeout - 2 * self.heartbeat_interval)
