"""The benchmark's targets, judged on one run's figures, and the table that shows them.

A target that compares two figures is judged only when both come from this
run: the machines are noisy, so only ratios within one run mean anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

DRAIN_OVER_FLOOR = 0.8
SERVER_CPU_OVER_FLOOR = 1.0  # the drain's server CPU per job, at most the floor's
ENQUEUE_BATCH_MIN = 40_000.0
ENQUEUE_SINGLE_OVER_FLOOR = 0.8
LATENCY_P50_MAX_MS = 2.0
LATENCY_P99_MAX_MS = 6.0
CONNECTIONS_OVER_WORKERS = 2  # a pod holds at most workers + 2 connections
IDLE_STATEMENTS_MAX = 1.0  # per second, the whole idle pod
CANCEL_P99_MAX_S = 1.0
CLAIM_GROWTH_MAX = 1.5
USERS_SERVER_CPU_MAX = 1.1  # the drain's server CPU per job with users, x without
RECOVERY_FAST_MAX_S = 1.0
RSS_MAX_MB = 60.0
RSS_GROWTH_MAX_MB = 1.0  # "no growth", allowing for allocator noise
CLAIMS_PER_JOB_GROWTH_MAX = 0.2  # most idle pods over one pod, claims per job
IDLE_PODS_CPU_GROWTH_MAX = 1.3  # most idle pods over one pod, server CPU per job
BUSY_PODS_CPU_GROWTH_MAX = 1.1  # most busy pods over one, the drain's server CPU per job
SWEEPS_GROWTH_MAX = 1.1
FAILOVER_MAX_INTERVALS = 2.0


@dataclass(frozen=True)
class Check:
    """One line of the table."""

    figure: str
    value: float | None
    unit: str
    target: str = ""
    ratio: float | None = None
    ok: bool | None = None  # None: no target, or not measured in this run


def _get(results: dict[str, Any], *path: str) -> Any:
    value: Any = results
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _at_least(
    figure: str, value: float | None, unit: str, target: str, ratio: float | None, minimum: float
) -> Check:
    return Check(figure, value, unit, target, ratio, None if ratio is None else ratio >= minimum)


def _by_count(mapping: dict[str, Any]) -> list[tuple[str, Any]]:
    """Items keyed by a number ("1", "8", "10000"), in numeric order."""
    return sorted(mapping.items(), key=lambda kv: (int(kv[0].split("-")[0]), kv[0]))


def costs(r: dict[str, Any]) -> dict[str, Any]:
    """The cost keys, from the parts' figures of this run: the server's CPU per job of the
    drain (8 workers) and of the pgbench floor, the drain's client CPU per job, and the
    server's CPU per job of the 8-worker drain whose sessions belong to users."""
    floor = _get(r, "floors", "pgbench", "floor_claim_complete", "cpu_us_per_run", "postgres")
    drain = _get(r, "drain", "runs", "8", "cpu_us_per_job") or {}
    found: dict[str, Any] = {}
    server = {"drain": drain.get("postgres"), "floor": floor}
    if any(v is not None for v in server.values()):
        found["server_cpu_us_per_job"] = {k: v for k, v in server.items() if v is not None}
    if "workers" in drain:
        found["client_cpu_us_per_job"] = round(drain["workers"] + drain.get("supervisor", 0.0), 1)
    users = _get(r, "drain", "runs", "8-users", "cpu_us_per_job", "postgres")
    if users is not None:
        found["drain_server_cpu_us_per_job_users"] = users
    return found


def _floors(r: dict[str, Any]) -> list[Check]:
    floor, fused = _get(r, "floor_jobs_per_s"), _get(r, "floor_fused_jobs_per_s")
    batched = _get(r, "floor_batched_jobs_per_s")
    rows = [
        Check("floor_jobs_per_s", floor, "jobs/s", "reference (pgbench)"),
        Check(
            "floor_fused_jobs_per_s", fused, "jobs/s", "reference (pgbench)", _ratio(fused, floor)
        ),
        Check(
            "insert_floor_per_s",
            _get(r, "insert_floor_per_s"),
            "rows/s",
            "reference (pgbench, 1 client)",
        ),
        Check(
            "floor_batched_jobs_per_s",
            batched,
            "jobs/s",
            "info: 10 jobs per statement",
            _ratio(batched, floor),
        ),
    ]
    rows = [row for row in rows if row.value is not None]
    for name in ("floor_claim_complete", "floor_fused"):
        use = _get(r, "floors", "pgbench", name, "cpu_us_per_run") or {}
        if "postgres" in use:
            rows.append(
                Check(
                    f"{name} cpu per job",
                    use["postgres"] + use["pgbench"],
                    "us",
                    f"info: postgres {use['postgres']:.0f} + pgbench "
                    f"{use['pgbench']:.0f} (other load {use['other']:.0f})",
                )
            )
    functions = _get(r, "sql_functions") or {}
    for key, base in (
        ("claim_complete_jobs_per_s", floor),
        ("fused_jobs_per_s", floor),
        ("insert_per_s", _get(r, "insert_floor_per_s")),
    ):
        if key in functions:
            rows.append(
                Check(
                    f"sql_functions.{key}",
                    functions[key],
                    "rows/s" if key == "insert_per_s" else "jobs/s",
                    "info: our SQL from pgbench",
                    _ratio(functions[key], base),
                )
            )
    return rows


def _drain(r: dict[str, Any]) -> list[Check]:
    floor = _get(r, "floor_jobs_per_s")
    rows = []
    for workers, rate in _by_count(_get(r, "drain_jobs_per_s") or {}):
        if workers == "8":
            rows.append(
                _at_least(
                    "drain_jobs_per_s[8]",
                    rate,
                    "jobs/s",
                    f">= {DRAIN_OVER_FLOOR:g} x floor",
                    _ratio(rate, floor),
                    DRAIN_OVER_FLOOR,
                )
            )
        else:
            rows.append(
                Check(
                    f"drain_jobs_per_s[{workers}]", rate, "jobs/s", "x floor", _ratio(rate, floor)
                )
            )
    quiet = _get(r, "drain_no_status_notifications_jobs_per_s")
    if quiet:
        rows.append(
            Check(
                "drain[8] --no-status-notifications",
                quiet,
                "jobs/s",
                "info: x floor",
                _ratio(quiet, floor),
            )
        )
    for workers, run in _by_count(_get(r, "drain", "runs") or {}):
        use = run.get("cpu_us_per_job") or {}
        if "postgres" in use:
            rows.append(
                Check(
                    f"drain[{workers}] cpu per job",
                    use["workers"] + use["supervisor"] + use["postgres"],
                    "us",
                    f"info: workers {use['workers']:.0f} + postgres "
                    f"{use['postgres']:.0f} (other load {use['other']:.0f})",
                )
            )
    return rows


def _enqueue(r: dict[str, Any]) -> list[Check]:
    rows = []
    batch = _get(r, "enqueue_batch_jobs_per_s")
    if batch is not None:
        rows.append(
            _at_least(
                "enqueue_batch_jobs_per_s",
                batch,
                "jobs/s",
                f">= {ENQUEUE_BATCH_MIN:,.0f}",
                _ratio(batch, ENQUEUE_BATCH_MIN),
                1.0,
            )
        )
    single = _get(r, "enqueue_single_jobs_per_s")
    if single is not None:
        rows.append(
            _at_least(
                "enqueue_single_jobs_per_s",
                single,
                "jobs/s",
                f">= {ENQUEUE_SINGLE_OVER_FLOOR:g} x insert floor",
                _ratio(single, _get(r, "insert_floor_per_s")),
                ENQUEUE_SINGLE_OVER_FLOOR,
            )
        )
    return rows


def _costs(r: dict[str, Any]) -> list[Check]:
    rows = []
    server = _get(r, "server_cpu_us_per_job") or {}
    if "floor" in server:
        rows.append(Check("server_cpu_us_per_job.floor", server["floor"], "us", "reference"))
    if "drain" in server:
        ratio = _ratio(server["drain"], server.get("floor"))
        rows.append(
            Check(
                "server_cpu_us_per_job.drain",
                server["drain"],
                "us",
                f"<= {SERVER_CPU_OVER_FLOOR:g} x floor",
                ratio,
                None if ratio is None else ratio <= SERVER_CPU_OVER_FLOOR,
            )
        )
    users = _get(r, "drain_server_cpu_us_per_job_users")
    if users is not None:
        ratio = _ratio(users, server.get("drain"))
        rows.append(
            Check(
                "drain_server_cpu_us_per_job_users",
                users,
                "us",
                f"<= {USERS_SERVER_CPU_MAX:g} x server_cpu_us_per_job.drain",
                ratio,
                None if ratio is None else ratio <= USERS_SERVER_CPU_MAX,
            )
        )
    client = _get(r, "client_cpu_us_per_job")
    if client is not None:
        rows.append(Check("client_cpu_us_per_job", client, "us", "info: the drain's pod"))
    for workers, held in _by_count(_get(r, "connections") or {}):
        limit = int(workers) + CONNECTIONS_OVER_WORKERS
        rows.append(
            Check(f"connections[{workers}]", held, "", f"<= {limit}", held / limit, held <= limit)
        )
    idle = _get(r, "idle_statements_per_s")
    if idle is not None:
        rows.append(
            Check(
                "idle_statements_per_s",
                idle,
                "/s",
                f"<= {IDLE_STATEMENTS_MAX:g}",
                idle / IDLE_STATEMENTS_MAX,
                idle <= IDLE_STATEMENTS_MAX,
            )
        )
    for key, value in (_get(r, "pod", "idle_statements_per_s") or {}).items():
        if key != "empty":
            rows.append(Check(f"idle_statements_per_s[{key}]", value, "/s", "info"))
    for key, value in (_get(r, "server_cpu_us_per_job_per_listener") or {}).items():
        notifications = "--no-status-notifications" if key == "quiet" else "defaults"
        rows.append(
            Check(
                f"server_cpu_us_per_job_per_listener[{key}]",
                value,
                "us",
                f"info: each further pod, {notifications}",
            )
        )
    return rows


def _cancel(r: dict[str, Any]) -> list[Check]:
    cancel = _get(r, "cancel_latency_s") or {}
    rows = []
    for key in ("p50", "p99"):
        if key in cancel:
            ok = None if key == "p50" else cancel[key] <= CANCEL_P99_MAX_S
            target = "" if key == "p50" else f"<= {CANCEL_P99_MAX_S:g} s"
            ratio = None if key == "p50" else cancel[key] / CANCEL_P99_MAX_S
            rows.append(Check(f"cancel_latency_s.{key}", cancel[key], "s", target, ratio, ok))
    return rows


def _latency(r: dict[str, Any]) -> list[Check]:
    latency = _get(r, "latency_8_idle_ms") or {}
    rows = []
    for key, limit in (("p50", LATENCY_P50_MAX_MS), ("p95", None), ("p99", LATENCY_P99_MAX_MS)):
        if key not in latency:
            continue
        if limit is None:
            rows.append(Check(f"latency_8_idle_ms.{key}", latency[key], "ms"))
        else:
            rows.append(
                Check(
                    f"latency_8_idle_ms.{key}",
                    latency[key],
                    "ms",
                    f"<= {limit:g} ms",
                    latency[key] / limit,
                    latency[key] <= limit,
                )
            )
    return rows


def _claim(r: dict[str, Any]) -> list[Check]:
    claim = _get(r, "claim_ms") or {}
    base = claim.get("1000")
    rows = []
    for key, cost in claim.items():
        ratio = _ratio(cost, base)
        if key == "1000":
            rows.append(Check("claim_ms[1000]", cost, "ms", "reference"))
        elif key.split("-")[0] == "1000000":
            rows.append(
                Check(
                    f"claim_ms[{key}]",
                    cost,
                    "ms",
                    f"<= {CLAIM_GROWTH_MAX:g} x claim_ms[1000]",
                    ratio,
                    None if ratio is None else ratio <= CLAIM_GROWTH_MAX,
                )
            )
        else:
            rows.append(Check(f"claim_ms[{key}]", cost, "ms", "x claim_ms[1000]", ratio))
    buffers = _get(r, "claim_buffers") or {}
    for key, count in buffers.items():
        rows.append(
            Check(
                f"claim_buffers[{key}]",
                count,
                "buffers",
                "info: a whole claim" if key == "1000" else "info: x claim_buffers[1000]",
                None if key == "1000" else _ratio(count, buffers.get("1000")),
            )
        )
    return rows


def _recovery(r: dict[str, Any]) -> list[Check]:
    recovery = _get(r, "recovery_s") or {}
    rows = []
    if "fast_path" in recovery:
        fast = recovery["fast_path"]
        rows.append(
            Check(
                "recovery_s.fast_path",
                fast,
                "s",
                f"<= {RECOVERY_FAST_MAX_S:g} s",
                fast / RECOVERY_FAST_MAX_S,
                fast <= RECOVERY_FAST_MAX_S,
            )
        )
    limit = _get(r, "recovery", "limit_s")
    for key in ("heartbeat_lost", "pod_stopped"):
        seconds = recovery.get(key)
        if seconds is not None and limit:
            by = _get(r, "recovery", key, "requeued_by") or "?"
            rows.append(
                Check(
                    f"recovery_s.{key}",
                    seconds,
                    "s",
                    f"<= {limit:g} s (by {by})",
                    seconds / limit,
                    seconds <= limit,
                )
            )
    return rows


def _rss(r: dict[str, Any]) -> list[Check]:
    marks = _by_count(_get(r, "worker_rss_mb") or {})  # "10000", "20000" (fewer with --quick)
    if len(marks) != 2:
        return []
    (half, first), (full, last) = marks
    return [
        Check(
            f"worker_rss_mb[{half}]",
            first,
            "MB",
            f"<= {RSS_MAX_MB:g} MB",
            first / RSS_MAX_MB,
            first <= RSS_MAX_MB,
        ),
        Check(
            f"worker_rss_mb[{full}]",
            last,
            "MB",
            f"<= {RSS_MAX_MB:g} MB, growth <= {RSS_GROWTH_MAX_MB:g} MB",
            _ratio(last, first),
            last <= RSS_MAX_MB and last - first <= RSS_GROWTH_MAX_MB,
        ),
    ]


def _grows(
    figure: str, by_count: dict[str, Any], unit: str, limit: float, added: bool = False
) -> list[Check]:
    """One line per count: the smallest is the reference, the largest is judged against it
    (at most `limit` times it, or `limit` more than it when `added`)."""
    marks = _by_count(by_count)
    if not marks:
        return []
    (first, base), (last, _) = marks[0], marks[-1]
    rows = [Check(f"{figure}[{first}]", base, unit, "reference")]
    for count, value in marks[1:]:
        if count != last:
            rows.append(Check(f"{figure}[{count}]", value, unit, f"info: x [{first}]"))
        elif added:
            target = f"<= [{first}] + {limit:g}"
            rows.append(
                Check(f"{figure}[{count}]", value, unit, target, None, value <= base + limit)
            )
        else:
            ratio = _ratio(value, base)
            ok = None if ratio is None else ratio <= limit
            rows.append(
                Check(f"{figure}[{count}]", value, unit, f"<= {limit:g} x [{first}]", ratio, ok)
            )
    return rows


def _pods(r: dict[str, Any]) -> list[Check]:
    rows = [
        *_grows(
            "claims_per_job_by_pods",
            _get(r, "claims_per_job_by_pods") or {},
            "",
            CLAIMS_PER_JOB_GROWTH_MAX,
            added=True,
        ),
        *_grows(
            "server_cpu_us_per_job_by_pods",
            _get(r, "server_cpu_us_per_job_by_pods") or {},
            "us",
            IDLE_PODS_CPU_GROWTH_MAX,
        ),
        *_grows(
            "drain_server_cpu_by_busy_pods",
            _get(r, "drain_server_cpu_by_busy_pods") or {},
            "us",
            BUSY_PODS_CPU_GROWTH_MAX,
        ),
        *(
            Check(f"drain_server_cpu_by_real_busy_pods[{pods}]", value, "us", "info")
            for pods, value in _by_count(_get(r, "drain_server_cpu_by_real_busy_pods") or {})
        ),
        *_grows(
            "sweeps_per_s_by_pods",
            _get(r, "sweeps_per_s_by_pods") or {},
            "/s",
            SWEEPS_GROWTH_MAX,
        ),
    ]
    failover = _get(r, "reaper_failover_s")
    interval = _get(r, "pods", "sweep_interval_s")
    if failover is not None and interval:
        limit = FAILOVER_MAX_INTERVALS * interval
        rows.append(
            Check(
                "reaper_failover_s",
                failover,
                "s",
                f"<= {FAILOVER_MAX_INTERVALS:g} sweep intervals ({limit:g} s)",
                failover / limit,
                failover <= limit,
            )
        )
    return rows


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every figure of the run, with its target and verdict where there is one."""
    rows = [
        row
        for part in (
            _floors,
            _costs,
            _drain,
            _enqueue,
            _latency,
            _claim,
            _cancel,
            _recovery,
            _rss,
            _pods,
        )
        for row in part(results)
    ]
    return [asdict(row) for row in rows]


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def table(results: dict[str, Any]) -> str:
    """The run's checks as a plain-text table (also valid Markdown)."""
    header = ("figure", "value", "unit", "target", "ratio", "result")
    lines = [header]
    for row in results.get("checks") or checks(results):
        verdict = {True: "pass", False: "FAIL", None: ""}[row["ok"]]
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
        lines.append(
            (row["figure"], _number(row["value"]), row["unit"], row["target"], ratio, verdict)
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    align = ["<", ">", "<", "<", ">", "<"]

    def render(line: tuple[str, ...]) -> str:
        cells = zip(line, align, widths, strict=True)
        return "| " + " | ".join(f"{cell:{a}{w}}" for cell, a, w in cells) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":" if a == ">" else "-" * (w + 2))
            for a, w in zip(align, widths, strict=True)
        )
        + "|"
    )
    return "\n".join([render(lines[0]), rule, *(render(line) for line in lines[1:])])
