"""Every metric of the queue, kept in memory that the supervisor maps before it forks.

Each process of a supervisor writes its own row of one shared array of
doubles, one writer per row, so an increment is a store, with no lock, no file
and no system call; `/metrics` sums the rows at scrape time (`collect`). A
process that was never given a row (the client, `mobvibe-reaper` on its own,
tests) writes to a private array of one row. The metrics are defined at import
and get their storage from `init()`: nothing depends on import order.

Names follow Prometheus rules: mobvibe_ prefix, base units, _total counters,
never a job or session id as a label: every label takes values from a fixed set.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.core import (
    Metric as Family,
)
from prometheus_client.registry import Collector

from mobvibe.vocabulary import FINISHED, EndReason, ExitCause, SweepOutcome, WorkspaceStart

_CELL = 8  # one double


class _Memory:
    """`rows` rows of `width` doubles in an anonymous mapping, shared with forked children."""

    def __init__(self, rows: int, width: int) -> None:
        self.rows, self.width = rows, width
        self._map = mmap.mmap(-1, max(1, rows * width) * _CELL)
        self.cells = memoryview(self._map).cast("d")

    def row_sum(self, index: int) -> float:
        return float(sum(self.cells[index + r * self.width] for r in range(self.rows)))

    def row_max(self, index: int) -> float:
        return float(max(self.cells[index + r * self.width] for r in range(self.rows)))


@dataclass(eq=False)
class Metric:
    """A metric's definition and where its cells are in a row."""

    name: str
    help: str
    label: str = ""  # the one label's name, if any
    values: Sequence[str] = ()  # every value the label takes
    offset: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.offset = _register(self)

    @property
    def width(self) -> int:
        return max(1, len(self.values)) * self._cells_per_value()

    def _cells_per_value(self) -> int:
        return 1

    def _index(self, value: str | None) -> int:
        if not self.values:
            return self.offset
        return self.offset + self.values.index(value or "") * self._cells_per_value()

    def exposed_name(self) -> str:
        return self.name

    def value(self, label: str | None = None) -> float:
        """The sum over every process's row (tests and exposition)."""
        return _memory.row_sum(self._index(label))

    def family(self) -> Family:
        """The metric as prometheus_client exposes it."""
        raise NotImplementedError


class Counter(Metric):
    """Only goes up. A label's value must be one of `values`."""

    def inc(self, amount: float = 1.0, label: str | None = None) -> None:
        _memory.cells[_row + self._index(label)] += amount

    def labels(self, value: str) -> _Child:
        return _Child(self, value)

    def exposed_name(self) -> str:
        return f"{self.name}_total"

    def family(self) -> Family:
        family = CounterMetricFamily(
            self.name, self.help, labels=[self.label] if self.label else ()
        )
        for value in self.values or (None,):
            family.add_metric([value] if value else [], self.value(value))
        return family


@dataclass(eq=False)
class Gauge(Metric):
    """Set by the one process that knows it; `/metrics` shows the largest row's value."""

    def set(self, value: float) -> None:
        _memory.cells[_row + self.offset] = value

    def value(self, label: str | None = None) -> float:
        return _memory.row_max(self._index(label))

    def family(self) -> Family:
        return GaugeMetricFamily(self.name, self.help, value=self.value())


@dataclass(eq=False)
class Histogram(Metric):
    """Counts per bucket (not cumulative in memory) and the sum of the observed values."""

    buckets: tuple[float, ...] = ()

    def _cells_per_value(self) -> int:
        return len(self.buckets) + 2  # each bucket, +Inf, the sum

    def observe(self, amount: float) -> None:
        base = _row + self.offset
        cells = _memory.cells
        for i, bound in enumerate(self.buckets):
            if amount <= bound:
                cells[base + i] += 1
                break
        else:
            cells[base + len(self.buckets)] += 1
        cells[base + len(self.buckets) + 1] += amount

    def family(self) -> Family:
        counts = [_memory.row_sum(self.offset + i) for i in range(len(self.buckets) + 1)]
        cumulative, running = [], 0.0
        for bound, count in zip((*map(str, self.buckets), "+Inf"), counts, strict=True):
            running += count
            cumulative.append((bound, running))
        total = _memory.row_sum(self.offset + len(self.buckets) + 1)
        return HistogramMetricFamily(self.name, self.help, buckets=cumulative, sum_value=total)


@dataclass(frozen=True)
class _Child:
    """`counter.labels(value)`: one label value of a counter."""

    counter: Counter
    label_value: str

    def inc(self, amount: float = 1.0) -> None:
        self.counter.inc(amount, self.label_value)


_DEFINED: list[Metric] = []


def _register(metric: Metric) -> int:
    offset = sum(m.width for m in _DEFINED)
    _DEFINED.append(metric)
    return offset


DURATION_BUCKETS = (0.005, 0.05, 0.25, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)

JOBS_CLAIMED = Counter("mobvibe_jobs_claimed", "Jobs claimed by workers.")
JOBS_COMPLETED = Counter("mobvibe_jobs_completed", "Jobs completed.")
JOBS_FAILED = Counter(
    "mobvibe_jobs_failed", "Failed attempts recorded by this supervisor (retried or dead-lettered)."
)
JOBS_RETRIED = Counter("mobvibe_jobs_retried", "Failed attempts scheduled for a retry.")
JOBS_DEAD_LETTERED = Counter(
    "mobvibe_jobs_dead_lettered", "Jobs moved to the dead letters (status failed)."
)
ATTEMPTS_ENDED = Counter(
    "mobvibe_attempts_ended", "Attempts ended, by reason.", "reason", tuple(EndReason)
)
JOB_DURATION = Histogram(
    "mobvibe_job_duration_seconds", "Run time of an attempt.", buckets=DURATION_BUCKETS
)
LEASES_LOST = Counter(
    "mobvibe_leases_lost", "Writes refused because the attempt's lease was taken away."
)
HEARTBEAT_FAILURES = Counter(
    "mobvibe_heartbeat_failures", "Heartbeats that could not reach the database."
)
LEASES_PASSED_OVER = Counter(
    "mobvibe_lease_renewals_passed_over",
    "Lease renewals passed over because another transaction held the job's row locked.",
)
WORKER_RESTARTS = Counter("mobvibe_worker_restarts", "Worker processes started again.")
WORKER_EXITS = Counter(
    "mobvibe_worker_exits", "Worker process exits, by cause.", "cause", tuple(ExitCause)
)
WORKERS_ALIVE = Gauge("mobvibe_workers_alive", "Worker processes running.")

WORKSPACES = Gauge("mobvibe_workspaces", "Session workspaces kept on this pod (--workspaces).")
WORKSPACE_BYTES = Gauge(
    "mobvibe_workspace_bytes",
    "Disk bytes of the workspaces kept on this pod (links counted, never followed).",
)
WORKSPACE_EVICTIONS = Counter(
    "mobvibe_workspace_evictions",
    "Workspaces evicted, least recently used first, beyond --workspaces-max-bytes or "
    "--workspaces-max-count.",
)
WORKSPACE_STARTS = Counter(
    "mobvibe_workspace_starts",
    "Attempts started in their session's workspace: warm (it was there) or cold (made).",
    "start",
    tuple(WorkspaceStart),
)

REAPER_REQUEUED = Counter(
    "mobvibe_reaper_jobs_requeued", "Expired attempts requeued by the reaper."
)
REAPER_DEAD_LETTERED = Counter(
    "mobvibe_reaper_jobs_dead_lettered", "Expired attempts dead-lettered by the reaper."
)
REAPER_CANCELLED = Counter(
    "mobvibe_reaper_jobs_cancelled",
    "Expired attempts ended cancelled by the reaper (a cancel had been requested).",
)
REAPER_PRUNED = Counter(
    "mobvibe_reaper_jobs_pruned",
    "Finished jobs deleted by retention.",
    "status",
    FINISHED,
)
REAPER_SWEEP_DURATION = Histogram(
    "mobvibe_reaper_sweep_duration_seconds",
    "Duration of one reaper sweep.",
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)
REAPER_SWEEPS = Counter(
    "mobvibe_reaper_sweeps", "Reaper sweeps, by result.", "result", tuple(SweepOutcome)
)
REAPER_LAST_SUCCESS = Gauge(
    "mobvibe_reaper_last_success_timestamp_seconds",
    "Unix time of the last successful sweep of this reaper.",
)
HUB_DOORMAN = Gauge(
    "mobvibe_hub_doorman",
    "1 while this pod's hub is the doorman, the one listener for new jobs in the database.",
)
REAPER_LEADER = Gauge(
    "mobvibe_reaper_leader",
    "1 while this pod's embedded reaper leads: the one of all pods that sweeps.",
)

# One child per reason, made once, for the hot path.
ENDED = {reason: ATTEMPTS_ENDED.labels(reason) for reason in EndReason}

_WIDTH = sum(m.width for m in _DEFINED)
_memory = _Memory(1, _WIDTH)
_row = 0  # where this process's row starts in _memory.cells


def init(rows: int) -> None:
    """Map the shared memory of a supervisor with `rows` processes; call before forking."""
    global _memory, _row
    _memory, _row = _Memory(rows, _WIDTH), 0


def bind(row: int) -> None:
    """From now on this process writes row `row` (a forked child calls it first)."""
    global _row  # noqa: PLW0603 - set once per process, read on every increment
    if not 0 <= row < _memory.rows:
        raise ValueError(f"metrics row {row} out of range 0..{_memory.rows - 1}")
    _row = row * _WIDTH


def defined() -> tuple[Metric, ...]:
    """Every metric, in definition order."""
    return tuple(_DEFINED)


class QueueMetrics(Collector):
    """The metrics of every process of this supervisor (or of this process alone)."""

    def collect(self) -> Iterator[Family]:
        for metric in _DEFINED:
            yield metric.family()
