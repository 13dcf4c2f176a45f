"""What the supervisor's pods need for the jobs' sandboxes, and nothing more: the seccomp
profile (RuntimeDefault plus the namespaces and mounts of bubblewrap), a user namespace of
the pod's own, an unmasked /proc, no capability."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.deploy.support import (
    APPARMOR_PROFILE,
    APPARMOR_TOOLS,
    SECCOMP,
    SECCOMP_DEFAULT,
    SECCOMP_PROFILE,
    one,
    pod_spec,
)

SANDBOX_CALLS = {"clone", "unshare", "mount", "umount2", "pivot_root"}
# Namespaces and mounts: RuntimeDefault allows them only with CAP_SYS_ADMIN (clone: without
# namespace flags), which the pods never have.
GUARDED = {*SANDBOX_CALLS, "clone3", "setns", "fsopen", "fsmount", "move_mount", "open_tree"}


def profile() -> dict[str, Any]:
    return json.loads(SECCOMP_PROFILE.read_text())  # type: ignore[no-any-return]


def test_the_profile_is_the_runtimes_default_with_the_sandboxs_rule_alone() -> None:
    if not SECCOMP_DEFAULT.exists():
        pytest.skip("Debian's default seccomp profile is not unpacked (make seccomp-profile)")
    made = subprocess.run(
        [sys.executable, str(SECCOMP / "make_profile.py"), str(SECCOMP_DEFAULT)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert made == SECCOMP_PROFILE.read_text(), "run `make seccomp-profile` and commit it"


def test_the_profile_allows_namespaces_and_mounts_to_bubblewrap_and_nothing_else_more() -> None:
    rules = profile()["syscalls"]
    assert profile()["defaultAction"] == "SCMP_ACT_ERRNO"
    *default, sandbox = rules
    assert set(sandbox["names"]) == SANDBOX_CALLS and sandbox["action"] == "SCMP_ACT_ALLOW"
    assert not sandbox["args"] and not sandbox["includes"] and not sandbox["excludes"]
    for rule in default:
        guarded = GUARDED & set(rule["names"])
        if not guarded or rule["action"] != "SCMP_ACT_ALLOW":
            continue
        admin = rule.get("includes", {}).get("caps") == ["CAP_SYS_ADMIN"]
        assert admin or rule.get("args"), f"{guarded} allowed outright: {rule}"
    assert not any(n.startswith("io_uring") for rule in rules for n in rule["names"])


def test_the_supervisors_pod_gives_its_sandboxes_what_they_need_and_nothing_more() -> None:
    spec = pod_spec(one("Deployment", "mobvibe-supervisor"))
    assert spec["hostUsers"] is False, "an unmasked /proc only in a user namespace of the pod's"
    (container,) = spec["containers"]
    ctx = container["securityContext"]
    for seccomp in (spec["securityContext"]["seccompProfile"], ctx["seccompProfile"]):
        assert seccomp == {"type": "Localhost", "localhostProfile": "profiles/mobvibe-sandbox.json"}
    assert ctx["procMount"] == "Unmasked"
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["allowPrivilegeEscalation"] is False and ctx["runAsNonRoot"] is True
    assert "privileged" not in ctx


def test_the_apparmor_profile_compiles() -> None:
    """The profile for AppArmor nodes, compiled by Debian's apparmor_parser (nothing loaded:
    the kernel here may have no AppArmor)."""
    parser = APPARMOR_TOOLS / "apparmor_parser"
    if not parser.exists():
        pytest.skip("apparmor_parser is not unpacked (make deploy-check unpacks it)")
    includes = APPARMOR_TOOLS / "apparmor.d"
    done = subprocess.run(
        [
            str(parser),
            "--base",
            str(includes),
            "--Include",
            str(includes),
            "--skip-kernel-load",
            "--skip-cache",
            "--stdout",
            str(APPARMOR_PROFILE),
        ],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"mobvibe-sandbox" in done.stdout
