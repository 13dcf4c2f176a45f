"""The Kubernetes manifests: schema-valid for Kubernetes 1.30, and our rules for a queue worker."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mobvibe.sizes import parse_size
from mobvibe.supervisor.settings import HEARTBEAT_TIMEOUT_DEFAULT, SHUTDOWN_TIMEOUT_DEFAULT
from tests.deploy.support import (
    COMPOSE,
    IMAGE_USER,
    KEDA_API,
    KUBE,
    KUBERNETES_VERSION,
    ROOT,
    applied,
    documents,
    kustomization,
    manifest_files,
    one,
    option,
    pod_spec,
    tool,
    workloads,
)

MIGRATIONS = ROOT / "sql" / "migrations"

CORE_MANIFESTS = [
    p for p in manifest_files() if all(d["apiVersion"] != KEDA_API for d in documents(p))
]


@pytest.mark.parametrize("path", CORE_MANIFESTS, ids=lambda p: p.name)
def test_manifest_passes_kubernetes_validate_strict(path: Path) -> None:
    for doc in documents(path):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kubernetes_validate_cli_strict_passes_every_core_manifest() -> None:
    cli = tool("kubernetes-validate")
    if cli is None:
        pytest.skip("kubernetes-validate is not installed (pip install '.[dev]')")
    result = subprocess.run(
        [cli, "--strict", "-k", KUBERNETES_VERSION, *map(str, CORE_MANIFESTS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_validation_rejects_a_misspelt_field() -> None:
    deployment = yaml.safe_load((KUBE / "deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in manifest_files()}
    assert listed == on_disk - {"secret.example.yaml"}
    assert kustomization()["namespace"] == "mobvibe"


def test_kustomize_build_renders_objects_that_validate() -> None:
    kubectl = tool("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl on PATH: `kubectl kustomize` cannot render the kustomization")
    result = subprocess.run(
        [kubectl, "kustomize", str(KUBE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert len(rendered) == len(applied())
    for doc in rendered:
        assert doc["metadata"].get("namespace", "mobvibe") == "mobvibe"
        if doc["apiVersion"] != KEDA_API:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_namespace_enforces_baseline_and_audits_and_warns_of_anything_short_of_restricted() -> None:
    """Restricted never admits the supervisor's unmasked /proc, which the jobs' sandboxes
    need for a /proc of their own; baseline does in a user namespace of the pod's own."""
    labels = one("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
    assert labels["pod-security.kubernetes.io/audit"] == "restricted"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"


def test_secret_is_an_example_only() -> None:
    secret = documents(KUBE / "secret.example.yaml")[0]
    assert "EXAMPLE ONLY" in (KUBE / "secret.example.yaml").read_text()
    assert all("CHANGE-ME" in value for value in secret["stringData"].values())
    assert all(d["kind"] != "Secret" for d in applied())


def _supervisor_container() -> dict[str, Any]:
    containers = pod_spec(one("Deployment", "mobvibe-supervisor"))["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def test_grace_period_covers_the_shutdown_timeout_plus_5_s() -> None:
    args = _supervisor_container()["args"]
    timeout = float(option(args, "--shutdown-timeout") or SHUTDOWN_TIMEOUT_DEFAULT)
    grace = pod_spec(one("Deployment"))["terminationGracePeriodSeconds"]
    assert grace >= timeout + 5


def test_supervisor_leaves_the_reaper_to_the_cronjob() -> None:
    assert "--no-reaper" in _supervisor_container()["args"]
    one("CronJob", "mobvibe-reaper")


def test_supervisor_probes_use_healthz_and_readyz_on_the_metrics_port() -> None:
    container = _supervisor_container()
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["port"] in ("metrics", ports["metrics"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env.get("MOBVIBE_METRICS_PORT", 9400)) == ports["metrics"]
    service = one("Service", "mobvibe-metrics")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["port"] == 9400


@pytest.mark.parametrize("obj", workloads(), ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_workload_runs_restricted_with_a_read_only_root(obj: dict[str, Any]) -> None:
    spec = pod_spec(obj)
    assert spec["automountServiceAccountToken"] is False
    pod_ctx = spec["securityContext"]
    assert pod_ctx["runAsNonRoot"] is True
    # The supervisor's profile is RuntimeDefault's, with the sandbox's rule added.
    runs_jobs = obj["kind"] == "Deployment"
    assert pod_ctx["seccompProfile"]["type"] == ("Localhost" if runs_jobs else "RuntimeDefault")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for container in spec["containers"]:
        ctx = container["securityContext"]
        assert ctx.get("procMount", "Default") == ("Unmasked" if runs_jobs else "Default")
        assert ctx.get("appArmorProfile", {}).get("type") != "Unconfined"
        user = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
        assert isinstance(user, int) and user == IMAGE_USER, "runAsUser must be numeric"
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert "limits" in container["resources"] and "requests" in container["resources"]
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert "emptyDir" in volumes[mounts["/tmp"]], "TMPDIR needs a writable emptyDir"


def test_database_url_comes_from_the_secret() -> None:
    for obj in workloads():
        for container in pod_spec(obj)["containers"]:
            env = {e["name"]: e for e in container["env"]}
            ref = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "mobvibe-database"
            assert ref["key"] in documents(KUBE / "secret.example.yaml")[0]["stringData"]


def test_reaper_cronjob_sweeps_once_a_minute_without_overlap() -> None:
    cron = one("CronJob", "mobvibe-reaper")
    spec = cron["spec"]
    assert spec["schedule"] == "* * * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] >= 10
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    assert 0 < job["activeDeadlineSeconds"] < 60
    assert job["ttlSecondsAfterFinished"] > 0
    pod = pod_spec(cron)
    assert pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    assert container["command"] == ["mobvibe-reaper"] and "--once" in container["args"]
    assert len(cron["metadata"]["name"]) <= 52


# Options the reaper had before the database held its limits (`mobvibe-queue config`).
REAPER_REMOVED = (
    "--heartbeat-timeout",
    "--heartbeat-interval",
    "--retain-completed",
    "--retain-failed",
)


def database_heartbeat_timeout() -> float:
    """queue_config.heartbeat_timeout's default, as the migration declares it."""
    text = (MIGRATIONS / "0005_least_privilege.sql").read_text()
    found = re.search(r"heartbeat_timeout interval NOT NULL DEFAULT '(\d+) seconds'", text)
    assert found, "the migration no longer declares the heartbeat timeout's default"
    return float(found.group(1))


def test_no_reaper_is_given_an_option_that_moved_to_the_database() -> None:
    reapers = [pod_spec(one("CronJob"))["containers"][0].get("args", [])]
    reapers.append(documents(COMPOSE)[0]["services"]["reaper"].get("command", []))
    for args in reapers:
        assert [a for a in args if a.split("=")[0] in REAPER_REMOVED] == [], args


def supervisor_settings() -> dict[str, str]:
    """The MOBVIBE_* variables the Deployment gives the supervisor (env and ConfigMap)."""
    container = pod_spec(one("Deployment"))["containers"][0]
    settings: dict[str, str] = {}
    for source in container.get("envFrom", []):
        settings.update(one("ConfigMap", source["configMapRef"]["name"])["data"])
    settings.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
    return settings


def test_the_heartbeat_timeout_is_the_databases_alone() -> None:
    """The supervisor reads it from the database, as the reaper does: no manifest sets it."""
    container = pod_spec(one("Deployment"))["containers"][0]
    assert option(container.get("args", []), "--heartbeat-timeout") is None
    assert "MOBVIBE_HEARTBEAT_TIMEOUT" not in supervisor_settings()
    interval = float(supervisor_settings().get("MOBVIBE_HEARTBEAT_INTERVAL", "5").rstrip("s"))
    assert 3 * interval <= database_heartbeat_timeout() == HEARTBEAT_TIMEOUT_DEFAULT


def test_the_deployment_names_the_agent_and_listens_on_every_address() -> None:
    """No silent stand-in: the job command is named, and the probes reach /healthz."""
    container = pod_spec(one("Deployment"))["containers"][0]
    args = container.get("args", [])
    assert "--demo" not in args and option(args, "--handler") is None
    assert supervisor_settings().get("MOBVIBE_EXEC", "").startswith("/")
    image_env = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    assert "MOBVIBE_METRICS_HOST=0.0.0.0" in image_env


def quantity(text: str) -> int:
    """Bytes in a Kubernetes quantity with a binary suffix ("24Gi")."""
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}
    found = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", text)
    assert found, f"not a binary quantity: {text}"
    return int(found.group(1)) * units.get(found.group(2) or "", 1)


def test_the_workspaces_live_in_an_empty_dir_whose_limit_eviction_stays_below() -> None:
    """The kubelet evicts the whole pod beyond the emptyDir's sizeLimit: the supervisor's
    own limit must leave room for what running attempts add."""
    container = _supervisor_container()
    settings = supervisor_settings()
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(one("Deployment"))["volumes"]}
    size_limit = quantity(volumes[mounts[settings["MOBVIBE_WORKSPACES"]]]["emptyDir"]["sizeLimit"])
    max_bytes = parse_size(settings["MOBVIBE_WORKSPACES_MAX_BYTES"])
    workers = int(option(container["args"], "--workers") or 1)
    assert max_bytes > 0 and max_bytes + workers * 512 * 1024**2 <= size_limit
    assert int(settings["MOBVIBE_WORKSPACES_MAX_COUNT"]) > 0


def test_the_pod_id_is_the_pods_name() -> None:
    """Kept across restarts of the container, as the emptyDir of its workspaces is."""
    env = {e["name"]: e for e in _supervisor_container()["env"]}
    assert env["MOBVIBE_POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_migration_job_runs_migrate_as_the_owner() -> None:
    job = one("Job", "mobvibe-migrate")
    container = pod_spec(job)["containers"][0]
    assert container["command"] == ["mobvibe-queue"] and container["args"] == ["migrate"]
    assert pod_spec(job)["restartPolicy"] == "Never"


def test_pod_disruption_budget_selects_the_supervisor_pods() -> None:
    pdb = one("PodDisruptionBudget")
    labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_supervisor_can_listen_past_a_transaction_pooler() -> None:
    """Behind PgBouncer the hub needs PostgreSQL itself: the Secret's listen-url, optional,
    since without a pooler DATABASE_URL serves for both."""
    secret = documents(KUBE / "secret.example.yaml")[0]["stringData"]
    container = pod_spec(one("Deployment", "mobvibe-supervisor"))["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    ref = env["MOBVIBE_LISTEN_URL"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"], ref["optional"]) == ("mobvibe-database", "listen-url", True)
    assert ref["key"] in secret and ":6432/" not in secret["listen-url"]
    assert "pgbouncer" in secret["database-url"] or ":6432/" in secret["database-url"]


def test_the_secret_example_points_to_sections_that_exist() -> None:
    text = (KUBE / "secret.example.yaml").read_text(encoding="utf-8")
    for path, title in re.findall(r"\(([\w/.]+\.md), \"([^\"]+)\"", text):
        headings = (ROOT / path).read_text(encoding="utf-8").splitlines()
        assert any(line.lstrip("#").strip() == title for line in headings if line.startswith("#"))
    assert re.search(r"\(([\w/.]+\.md), \"", text), "it points the reader somewhere"


def test_the_pgbouncer_example_logs_in_as_a_login_not_a_group() -> None:
    guide = (ROOT / "docs" / "backend" / "JOB_QUEUE.md").read_text(encoding="utf-8")
    behind = guide.split("\n## Behind PgBouncer\n")[1].split("\n## ")[0]
    logins = re.findall(r"postgresql://(\w+)[@:]", behind)
    groups = {"mobvibe_producer", "mobvibe_worker", "mobvibe_monitor", "mobvibe_operator"}
    assert logins and not set(logins) & groups, logins
    for login in set(logins):
        assert f"GRANT mobvibe_worker TO {login}" in behind
