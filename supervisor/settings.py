"""The supervisor's settings: one frozen object, defaults as named constants, one validation."""

from __future__ import annotations

import os
import re
import secrets
import socket
import uuid
from dataclasses import dataclass, field

from mobvibe.durations import format_duration
from mobvibe.errors import ConfigError
from mobvibe.supervisor.sandbox import Sandbox

POLL_INTERVAL_DEFAULT = 10.0
HEARTBEAT_INTERVAL_DEFAULT = 5.0
HEARTBEAT_TIMEOUT_DEFAULT = 30.0
JOB_TIMEOUT_DEFAULT = 3600.0
SHUTDOWN_TIMEOUT_DEFAULT = 25.0
METRICS_PORT_DEFAULT = 9400
# Not on every address unless asked: the image sets 0.0.0.0 (MOBVIBE_METRICS_HOST),
# where a scraper and the kubelet's probes must reach it.
METRICS_HOST_DEFAULT = "127.0.0.1"
REAPER_INTERVAL_DEFAULT = 5.0
CRASH_LOOP_LIMIT_DEFAULT = 10
CRASH_LOOP_WINDOW_DEFAULT = 60.0
WORKERS_MAX = 256
# A pod id goes into every worker id (pod:index:pid:instance): no colon, no space. A
# Kubernetes pod's name and a host name fit.
POD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


@dataclass(frozen=True)
class Settings:
    """Everything the supervisor and its workers need; built once, before fork."""

    database_url: str
    # The pod's one direct connection (LISTEN, heartbeats, the embedded reaper):
    # set when database_url goes through a transaction pooler such as PgBouncer.
    listen_url: str | None = None
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    exec_cmd: str | None = None
    exec_env: tuple[str, ...] = ()  # names the --exec command gets beyond the allow-list
    # Where each --exec attempt runs (checked at start); None: without a sandbox, which
    # the operator asked for with --unsandboxed.
    sandbox: Sandbox | None = None
    handler: str | None = None
    poll_interval: float = POLL_INTERVAL_DEFAULT
    heartbeat_interval: float = HEARTBEAT_INTERVAL_DEFAULT
    # Set in the database (queue_config), where the reaper reads it too; the
    # supervisor reads it at start.
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT_DEFAULT
    job_timeout: float = JOB_TIMEOUT_DEFAULT  # 0: no deadline
    shutdown_timeout: float = SHUTDOWN_TIMEOUT_DEFAULT
    max_jobs_per_worker: int = 0  # 0: never recycle
    metrics_port: int = METRICS_PORT_DEFAULT  # 0: no HTTP endpoint
    metrics_host: str = METRICS_HOST_DEFAULT
    reaper: bool = True
    reaper_interval: float = REAPER_INTERVAL_DEFAULT
    drain: bool = False  # exit 0 once no job is pending or processing
    crash_loop_limit: int = CRASH_LOOP_LIMIT_DEFAULT
    crash_loop_window: float = CRASH_LOOP_WINDOW_DEFAULT
    durable_completions: bool = True
    status_notifications: bool = True  # job_status_changed from the workers' transitions
    # This supervisor's id, kept across its restarts as long as its workspaces are: in
    # Kubernetes, the pod's name (the host name there).
    pod_id: str = field(default_factory=socket.gethostname)
    # Each session's workspace, kept between its prompts: DIR/<session uuid> (None: none).
    workspaces: str | None = None
    workspaces_max_bytes: int = 0  # 0: no limit
    workspaces_max_count: int = 0  # 0: no limit
    # Tells this supervisor's workers from another's with the same host name and
    # pids (two PID namespaces on one host).
    instance: str = field(default_factory=lambda: secrets.token_hex(3))
    # The pod's secret, in memory only: its workers' lease tokens derive from it, so
    # that the parent can end a dead worker's attempts without reading any token.
    lease_key: uuid.UUID = field(default_factory=uuid.uuid4, repr=False)

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
        if self.heartbeat_timeout < 3 * self.heartbeat_interval:
            # The one rule of the heartbeat settings: a worker lets one renewal be passed
            # over (two intervals) and stops before the timeout (fence_after), so three
            # must fit.
            raise ConfigError(
                f"--heartbeat-interval ({format_duration(self.heartbeat_interval)}) must be at "
                "most a third of the heartbeat timeout set in the database "
                f"({format_duration(self.heartbeat_timeout)}): lower the interval, or raise the "
                "timeout with `mobvibe-queue config --heartbeat-timeout`"
            )
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port must be from 0 to 65535, got {self.metrics_port}")
        self._validate_pod()
        return self

    def _validate_pod(self) -> None:
        if not POD_ID.fullmatch(self.pod_id):
            raise ConfigError(
                f"--pod-id must be 1 to 253 letters, digits, '.', '-' or '_' (a pod's name), "
                f"got {self.pod_id!r}"
            )
        limits = self.workspaces_max_bytes or self.workspaces_max_count
        if limits and self.workspaces is None:
            raise ConfigError(
                "--workspaces-max-bytes and --workspaces-max-count need --workspaces DIR"
            )
        if self.workspaces_max_bytes < 0 or self.workspaces_max_count < 0:
            raise ConfigError("--workspaces-max-bytes and --workspaces-max-count must be >= 0")

    @property
    def pooled(self) -> bool:
        """The workers' connections go through a transaction pooler: no prepared statements,
        no session settings."""
        return self.listen_url is not None

    def worker_id(self, index: int, pid: int) -> str:
        """The id worker `index` (process `pid`) claims under, pod:index:pid:instance; the
        supervisor finds a dead worker's claims by it."""
        return f"{self.pod_id}:{index}:{pid}:{self.instance}"

    @property
    def fence_after(self) -> float:
        """Seconds without a renewed lease after which a worker stops its job itself.

        Before the reaper may hand the job to another worker (the timeout), so that
        two copies of one job never run at once; and after the next renewal even when
        one was passed over (the job's row locked by another transaction: the lease
        is then two intervals old when renewed), so that a healthy job is never
        stopped for it. Two intervals before the timeout where that leaves room (a
        timeout of six intervals or more), else halfway between two intervals and the
        timeout: at the largest interval, a third of the timeout, 2.5 intervals.
        """
        interval, timeout = self.heartbeat_interval, self.heartbeat_timeout
        return max(timeout - 2 * interval, (2 * interval + timeout) / 2)

    @property
    def kill_after(self) -> float:
        """Seconds without a renewed lease after which the supervisor kills a worker that
        did not stop its job itself (hung, or frozen): halfway between fence_after and the
        timeout (one interval before the timeout when that is six intervals or more)."""
        return (self.fence_after + self.heartbeat_timeout) / 2
