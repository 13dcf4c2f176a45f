"""`python -m bench [PART ...]`: run the benchmark (all parts by default), print the table.

Parts: floors, enqueue, drain, listeners, latency, claim, cancel, pod, pods, recovery,
rss. A run of every part writes bench/results/latest.json; a run of some parts writes
bench/results/<parts>.json. Targets that compare two figures are judged only
when both were measured in the same run.

BENCH_DATABASE_URL: the server to use (a database is created per part);
unset, a PostgreSQL 16 is started in a temporary directory.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from bench import report
from bench.context import Context, Sizes
from bench.server import machine, server

PARTS = (
    "floors",
    "enqueue",
    "drain",
    "listeners",
    "latency",
    "claim",
    "cancel",
    "pod",
    "pods",
    "recovery",
    "rss",
)
MODULES = {"claim": "claim_cost"}
RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "parts", nargs="*", metavar="PART", help=f"parts to run (default: all): {', '.join(PARTS)}"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes: a smoke run of the harness, not a measurement",
    )
    parser.add_argument("--output", type=Path, default=None, help="where to write the JSON")
    args = parser.parse_args(argv)
    # pgserver's platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI).
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    parts = [p for p in PARTS if p in args.parts] or list(PARTS)
    sizes = Sizes.quick() if args.quick else Sizes()

    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "parts": parts, "quick": args.quick}
    with server() as pg:
        context = Context(pg, pg.pgbench(), sizes, pg.postmaster())
        results["postgres"] = {**pg.describe(), "pgbench": context.pgbench}
        context.log(f"PostgreSQL: {results['postgres']['version']}")
        for part in parts:
            module = importlib.import_module(f"bench.{MODULES.get(part, part)}")
            part_started = time.monotonic()
            try:
                results.update(module.run(context))
            except Exception as exc:  # noqa: BLE001 - one broken part must not lose the others
                traceback.print_exc()
                results.setdefault("errors", {})[part] = f"{type(exc).__name__}: {exc}"
            results.setdefault("part_seconds", {})[part] = round(time.monotonic() - part_started, 1)
            context.log(
                f"{part}: {'FAILED' if part in results.get('errors', {}) else 'done'} "
                f"in {results['part_seconds'][part]:.0f} s"
            )
    results["machine"]["loadavg_end"] = os.getloadavg()[0]
    results.update(report.costs(results))
    results["total_seconds"] = round(time.monotonic() - started, 1)
    results["checks"] = report.checks(results)

    name = "latest" if parts == list(PARTS) else "-".join(parts)
    output = args.output or RESULTS / f"{name}{'-quick' if args.quick else ''}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(report.table(results))
    print(f"\n{len(parts)} part(s) in {results['total_seconds']:.0f} s; results in {output}")
    for part, error in results.get("errors", {}).items():
        print(f"part {part} failed: {error}", file=sys.stderr)
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
