"""What every part of the benchmark is given: the server, pgbench, the sizes, a progress log."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from bench.server import Server


@dataclass(frozen=True)
class Sizes:
    """How much work each figure does. `--quick` shrinks them for a smoke run."""

    floor_jobs_per_client: int = 2500  # 8 clients: 20,000 jobs, as many as a drain
    insert_floor_rows: int = 5000
    drain_jobs: int = 20_000
    drain_workers: tuple[int, ...] = (1, 2, 4, 8)
    enqueue_batches: tuple[int, ...] = (1000, 5000)
    enqueue_batch_total: int = 50_000
    enqueue_single_jobs: int = 3000
    latency_jobs: int = 500
    latency_spacing_s: float = 0.02
    claim_rows: tuple[int, ...] = (1000, 100_000, 1_000_000)
    claim_pending_rows: int = 100_000
    claim_cycles: int = 300
    rss_jobs: int = 20_000
    cancel_probes: int = 50
    listeners_drain_jobs: int = 10_000

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            floor_jobs_per_client=250,
            insert_floor_rows=500,
            drain_jobs=2000,
            drain_workers=(1, 8),
            enqueue_batch_total=10_000,
            enqueue_single_jobs=300,
            latency_jobs=50,
            claim_rows=(1000, 100_000),
            claim_pending_rows=10_000,
            claim_cycles=50,
            rss_jobs=2000,
            cancel_probes=10,
            listeners_drain_jobs=2000,
        )


@dataclass
class Context:
    """The server, the pgbench binary and the sizes of this run."""

    server: Server
    pgbench: str
    sizes: Sizes
    postmaster: int | None = None  # the server's pid, when it runs on this machine
    started: float = field(default_factory=time.monotonic)

    def log(self, message: str) -> None:
        """One progress line on stderr (the table goes to stdout)."""
        print(f"[{time.monotonic() - self.started:6.1f} s] {message}", file=sys.stderr, flush=True)
