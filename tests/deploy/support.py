"""What the deploy checks share: paths, the manifests as data, the supervisor's options."""

from __future__ import annotations

import shutil
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
KUBERNETES_VERSION = "1.30.0"
KEDA_API = "keda.sh/v1alpha1"
IMAGE_USER = 10001
SECCOMP = KUBE / "seccomp"
SECCOMP_PROFILE = SECCOMP / "mobvibe-sandbox.json"
# The runtime's default profile, unpacked from Debian by `make seccomp-profile`.
SECCOMP_DEFAULT = ROOT / ".tools" / "seccomp-default.json"
APPARMOR_PROFILE = KUBE / "apparmor" / "mobvibe-sandbox"
# Debian's apparmor_parser and its includes, unpacked by the Makefile.
APPARMOR_TOOLS = ROOT / ".tools" / "apparmor"


def tool(name: str) -> str | None:
    """A command from the project's venv (next to this Python), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def manifest_files() -> list[Path]:
    """Every Kubernetes manifest in deploy/kubernetes, the kustomization itself excepted."""
    return sorted(p for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")


@cache
def documents(path: Path) -> tuple[dict[str, Any], ...]:
    with path.open() as f:
        return tuple(d for d in yaml.safe_load_all(f) if d)


def kustomization() -> dict[str, Any]:
    return documents(KUBE / "kustomization.yaml")[0]


def applied() -> list[dict[str, Any]]:
    """The objects `kubectl apply -k deploy/kubernetes` creates, as written in their files."""
    return [d for name in kustomization()["resources"] for d in documents(KUBE / name)]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in applied()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, (
        f"expected one {kind} {name or ''} in the kustomization, found {len(found)}"
    )
    return found[0]


def option(args: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in an argument list."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod template's spec of a Deployment, Job or CronJob."""
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return obj["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def workloads() -> list[dict[str, Any]]:
    return [d for d in applied() if d["kind"] in ("Deployment", "Job", "CronJob")]
