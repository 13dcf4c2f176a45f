"""deploy/grafana and the compose file's monitoring profile: the dashboard's JSON, its PromQL
(parsed by promtool, on metric names the supervisor really exposes), the provisioning,
deploy/prometheus/prometheus.yml, and the two services behind `--profile monitoring`."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from mobvibe import metrics
from mobvibe.vocabulary import JobStatus
from tests.deploy.support import ALERTS, COMPOSE, DEPLOY
from tests.deploy.test_alerts import SCRAPE_TIME_METRICS, promtool
from tests.deploy.test_compose import MOBVIBE_SERVICES, compose, needs_cli

GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "mobvibe-queue.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "mobvibe.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
MONITORING = ("prometheus", "grafana")
SUPERVISOR_PORT = 9400
# Grafana's interval variables, as promtool must see them: plain durations.
GRAFANA_INTERVALS = {
    "${__rate_interval}": "5m",
    "$__rate_interval": "5m",
    "${__interval}": "1m",
    "$__interval": "1m",
    "${__range}": "1h",
    "$__range": "1h",
}
# The statuses QueueCollector reports in mobvibe_queue_jobs (supervisor/httpserver.py).
QUEUE_STATUSES = tuple(JobStatus)
METRIC = re.compile(r"\bmobvibe_[a-z0-9_]*[a-z0-9]\b")


@cache
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def all_panels() -> Iterator[dict[str, Any]]:
    """Every panel, those nested in collapsed rows too."""
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", ())


def query_panels() -> list[dict[str, Any]]:
    return [p for p in all_panels() if p["type"] != "row"]


def expressions() -> list[tuple[str, str]]:
    """(where, expr) of every target: where = "panel title / refId"."""
    return [
        (f"{panel['title']} / {target['refId']}", target["expr"])
        for panel in query_panels()
        for target in panel["targets"]
    ]


def promql(expr: str) -> str:
    """The expression with Grafana's interval variables replaced by durations."""
    for variable, duration in GRAFANA_INTERVALS.items():
        expr = expr.replace(variable, duration)
    return expr


def exposed() -> set[str]:
    """Every series name the supervisor's /metrics can carry."""
    names = set(SCRAPE_TIME_METRICS)
    for metric in metrics.defined():
        names.add(metric.exposed_name())
        if isinstance(metric, metrics.Histogram):
            names |= {f"{metric.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    return names


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())  # type: ignore[no-any-return]


def mounts(service: dict[str, Any]) -> dict[str, tuple[Path, str]]:
    """A compose service's bind mounts: target -> (source resolved from deploy/, mode)."""
    found = {}
    for volume in service.get("volumes", ()):
        source, target, *mode = volume.split(":")
        found[target] = ((COMPOSE.parent / source).resolve(), mode[0] if mode else "rw")
    return found


# ------------------------------------------------------------------- the dashboard


def test_dashboard_is_grafana_json_with_a_prometheus_datasource_variable() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] == "mobvibe-queue"
    assert board["title"]
    assert board.get("id") is None, "an id ties the JSON to one Grafana's database"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in query_panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]


def test_panels_have_unique_ids_titles_units_and_targets_with_expressions() -> None:
    panels = list(all_panels())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    titles = [p.get("title", "").strip() for p in panels]
    assert all(titles), "every panel has a title"
    assert len(titles) == len(set(titles)), "panel titles are unique"
    for panel in query_panels():
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']}: no unit"
        targets = panel["targets"]
        assert targets, f"{panel['title']}: no targets"
        assert all(t.get("expr", "").strip() for t in targets), f"{panel['title']}: empty expr"
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), f"{panel['title']}: duplicate refIds"


def test_panels_fit_the_grid_without_overlapping() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_expressions_are_not_tied_to_a_job_or_namespace() -> None:
    for where, expr in expressions():
        assert not re.search(r"\b(job|namespace|instance|pod)\s*=", expr), where
        assert "$" not in promql(expr), f"{where}: a variable promtool cannot read: {expr}"


def test_every_expression_parses_in_promtool(tmp_path: Path) -> None:
    """Each expression becomes a recording rule, which `promtool check rules` parses."""
    tool = promtool()
    rules = [
        {"record": f"mobvibe_dashboard:panel_{panel['id']}:{target['refId']}", "expr": promql(e)}
        for panel in query_panels()
        for target in panel["targets"]
        for e in [target["expr"]]
    ]
    file = tmp_path / "dashboard-rules.yml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [tool, "check", "rules", str(file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout, result.stdout


def test_expressions_use_only_metrics_the_supervisor_exposes() -> None:
    known = exposed()
    for where, expr in expressions():
        unknown = set(METRIC.findall(expr)) - known
        assert not unknown, f"{where}: unknown metrics {sorted(unknown)} in {expr}"


def test_label_values_are_ones_the_metrics_take() -> None:
    """reason="...", cause="...", status="..." only with values the supervisor reports."""
    values: dict[str, tuple[str, set[str]]] = {
        metric.exposed_name(): (metric.label, set(metric.values))
        for metric in metrics.defined()
        if metric.label
    }
    values["mobvibe_queue_jobs"] = ("status", set(QUEUE_STATUSES))
    for where, expr in expressions():
        for name, selector in re.findall(r"\b(mobvibe_[a-z0-9_]+)\{([^}]*)\}", expr):
            for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', selector):
                assert name in values and label == values[name][0], (
                    f"{where}: {name} has no label {label}"
                )
                wanted = set(value.split("|")) if op.endswith("~") else {value}
                assert wanted <= values[name][1], f"{where}: {name}{{{label}}} never is {wanted}"


def test_counters_are_read_through_rate_or_increase() -> None:
    for where, expr in expressions():
        for name in set(METRIC.findall(expr)):
            if not name.endswith(("_total", "_bucket", "_sum", "_count")):
                continue
            uses = len(re.findall(rf"\b{name}\b", expr))
            inside = len(re.findall(rf"\b(?:rate|increase)\(\s*{name}\b(?:\{{[^}}]*\}})?\[", expr))
            assert uses == inside, f"{where}: {name} outside rate()/increase(): {expr}"


def test_queue_gauges_are_taken_with_max_not_summed_over_pods() -> None:
    """Every replica reports the same queue: summing them would multiply it."""
    for where, expr in expressions():
        for name in set(METRIC.findall(expr)):
            if name.startswith(("mobvibe_queue_", "mobvibe_reaper_last_sweep")):
                pattern = rf"\b(max|min)(\s+by\s*\([^)]*\))?\s*\(\s*{name}\b"
                assert re.search(pattern, expr), f"{where}: take max() of {name}: {expr}"


AREAS: dict[str, list[str]] = {
    "throughput": [
        r"rate\(mobvibe_jobs_completed_total\[",
        r"rate\(mobvibe_jobs_failed_total\[",
        r"rate\(mobvibe_jobs_retried_total\[",
        r"rate\(mobvibe_jobs_dead_lettered_total\[",
        r'rate\(mobvibe_attempts_ended_total\{reason="cancelled"\}\[',
    ],
    "latency percentiles": [
        rf"histogram_quantile\({q}, sum by \(le\) \(rate\(mobvibe_job_duration_seconds_bucket\["
        for q in (r"0\.50?", r"0\.95", r"0\.99")
    ],
    "depth and age": [
        r"max by \(status\) \(mobvibe_queue_jobs",
        r"max\(mobvibe_queue_oldest_pending_age_seconds\)",
    ],
    "retries and dead letters": [
        r"max\(mobvibe_queue_retries_waiting\)",
        r"mobvibe_jobs_dead_lettered_total",
        r"mobvibe_reaper_jobs_dead_lettered_total",
        r"mobvibe_attempts_ended_total\[",
    ],
    "exit causes": [r"sum by \(cause\) \(rate\(mobvibe_worker_exits_total\["],
    "worker restarts": [r"mobvibe_worker_restarts_total"],
    "workers and jobs in progress": [
        r"sum\(mobvibe_workers_alive\)",
        r"sum\(mobvibe_jobs_in_progress\)",
    ],
    "leases and heartbeats": [r"mobvibe_leases_lost_total", r"mobvibe_heartbeat_failures_total"],
    "reaper sweeps": [
        r"sum by \(result\) \(rate\(mobvibe_reaper_sweeps_total\[",
        r"mobvibe_reaper_sweep_duration_seconds_bucket",
        r"mobvibe_reaper_jobs_requeued_total",
        r"mobvibe_reaper_jobs_pruned_total",
        r"time\(\) - max\(mobvibe_reaper_last_sweep_timestamp_seconds\)",
    ],
    "database up": [r"min\(mobvibe_database_up\)"],
}


@pytest.mark.parametrize("area", AREAS)
def test_dashboard_covers_the_area(area: str) -> None:
    exprs = [expr for _, expr in expressions()]
    missing = [p for p in AREAS[area] if not any(re.search(p, e) for e in exprs)]
    assert not missing, f"{area}: no panel matches {missing}"


# ------------------------------------------------------------------- provisioning


def test_grafana_provisions_the_compose_prometheus_and_the_dashboards_folder() -> None:
    datasources = load_yaml(DATASOURCES)
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["access"] == "proxy"
    providers = load_yaml(PROVIDERS)
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    grafana = mounts(compose()["services"]["grafana"])
    path = provider["options"]["path"]
    assert grafana[path][0] == DASHBOARD.parent.resolve(), "the provider reads the mounted folder"


def test_prometheus_config_scrapes_the_supervisor_and_loads_the_alert_rules() -> None:
    config = load_yaml(PROMETHEUS)
    rule_files = config["rule_files"]
    assert [(PROMETHEUS.parent / f).resolve() for f in rule_files] == [ALERTS.resolve()]
    jobs = config["scrape_configs"]
    names = [job["job_name"] for job in jobs]
    assert len(names) == len(set(names))
    targets = set()
    for job in jobs:
        for static in job.get("static_configs", ()):
            targets |= set(static["targets"])
        for dns in job.get("dns_sd_configs", ()):
            targets |= {f"{name}:{dns['port']}" for name in dns["names"]}
    assert f"supervisor:{SUPERVISOR_PORT}" in targets
    services = compose()["services"]
    reaper = services["reaper"]
    port = (reaper.get("environment") or {}).get("MOBVIBE_REAPER_METRICS_PORT")
    if port or "--metrics-port" in " ".join(reaper.get("command") or ()):
        assert any(t.startswith("reaper:") for t in targets), "the reaper serves /metrics"


def test_promtool_check_config_passes_with_its_rule_files() -> None:
    result = subprocess.run(
        [promtool(), "check", "config", str(PROMETHEUS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout, result.stdout


# ------------------------------------------------------------------- compose


def test_monitoring_services_run_only_with_the_monitoring_profile() -> None:
    services = compose()["services"]
    default = {name for name, service in services.items() if not service.get("profiles")}
    assert default == {"postgres", *MOBVIBE_SERVICES}, "`up` without a profile is unchanged"
    for name in MONITORING:
        assert services[name]["profiles"] == ["monitoring"]
    assert services["prometheus"]["image"].startswith("prom/prometheus:v")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    assert "3000:3000" in services["grafana"]["ports"]


def test_monitoring_services_mount_files_that_exist_read_only() -> None:
    services = compose()["services"]
    for name in MONITORING:
        found = mounts(services[name])
        assert found, f"{name} mounts nothing"
        for target, (source, mode) in found.items():
            assert source.exists(), f"{name}: {source} (for {target}) does not exist"
            assert mode == "ro", f"{name}: {target} is not read-only"
    prometheus = mounts(services["prometheus"])
    assert prometheus["/etc/prometheus/prometheus.yml"][0] == PROMETHEUS.resolve()
    for rule_file in load_yaml(PROMETHEUS)["rule_files"]:
        beside = f"/etc/prometheus/{rule_file}"
        assert prometheus[beside][0] == (PROMETHEUS.parent / rule_file).resolve()
    grafana = mounts(services["grafana"])
    provisioned = {source for source, _ in grafana.values()}
    assert {DATASOURCES.parent.resolve(), PROVIDERS.parent.resolve()} <= provisioned


def test_compose_cli_accepts_the_monitoring_profile() -> None:
    cli = needs_cli()
    run = [*cli, "-f", str(COMPOSE)]
    result = subprocess.run(
        [*run, "--profile", "monitoring", "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    result = subprocess.run(
        [*run, "--profile", "monitoring", "config", "--services"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # Which services start without the profile is the file's word (test_compose.py):
    # `config --services` lists them all in docker-compose 1.x, the active ones in 2.x.
    assert set(result.stdout.split()) == {"postgres", *MOBVIBE_SERVICES, "prometheus", "grafana"}
