"""The KEDA objects: no offline validator knows them, so their fields are checked here, and the
scaler's query runs against a migrated database."""

from __future__ import annotations

import copy
import secrets
from typing import Any

import psycopg
import pytest
from psycopg import sql

from mobvibe.client import JobQueue
from tests.deploy.support import KEDA_API, one, option, pod_spec

# Field sets of keda.sh/v1alpha1 (kedacore/keda apis/keda/v1alpha1/scaledobject_types.go,
# triggerauthentication_types.go, pkg/scalers/postgresql_scaler.go).
SCALED_OBJECT_SPEC = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "minReplicaCount",
    "maxReplicaCount",
    "idleReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
SCALE_TARGET_REF = {"apiVersion", "kind", "name", "envSourceContainerName"}
FALLBACK = {"failureThreshold", "replicas", "behavior"}
ADVANCED = {"horizontalPodAutoscalerConfig", "restoreToOriginalReplicaCount", "scalingModifiers"}
HPA_CONFIG = {"name", "behavior"}
HPA_BEHAVIOR = {"scaleUp", "scaleDown"}
HPA_RULES = {"stabilizationWindowSeconds", "selectPolicy", "policies"}
HPA_POLICY = {"type", "value", "periodSeconds"}
TRIGGER = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
AUTHENTICATION_REF = {"name", "kind"}
POSTGRESQL_METADATA = {
    "query",
    "targetQueryValue",
    "activationTargetQueryValue",
    "connectionFromEnv",
    "host",
    "port",
    "userName",
    "dbName",
    "sslmode",
    "passwordFromEnv",
}
POSTGRESQL_AUTH_PARAMETERS = {
    "connection",
    "password",
    "host",
    "port",
    "userName",
    "dbName",
    "sslmode",
}
TRIGGER_AUTH_SPEC = {
    "secretTargetRef",
    "env",
    "configMapTargetRef",
    "podIdentity",
    "hashiCorpVault",
    "azureKeyVault",
    "gcpSecretManager",
    "awsSecretManager",
}
SECRET_TARGET_REF = {"parameter", "name", "key"}
METADATA = {"name", "namespace", "labels", "annotations"}
INTS = {
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "minReplicaCount",
    "maxReplicaCount",
    "idleReplicaCount",
}


def check_scaled_object(obj: dict[str, Any]) -> None:
    """Raise AssertionError on any field KEDA does not know or a value of the wrong shape."""
    assert obj["apiVersion"] == KEDA_API and obj["kind"] == "ScaledObject"
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    _keys(obj["metadata"], METADATA, "metadata")
    spec = obj["spec"]
    _keys(spec, SCALED_OBJECT_SPEC, "spec")
    for field in INTS & set(spec):
        assert isinstance(spec[field], int) and spec[field] >= 0, f"spec.{field}: an integer"
    assert spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100)
    _keys(spec["scaleTargetRef"], SCALE_TARGET_REF, "spec.scaleTargetRef")
    if "fallback" in spec:
        _keys(spec["fallback"], FALLBACK, "spec.fallback")
    advanced = spec.get("advanced", {})
    _keys(advanced, ADVANCED, "spec.advanced")
    hpa = advanced.get("horizontalPodAutoscalerConfig", {})
    _keys(hpa, HPA_CONFIG, "horizontalPodAutoscalerConfig")
    behavior = hpa.get("behavior", {})
    _keys(behavior, HPA_BEHAVIOR, "behavior")
    for direction, rules in behavior.items():
        _keys(rules, HPA_RULES, f"behavior.{direction}")
        for policy in rules.get("policies", []):
            _keys(policy, HPA_POLICY, f"behavior.{direction}.policies[]")
            assert policy["type"] in ("Pods", "Percent")
    assert spec["triggers"], "spec.triggers must not be empty"
    for trigger in spec["triggers"]:
        _keys(trigger, TRIGGER, "trigger")
        assert trigger["type"] == "postgresql"
        _keys(trigger["metadata"], POSTGRESQL_METADATA, "postgresql trigger metadata")
        assert all(isinstance(v, str) for v in trigger["metadata"].values()), (
            "trigger metadata values are strings"
        )
        assert {"query", "targetQueryValue"} <= set(trigger["metadata"])
        float(trigger["metadata"]["targetQueryValue"])
        if "authenticationRef" in trigger:
            _keys(trigger["authenticationRef"], AUTHENTICATION_REF, "authenticationRef")
        else:
            assert "connectionFromEnv" in trigger["metadata"] or "host" in trigger["metadata"]


def check_trigger_authentication(obj: dict[str, Any]) -> None:
    assert obj["apiVersion"] == KEDA_API and obj["kind"] == "TriggerAuthentication"
    _keys(obj["metadata"], METADATA, "metadata")
    _keys(obj["spec"], TRIGGER_AUTH_SPEC, "spec")
    for ref in obj["spec"].get("secretTargetRef", []):
        _keys(ref, SECRET_TARGET_REF, "secretTargetRef[]")
        assert ref["parameter"] in POSTGRESQL_AUTH_PARAMETERS


def _keys(mapping: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(mapping) - allowed
    assert not unknown, f"{where}: unknown field(s) {sorted(unknown)}"


def test_scaled_object_has_only_known_fields() -> None:
    check_scaled_object(one("ScaledObject"))


def test_trigger_authentication_has_only_known_fields() -> None:
    check_trigger_authentication(one("TriggerAuthentication"))


@pytest.mark.parametrize(
    "path, bad",
    [
        (("spec",), {"pollingIntervall": 15}),
        (("spec", "scaleTargetRef"), {"nmae": "x"}),
        (
            ("spec", "advanced", "horizontalPodAutoscalerConfig", "behavior", "scaleDown"),
            {"stabilisationWindowSeconds": 60},
        ),
        (("spec", "triggers", 0), {"metdata": {}}),
        (("spec", "triggers", 0, "metadata"), {"targetQueryValu": "8"}),
        (("spec", "triggers", 0), {"type": "postgres"}),
        (("spec",), {"minReplicaCount": "1"}),
    ],
    ids=["spec", "scaleTargetRef", "behavior", "trigger", "metadata", "type", "type-of-value"],
)
def test_a_broken_field_fails_the_check(path: tuple[Any, ...], bad: dict[str, Any]) -> None:
    obj = copy.deepcopy(one("ScaledObject"))
    node = obj
    for step in path:
        node = node[step]
    node.update(bad)
    with pytest.raises(AssertionError):
        check_scaled_object(obj)


def test_scale_target_is_the_supervisor_deployment() -> None:
    ref = one("ScaledObject")["spec"]["scaleTargetRef"]
    deployment = one("Deployment")
    assert ref["name"] == deployment["metadata"]["name"]
    assert ref.get("kind", "Deployment") == "Deployment"
    assert ref.get("apiVersion", "apps/v1") == "apps/v1"
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"


def test_target_value_is_the_workers_per_pod() -> None:
    trigger = one("ScaledObject")["spec"]["triggers"][0]
    args = pod_spec(one("Deployment"))["containers"][0]["args"]
    assert float(trigger["metadata"]["targetQueryValue"]) == float(option(args, "--workers") or 0)


def test_trigger_authentication_reads_the_monitor_login_from_the_secret() -> None:
    trigger = one("ScaledObject")["spec"]["triggers"][0]
    auth = one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    assert (ref["parameter"], ref["name"], ref["key"]) == (
        "connection",
        "mobvibe-database",
        "monitor-url",
    )


def _scaler_query() -> str:
    return str(one("ScaledObject")["spec"]["triggers"][0]["metadata"]["query"])


def _fill_queue(url: str) -> int:
    """Jobs in every status: 3 pending, 2 processing, 1 completed, 1 failed; returns 3 + 2."""
    with JobQueue(url) as queue:
        for _ in range(2):
            queue.enqueue("dies on its first failure", priority=10, max_retries=1)
        for _ in range(5):
            queue.enqueue("a long coding job", priority=0)
        claimed = [queue.claim("test") for _ in range(4)]
        assert all(job is not None for job in claimed)
        short = [j for j in claimed if j is not None and j.priority == 10]
        long = [j for j in claimed if j is not None and j.priority == 0]
        assert queue.fail(short[0].id, "boom", short[0].lease_token) is False  # dead-lettered
        assert queue.complete(long[0].id, long[0].lease_token)
        stats = queue.stats()
    assert (
        stats.pending_count,
        stats.processing_count,
        stats.completed_count,
        stats.failed_count,
    ) == (3, 2, 1, 1)
    return 3 + 2


def test_scaler_query_counts_pending_and_processing_jobs(db_url: str) -> None:
    expected = _fill_queue(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(_scaler_query()).fetchall()
    assert rows == [(expected,)], "KEDA needs exactly one number: pending + processing"


def test_scaler_query_on_an_empty_queue_is_zero(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute(_scaler_query()).fetchall() == [(0,)]


def test_scaler_query_runs_as_a_member_of_mobvibe_monitor_only(db_url: str) -> None:
    expected = _fill_queue(db_url)
    login = f"keda_{secrets.token_hex(4)}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        if (
            conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'mobvibe_monitor'").fetchone()
            is None
        ):
            pytest.skip("the migrations could not create mobvibe_monitor (no CREATEROLE)")
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE mobvibe_monitor").format(sql.Identifier(login))
        )
        try:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(login)))
            assert conn.execute(_scaler_query()).fetchall() == [(expected,)]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT * FROM claim_next_job()")
        finally:
            conn.execute("RESET ROLE")
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(login)))
