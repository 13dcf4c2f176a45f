"""Running pgbench on a script of bench/sql: its rate, and the CPU it cost per script run."""

from __future__ import annotations

import re
import resource
import subprocess
import time
from dataclasses import dataclass, field

from bench import cpu
from bench.queries import script

NIL_UUID = "00000000-0000-0000-0000-000000000000"
_TPS = re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([\d.]+) ms", re.MULTILINE)
# An exited backend's CPU moves to its postmaster's cutime only once it is
# reaped; until then it is in neither place the meter reads.
REAP_WAIT = 0.3


@dataclass(frozen=True)
class Run:
    """What one pgbench run measured. A "transaction" of pgbench is one run of the script."""

    script: str
    clients: int
    scripts_per_s: float
    processed: int
    latency_ms: float | None
    cpu_us: dict[str, float] = field(default_factory=dict)  # per script run


def pgbench(
    binary: str,
    url: str,
    name: str,
    *,
    clients: int,
    per_client: int,
    variables: dict[str, str] | None = None,
    threads: int = 2,
    postmaster: int | None = None,
) -> Run:
    """Run script `name` `per_client` times on each of `clients` connections (prepared mode)."""
    command = [
        binary,
        "--no-vacuum",
        "--protocol=prepared",
        f"--client={clients}",
        f"--jobs={min(threads, clients)}",
        f"--transactions={per_client}",
        f"--file={script(name)}",
    ]
    for key, value in (variables or {}).items():
        command.append(f"--define={key}={value}")
    command.append(url)  # pgbench takes a connection URI where the database name goes
    meter = cpu.Meter(postmaster)
    expected = clients * per_client
    before, client_before = meter.snapshot(0), _children_cpu()
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    time.sleep(REAP_WAIT)  # pgbench's backends have exited: let the postmaster collect them
    after = meter.snapshot(expected)
    use = cpu.per_job(before, after, {"pgbench": _children_cpu() - client_before})
    out = done.stdout
    tps, processed = _TPS.search(out), _PROCESSED.search(out)
    complete = tps is not None and processed is not None and int(processed.group(1)) == expected
    if done.returncode != 0 or not complete or tps is None or processed is None:
        raise RuntimeError(f"pgbench {name} failed (exit {done.returncode}):\n{out}\n{done.stderr}")
    latency = _LATENCY.search(out)
    return Run(
        name,
        clients,
        float(tps.group(1)),
        int(processed.group(1)),
        float(latency.group(1)) if latency else None,
        use,
    )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
