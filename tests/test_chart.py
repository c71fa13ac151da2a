"""The Helm chart (charts/footprint-exporter) and the manifests generated from it.

helm-python-sdk (the Helm v4 SDK, no helm binary) lints the chart strictly and renders it with
its defaults and with each ci/*-values.yaml; every core object is validated against the
Kubernetes API schemas of the versions we support (kubernetes-validate, strict: unknown fields
fail); the PrometheusRule goes through `promtool check rules`; the exporter's own config
parser reads the rendered config file. Then one test per toggle, in the manner of
helm-unittest, and the generated files are checked to be in sync with their sources.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import math
import posixpath
import re
import shutil
import subprocess
import sys
import tomllib
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from exporter import config as exporter_config
from exporter.sources.registry import SECTIONS
from tests.support import REPO, require_binary
from tests.support.chart import (
    CHART,
    INSTALL_DOC,
    NAMESPACE,
    RELEASE,
    Obj,
    of_kind,
    one,
    render,
    render_templates,
    require_module,
)

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
GENERATOR = REPO / "scripts" / "gen_manifests.py"
MANIFESTS = REPO / "manifests"
RULES = REPO / "rules" / "footprint.rules.yaml"
BUDGETS_EXAMPLE = REPO / "rules" / "budgets.example.yaml"
DASHBOARDS = sorted((REPO / "dashboards").glob("*.json"))

KUBE_VERSIONS = ("1.32", "1.33", "1.34", "1.35", "1.36", "1.37")
"""The Kubernetes minors the chart is validated against, each rendered as that version
(docs/install.md, Chart.yaml): upstream supports the three newest, and the chart reaches back
to the oldest still supported."""
RECURSIVE_READ_ONLY_SINCE = "1.33"  # recursiveReadOnly went GA in Kubernetes 1.33
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "VerticalPodAutoscaler"}
FEATURES = {"servicemonitor", "podmonitor", "rules-budgets", "dashboards", "gpu", "gpu-only",
            "gpu-cdi", "gpu-volume-mounts", "parity", "scheduling",
            "networkpolicy", "webconfig-tls", "live-intensity", "hostpid", "config"}
POD_RESOURCES_DIR = "/var/lib/kubelet/pod-resources"
POOL_LABEL = "footprint.dev/pool"
GPU_LABEL = "nvidia.com/gpu.present"
HOST_PATHS = {
    # /sys no wider than the exporter reads: RAPL through class/powercap, whose entries link
    # into devices/virtual/powercap (both parents always exist), and the cgroups.
    "/sys/class": "/host/sys/class",
    "/sys/devices/virtual": "/host/sys/devices/virtual",
    "/sys/fs/cgroup": "/host/sys/fs/cgroup",
    "/proc": "/host/proc",  # per-PID cgroup files: the whole procfs
    POD_RESOURCES_DIR: POD_RESOURCES_DIR,
    # gpu.injection=volume-mounts: the toolkit's device list, read from the mount's place only.
    "/dev/null": "/var/run/nvidia-container-devices/all",
}
"""hostPath -> mountPath of every host mount the chart may make."""
HOST_DIRECTORIES = {path for path in HOST_PATHS if path != "/dev/null"}
"""The host mounts of the default render: directories, all of them."""
DEFAULT_NETWORK_PEERS = [
    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
MEASURED_RSS_MB = 114  # docs/performance.md: 107-114 MB at 250 containers, 8 GPUs
HOSTILE_CLIENTS_MB = 40  # what hostile clients add before the server's limits stop them
HEALTHZ_STALE_MIN_S = 30  # /healthz fails after max(3 x interval, 30 s) without a tick
RBAC_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
]
DRA_RULE = {"apiGroups": ["resource.k8s.io"], "resources": ["resourceslices"],
            "verbs": ["get", "list", "watch"]}
"""The ClusterRole's own rule with gpu.enabled and gpu.dra.enabled: this node's ResourceSlices
(never ResourceClaims)."""
DRA_DRIVERS = ["gpu.nvidia.com"]  # gpu.dra.drivers' default
DRA_KUBE_VERSIONS = ("1.34", "1.35", "1.36", "1.37")
"""The minors that serve resource.k8s.io/v1 (GA in 1.34)."""
INJECTIONS = ("env", "volume-mounts", "cdi")
VIRTUAL_NODE_EXCLUSION = [
    {"key": "eks.amazonaws.com/compute-type", "operator": "NotIn", "values": ["fargate"]},
    {"key": "type", "operator": "NotIn", "values": ["virtual-kubelet"]},
]
"""virtualNodeExclusion's default: prometheus-node-exporter's default node affinity (its
_helpers.tpl, defaultAffinity), EKS Fargate and virtual-kubelet nodes (AKS virtual nodes)."""
SAFE_TO_EVICT = {"cluster-autoscaler.kubernetes.io/safe-to-evict": "true"}
PRIORITY_CLASS = "system-cluster-critical"  # priorityClassName's default (values.yaml: why)
VIRTUAL_NODES = {
    "fargate": {"kubernetes.io/os": "linux", "eks.amazonaws.com/compute-type": "fargate"},
    "virtual-kubelet": {"kubernetes.io/os": "linux", "type": "virtual-kubelet"},
    "virtual-kubelet-gpu": {"kubernetes.io/os": "linux", "type": "virtual-kubelet",
                            "nvidia.com/gpu.present": "true"},
}
"""Labels of the virtual nodes no exporter may be scheduled to."""
APP_VERSION = str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])
IMAGE = "ghcr.io/footprint-exporter/footprint-exporter"
"""The default image: where .github/workflows/release.yaml pushes it (tests/test_release.py)."""
DEVICE_LIST_DIR = "/var/run/nvidia-container-devices"
CDI_ANNOTATION = "cdi.k8s.io/footprint-exporter"


@pytest.fixture(scope="module")
def helm() -> ModuleType:
    return require_module("helm_python", "helm-python-sdk")


@pytest.fixture(scope="module")
def kubernetes_validate() -> Iterator[ModuleType]:
    """kubernetes-validate, reading each schema file once: its validate() reads and parses the
    version's schemas (~10 MB of JSON) again on every call, most of this module's time."""
    module = require_module("kubernetes_validate", "kubernetes-validate")
    utils = importlib.import_module("kubernetes_validate.utils")
    read = utils.schema_contents
    utils.schema_contents = functools.cache(read)
    try:
        yield module
    finally:
        utils.schema_contents = read


def load_values(case: str) -> Obj | None:
    if case == "default":
        return None
    data = yaml.safe_load((CHART / "ci" / f"{case}-values.yaml").read_text())
    assert isinstance(data, dict)
    return data


CASES = ["default", *(p.name.removesuffix("-values.yaml") for p in CI_VALUES)]


def pools(case: str) -> list[str]:
    """The node pools whose DaemonSet a case renders."""
    values = load_values(case) or {}
    return [pool for pool, default in (("cpu", True), ("gpu", False))
            if values.get(pool, {}).get("enabled", default)]


CASE_POOLS = [(case, pool) for case in CASES for pool in pools(case)]


def dra_on(values: Obj | None) -> bool:
    """Whether values turn DRA attribution on: gpu.enabled and gpu.dra.enabled (on by
    default)."""
    gpu = (values or {}).get("gpu") or {}
    return bool(gpu.get("enabled", False) and (gpu.get("dra") or {}).get("enabled", True))


def daemonset(objects: list[Obj], pool: str | None = None) -> Obj:
    """The DaemonSet of a node pool (cpu or gpu); without one, the CPU DaemonSet, or the only
    one there is."""
    found = of_kind(objects, "DaemonSet")
    if pool is None:
        pool = "cpu" if len(found) > 1 else found[0]["spec"]["template"]["metadata"]["labels"][
            POOL_LABEL]
    (chosen,) = [d for d in found if d["spec"]["template"]["metadata"]["labels"][POOL_LABEL]
                 == pool]
    return chosen


def pod_spec(objects: list[Obj], pool: str | None = None) -> Obj:
    spec: Obj = daemonset(objects, pool)["spec"]["template"]["spec"]
    return spec


def container(objects: list[Obj], pool: str | None = None) -> Obj:
    (exporter,) = pod_spec(objects, pool)["containers"]
    return exporter  # type: ignore[no-any-return]


def env(objects: list[Obj], pool: str | None = None) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom"))
            for e in container(objects, pool)["env"]}


def mounts(objects: list[Obj], pool: str | None = None) -> dict[str, Obj]:
    return {m["name"]: m for m in container(objects, pool)["volumeMounts"]}


def volumes(objects: list[Obj], pool: str | None = None) -> dict[str, Obj]:
    return {v["name"]: v for v in pod_spec(objects, pool)["volumes"]}


def config_file(objects: list[Obj]) -> Obj:
    (configmap,) = [m for m in of_kind(objects, "ConfigMap") if "config.yaml" in m["data"]]
    data = yaml.safe_load(configmap["data"]["config.yaml"])
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def rendered(helm: ModuleType) -> dict[str, list[Obj]]:
    return {case: render(helm, load_values(case)) for case in CASES}


# ---------------------------------------------------------------------------------------------
# Lint, schema validation of every object, promtool


def test_each_feature_has_ci_values() -> None:
    assert set(CASES) - {"default"} >= FEATURES


@pytest.mark.parametrize("case", CASES)
def test_lint_strict_passes(helm: ModuleType, case: str) -> None:
    for version in KUBE_VERSIONS:
        report = helm.lint(CHART, load_values(case), strict=True, kube_version=f"v{version}.0")
        findings = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
        assert not findings and not report["errors"], (version, findings, report["errors"])


def test_lint_reports_bad_values(helm: ModuleType) -> None:
    report = helm.lint(CHART, {"logLevel": "loud"}, strict=True)
    assert report["errors"], report


@pytest.mark.parametrize("case", CASES)
def test_core_objects_match_the_kubernetes_schemas(
        helm: ModuleType, kubernetes_validate: ModuleType, case: str) -> None:
    """Every object, both DaemonSets included, rendered as each supported minor and validated
    strictly against that minor's schemas."""
    for version in KUBE_VERSIONS:
        core = [obj for obj in render(helm, load_values(case), version)
                if obj["kind"] not in CRD_KINDS]
        assert {"DaemonSet", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service",
                "ConfigMap"} <= {obj["kind"] for obj in core}
        assert len(of_kind(core, "DaemonSet")) == len(pools(case)), (case, version)
        for ds in of_kind(core, "DaemonSet"):
            # Kept off virtual nodes, and evictable by the cluster autoscaler, in every case.
            template = ds["spec"]["template"]
            assert template["metadata"]["annotations"].items() >= SAFE_TO_EVICT.items()
            for labels in VIRTUAL_NODES.values():
                assert not runs_on(ds, labels), (case, version, ds["metadata"]["name"], labels)
            for term in template["spec"]["affinity"]["nodeAffinity"][
                    "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]:
                assert all(e in term["matchExpressions"] for e in VIRTUAL_NODE_EXCLUSION)
        for obj in core:
            try:
                assert kubernetes_validate.validate(obj, version, strict=True) == version
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(map(str, exc.path))
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} on {version}: "
                            f"{where}: {exc.message}")


def test_strict_validation_rejects_unknown_fields(
        rendered: dict[str, list[Obj]], kubernetes_validate: ModuleType) -> None:
    daemonset = json.loads(json.dumps(one(rendered["default"], "DaemonSet")))
    daemonset["spec"]["template"]["spec"]["containers"][0]["readOnlyRoot"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBE_VERSIONS[0], strict=True)


@pytest.mark.parametrize("case", CASES)
def test_the_prometheus_rule_passes_promtool(
        rendered: dict[str, list[Obj]], tmp_path: Path, case: str) -> None:
    for rule in of_kind(rendered[case], "PrometheusRule"):
        path = tmp_path / "rules.yaml"
        path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
        result = subprocess.run([require_binary("promtool"), "check", "rules", str(path)],
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", CASES)
def test_the_exporter_accepts_the_config_file(rendered: dict[str, list[Obj]], case: str) -> None:
    objects = rendered[case]
    config = exporter_config.parse_file_config(config_file(objects))
    assert config.kubernetes.pod_resources_socket == f"{POD_RESOURCES_DIR}/kubelet.sock"
    # DRA attribution only where a GPU DaemonSet runs and gpu.dra is on.
    assert list(config.kubernetes.dra_drivers) == (
        DRA_DRIVERS if dra_on(load_values(case)) else [])
    assert container(objects)["args"].count("--config.file=/etc/footprint/config.yaml") == 1
    assert mounts(objects)["config"]["mountPath"] == "/etc/footprint/config.yaml"
    # the pod labels charged per value are the rule pack's chargeback keys (default [team])
    values = load_values(case) or {}
    keys = ((values.get("prometheusRule") or {}).get("chargeback") or {}).get("labels", ["team"])
    assert list(config.kubernetes.chargeback_labels) == keys


def test_the_charged_labels_follow_the_rule_packs_keys_unless_the_config_names_them(
        helm: ModuleType) -> None:
    objects = render(helm, {"prometheusRule": {"chargeback": {"labels": ["team", "cost-center"]}}})
    assert config_file(objects)["kubernetes"]["chargeback_labels"] == ["team", "cost-center"]
    objects = render(helm, {"prometheusRule": {"chargeback": {"labels": []}}})
    assert config_file(objects)["kubernetes"]["chargeback_labels"] == []
    own = {"config": {"kubernetes": {"chargeback_labels": ["tenant"]}}}
    assert config_file(render(helm, own))["kubernetes"]["chargeback_labels"] == ["tenant"]


# ---------------------------------------------------------------------------------------------
# Security: for every case


@pytest.mark.parametrize(("case", "pool"), CASE_POOLS)
def test_the_exporter_runs_without_privileges(
        rendered: dict[str, list[Obj]], case: str, pool: str) -> None:
    objects = rendered[case]
    context = container(objects, pool)["securityContext"]
    assert context["privileged"] is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}  # nothing added
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    # Root only as the owner of energy_uj and the kubelet's socket: no capability comes with it.
    assert context["runAsUser"] == 0 and context["runAsNonRoot"] is False
    spec = pod_spec(objects, pool)
    assert not spec.get("hostNetwork") and not spec.get("hostIPC")
    # The GPUs come from the NVIDIA runtime, never from a device request or privileges.
    assert "nvidia.com/gpu" not in json.dumps(container(objects, pool)["resources"])
    assert "securityContext" not in spec or "sysctls" not in spec["securityContext"]


@pytest.mark.parametrize(("case", "pool"), CASE_POOLS)
def test_every_host_path_is_mounted_read_only(
        rendered: dict[str, list[Obj]], case: str, pool: str) -> None:
    objects = rendered[case]
    host = {name: v["hostPath"]["path"] for name, v in volumes(objects, pool).items()
            if "hostPath" in v}
    assert set(host.values()) <= set(HOST_PATHS)
    for name, path in host.items():
        mount = mounts(objects, pool)[name]
        assert mount["readOnly"] is True, name
        assert mount["mountPath"] == HOST_PATHS[path]
    for mount in mounts(objects, pool).values():
        if mount["name"] != "tmp":
            assert mount.get("readOnly") is True, mount
        if mount["mountPath"].startswith(("/host/sys/", "/host/proc")):
            assert mount["recursiveReadOnly"] == "IfPossible", mount


@pytest.mark.parametrize(("case", "pool"), CASE_POOLS)
def test_rbac_reads_pods_nodes_and_resourceslices_only(
        rendered: dict[str, list[Obj]], case: str, pool: str) -> None:
    objects = rendered[case]
    assert one(objects, "ClusterRole")["rules"] == RBAC_RULES + (
        [DRA_RULE] if dra_on(load_values(case)) else [])
    assert not of_kind(objects, "Role") and not of_kind(objects, "RoleBinding")
    binding = one(objects, "ClusterRoleBinding")
    account = one(objects, "ServiceAccount")["metadata"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole",
                                  "name": one(objects, "ClusterRole")["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"],
                                    "namespace": account["namespace"]}]
    assert pod_spec(objects, pool)["serviceAccountName"] == account["name"]
    assert pod_spec(objects, pool)["automountServiceAccountToken"] is True


# ---------------------------------------------------------------------------------------------
# Defaults


def test_defaults(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["default"]
    assert {obj["kind"] for obj in objects} == {
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Service",
        "DaemonSet", "NetworkPolicy", "ResourceQuota"}
    daemonset = one(objects, "DaemonSet")
    assert daemonset["metadata"]["name"] == f"{RELEASE}-footprint-exporter"
    # Selector as before the pools (immutable): upgrades keep the same DaemonSet.
    assert daemonset["spec"]["selector"] == {"matchLabels": {
        "app.kubernetes.io/name": "footprint-exporter", "app.kubernetes.io/instance": RELEASE}}
    assert daemonset["spec"]["template"]["metadata"]["labels"][POOL_LABEL] == "cpu"
    assert daemonset["spec"]["revisionHistoryLimit"] == 10
    assert daemonset["spec"]["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}}
    spec = pod_spec(objects)
    assert spec["hostPID"] is False
    assert "runtimeClassName" not in spec and spec["priorityClassName"] == PRIORITY_CLASS
    assert spec["terminationGracePeriodSeconds"] == 10
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    # No GPU pool to leave out: only the virtual nodes.
    assert spec["affinity"] == {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": VIRTUAL_NODE_EXCLUSION}]}}}
    assert "imagePullSecrets" not in spec
    assert daemonset["spec"]["template"]["metadata"]["annotations"].items() >= (
        SAFE_TO_EVICT.items())
    gpu_taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    assert any(tolerates(t, gpu_taint) for t in spec["tolerations"])
    exporter = container(objects)
    assert exporter["image"] == f"{IMAGE}:{APP_VERSION}"
    assert exporter["args"] == [
        "--web.listen-address=:9835", "--path.sysfs=/host/sys", "--path.procfs=/host/proc",
        "--config.file=/etc/footprint/config.yaml", "--collector.interval=5",
        "--log.level=info"]
    assert env(objects) == {
        "NODE_NAME": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}},
        "PYTHONDONTWRITEBYTECODE": "1"}
    assert exporter["ports"] == [{"name": "metrics", "containerPort": 9835, "protocol": "TCP"}]
    assert exporter["livenessProbe"]["httpGet"] == {
        "path": "/healthz", "port": "metrics", "scheme": "HTTP"}
    assert exporter["readinessProbe"]["httpGet"] == {
        "path": "/readyz", "port": "metrics", "scheme": "HTTP"}
    assert "startupProbe" not in exporter
    assert exporter["resources"] == {"requests": {"cpu": "50m", "memory": "128Mi"},
                                     "limits": {"memory": "256Mi"}}
    assert volumes(objects)["tmp"] == {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}
    assert mounts(objects)["tmp"]["mountPath"] == "/tmp"
    # The kubelet's pod-resources directory, not its socket (docs/podresources.md).
    assert volumes(objects)["pod-resources"]["hostPath"] == {
        "path": POD_RESOURCES_DIR, "type": "Directory"}
    assert config_file(objects) == {  # no GPU DaemonSet: no DRA drivers
        "kubernetes": {"pod_resources_socket": f"{POD_RESOURCES_DIR}/kubelet.sock",
                       "dra_drivers": [], "chargeback_labels": ["team"]}}
    service = one(objects, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9835, "targetPort": "metrics", "protocol": "TCP"}]
    assert service["spec"]["selector"].items() <= (
        daemonset["spec"]["template"]["metadata"]["labels"].items())


def tolerates(toleration: Obj, taint: Obj) -> bool:
    """Whether a toleration tolerates a taint, as the scheduler decides."""
    if toleration.get("effect") not in (None, "", taint["effect"]):
        return False
    if toleration.get("operator") == "Exists":
        return toleration.get("key") in (None, "", taint["key"])
    return bool(toleration.get("key") == taint["key"]
                and toleration.get("value") == taint["value"])


# ---------------------------------------------------------------------------------------------
# Toggles


def test_service_monitor(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["servicemonitor"]
    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # job="footprint-exporter", which the rule pack's FootprintExporterDown selects.
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    assert one(objects, "Service")["metadata"]["labels"]["app.kubernetes.io/name"] == (
        "footprint-exporter")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True
    assert (endpoint["port"], endpoint["scheme"]) == ("metrics", "http")
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("30s", "10s")
    # The workload-label restore first (tests/test_honor_labels.py), then the values' own.
    assert [r["action"] for r in endpoint["metricRelabelings"]] == [
        "replace", "replace", "replace", "labeldrop", "drop"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        one(objects, "Service")["metadata"]["labels"].items())
    # The object lives where the values put it; it still scrapes the release's namespace.
    assert monitor["metadata"]["namespace"] == "observability"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["sampleLimit"] == 30000
    assert monitor["spec"]["targetLabels"] == ["app.kubernetes.io/instance"]
    assert "podTargetLabels" not in monitor["spec"]
    default = one(rendered["webconfig-tls"], "ServiceMonitor")
    assert default["metadata"]["namespace"] == NAMESPACE
    assert default["spec"]["sampleLimit"] == 20000  # ~2,650 series at 250 containers
    assert "targetLabels" not in default["spec"]
    for case in CASES:
        if case not in ("servicemonitor", "webconfig-tls", "gpu"):
            assert not of_kind(rendered[case], "ServiceMonitor"), case


def test_pod_monitor(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["podmonitor"]
    monitor = one(objects, "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["honorLabels"] is True
    assert (endpoint["port"], endpoint["interval"]) == ("metrics", "60s")
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    pod_labels = one(objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert not of_kind(objects, "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == NAMESPACE
    assert monitor["spec"]["sampleLimit"] == 20000
    assert not any(of_kind(rendered[case], "PodMonitor") for case in CASES
                   if case not in ("podmonitor", "parity"))


def test_service_and_pod_monitor_together_are_refused(helm: ModuleType) -> None:
    with pytest.raises(helm.HelmRenderError, match="choose one"):
        render(helm, {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}})


def test_the_prometheus_rule_embeds_the_rule_pack_and_the_budgets(
        rendered: dict[str, list[Obj]]) -> None:
    rule = one(rendered["rules-budgets"], "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    groups = rule["spec"]["groups"]
    pack = yaml.safe_load(RULES.read_text())["groups"]
    *embedded, budgets = groups
    intervals = {g["name"]: g.pop("interval") for g in embedded if "interval" in g}
    assert intervals == {"footprint.increase1d": "5m"}
    assert embedded == pack
    # The same budgets as rules/budgets.example.yaml give the same group.
    (example,) = yaml.safe_load(BUDGETS_EXAMPLE.read_text())["groups"]
    assert budgets == example
    for case in CASES:
        if case != "rules-budgets":
            assert not of_kind(rendered[case], "PrometheusRule"), case


def test_the_prometheus_rule_without_budgets(helm: ModuleType) -> None:
    rule = one(render(helm, {"prometheusRule": {"enabled": True}}), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_a_budget_quotes_the_model_and_writes_plain_numbers(helm: ModuleType) -> None:
    values = {"prometheusRule": {"enabled": True, "budgets": {'odd "model"': 25000000.5,
                                                               "big": 30000000}}}
    rule = one(render(helm, values), "PrometheusRule")
    (budget,) = rule["spec"]["groups"][-1]["rules"]
    assert budget["expr"] == (
        'label_replace(vector(30000000), "model", "big", "", "")\nor\n'
        'label_replace(vector(25000000.5), "model", "odd \\"model\\"", "", "")\n')


def test_dashboards(rendered: dict[str, list[Obj]]) -> None:
    maps = [m for m in of_kind(rendered["dashboards"], "ConfigMap") if "config.yaml" not in
            m["data"]]
    assert len(maps) == len(DASHBOARDS)
    by_file = {next(iter(m["data"])): m for m in maps}
    assert set(by_file) == {d.name for d in DASHBOARDS}
    for dashboard in DASHBOARDS:
        configmap = by_file[dashboard.name]
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert configmap["metadata"]["annotations"] == {"grafana_folder": "Footprint"}
        assert configmap["data"][dashboard.name] == dashboard.read_text().rstrip("\n")
    for case in CASES:
        if case != "dashboards":
            assert len(of_kind(rendered[case], "ConfigMap")) == 1, case


def network_policy(objects: list[Obj]) -> Obj:
    """The chart's NetworkPolicy, checked to admit the metrics port only, to the exporter pods."""
    policy = one(objects, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress stays open
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    for ds in of_kind(objects, "DaemonSet"):  # both node pools' pods
        (exporter,) = ds["spec"]["template"]["spec"]["containers"]
        assert "metrics" in {p["name"] for p in exporter["ports"]}
        labels = ds["spec"]["template"]["metadata"]["labels"]
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    return policy


def test_network_policy_admits_only_the_monitoring_namespace_by_default(
        rendered: dict[str, list[Obj]], helm: ModuleType) -> None:
    (ingress,) = network_policy(rendered["default"])["spec"]["ingress"]
    assert ingress["from"] == DEFAULT_NETWORK_PEERS
    for case in CASES:  # on in every case, with the default peers unless the case sets them
        (ingress,) = network_policy(rendered[case])["spec"]["ingress"]
        if case != "networkpolicy":
            assert ingress["from"] == DEFAULT_NETWORK_PEERS, case
    notes = render_templates(helm, None)["footprint-exporter/templates/NOTES.txt"]
    assert "only from the peers in\nnetworkPolicy.from" in notes
    assert "hostNetwork" in notes


def test_network_policy_can_be_narrowed_or_widened(
        rendered: dict[str, list[Obj]], helm: ModuleType,
        kubernetes_validate: ModuleType) -> None:
    (ingress,) = network_policy(rendered["networkpolicy"])["spec"]["ingress"]
    assert ingress["from"] == load_values("networkpolicy")["networkPolicy"]["from"]  # type: ignore[index]
    observability = [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "observability"}}}]
    # Helm replaces lists whole: the override is the whole peer list.
    other = network_policy(render(helm, {"networkPolicy": {"from": observability}}))
    assert other["spec"]["ingress"] == [
        {"ports": [{"port": "metrics", "protocol": "TCP"}], "from": observability}]
    # from: [] admits anyone, still on the metrics port only: a rule without `from`.
    anyone = network_policy(render(helm, {"networkPolicy": {"from": []}}))
    assert anyone["spec"]["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    notes = render_templates(helm, {"networkPolicy": {"from": []}})[
        "footprint-exporter/templates/NOTES.txt"]
    assert "admits anyone to port 9835" in notes
    for policy in (other, anyone):
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(policy, version, strict=True)
    with helm.Chart.load(CHART) as chart:
        for bad in ({"networkPolicy": {"from": [{}]}},
                    {"networkPolicy": {"from": [{"namespaceSelectors": {}}]}},
                    {"networkPolicy": {"from": [{"ipBlock": {"except": ["10.0.0.1/32"]}}]}}):
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(bad)


def test_network_policy_can_be_turned_off(helm: ModuleType) -> None:
    values = {"networkPolicy": {"enabled": False}}
    assert not of_kind(render(helm, values), "NetworkPolicy")
    notes = render_templates(helm, values)["footprint-exporter/templates/NOTES.txt"]
    assert "networkPolicy.enabled is false: any pod of the cluster can reach port 9835" in notes


def pod_labels(ds: Obj) -> dict[str, str]:
    labels: dict[str, str] = ds["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return selector.items() <= labels.items()


def node_affinity_admits(affinity: Obj | None, node: Mapping[str, str]) -> bool:
    """Whether a pod's required node affinity admits a node with these labels (terms ORed,
    expressions ANDed), as the scheduler decides."""
    required = ((affinity or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution")
    if not required:
        return True

    def matches(expression: Obj) -> bool:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In":
            return key in node and node[key] in values
        if operator == "NotIn":
            return key not in node or node[key] not in values
        if operator == "Exists":
            return key in node
        assert operator == "DoesNotExist", operator
        return key not in node

    return any(all(matches(e) for e in term.get("matchExpressions", []))
               for term in required["nodeSelectorTerms"])


def runs_on(ds: Obj, node: Mapping[str, str]) -> bool:
    spec = ds["spec"]["template"]["spec"]
    return selects(spec.get("nodeSelector", {}), node) and node_affinity_admits(
        spec.get("affinity"), node)


NODES = {
    "cpu": {"kubernetes.io/os": "linux"},
    "gpu": {"kubernetes.io/os": "linux", GPU_LABEL: "true"},
    "gpu-label-false": {"kubernetes.io/os": "linux", GPU_LABEL: "false"},
    "windows": {"kubernetes.io/os": "windows"},
    **VIRTUAL_NODES,
}


def test_one_release_measures_cpu_and_gpu_pools_once(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["gpu"]
    cpu, gpu = daemonset(objects, "cpu"), daemonset(objects, "gpu")
    assert (cpu["metadata"]["name"], gpu["metadata"]["name"]) == (
        f"{RELEASE}-footprint-exporter", f"{RELEASE}-footprint-exporter-gpu")
    # Every Linux node runs exactly one exporter: the pools are disjoint and cover the nodes.
    for node, labels in NODES.items():
        expected = {"cpu": runs_on(cpu, labels), "gpu": runs_on(gpu, labels)}
        want = {"cpu": node in ("cpu", "gpu-label-false"), "gpu": node == "gpu"}  # no virtual
        assert expected == want, node
    assert pod_spec(objects, "gpu")["nodeSelector"] == {"kubernetes.io/os": "linux",
                                                        GPU_LABEL: "true"}
    assert cpu["spec"]["template"]["spec"]["affinity"] == {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [*VIRTUAL_NODE_EXCLUSION, {"key": GPU_LABEL, "operator": "NotIn",
                                                            "values": ["true"]}]}]}}}
    assert gpu["spec"]["template"]["spec"]["affinity"] == {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": VIRTUAL_NODE_EXCLUSION}]}}}
    # The GPU pods: the NVIDIA runtime, its environment, hostPID; the CPU pods: none of it.
    gpu_spec, cpu_spec = pod_spec(objects, "gpu"), pod_spec(objects, "cpu")
    assert gpu_spec["runtimeClassName"] == "nvidia" and "runtimeClassName" not in cpu_spec
    assert env(objects, "gpu")["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env(objects, "gpu")["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    assert env(objects, "gpu")["FOOTPRINT_GPU_INJECTION"] == "env"
    assert not {"NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES",
                "FOOTPRINT_GPU_INJECTION"} & set(env(objects, "cpu"))
    assert (gpu_spec["hostPID"], cpu_spec["hostPID"]) == (True, False)
    gpu_taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    assert any(tolerates(t, gpu_taint) for t in gpu_spec["tolerations"])
    # Distinct selectors: the GPU DaemonSet never claims the CPU pods.
    assert not selects(gpu["spec"]["selector"]["matchLabels"], pod_labels(cpu))
    assert (pod_labels(cpu)[POOL_LABEL], pod_labels(gpu)[POOL_LABEL]) == ("cpu", "gpu")
    # One Service, one monitor, one config, one policy for both pools.
    for kind in ("Service", "ServiceMonitor", "ConfigMap", "NetworkPolicy", "ServiceAccount"):
        one(objects, kind)
    service, monitor = one(objects, "Service"), one(objects, "ServiceMonitor")
    policy = one(objects, "NetworkPolicy")
    for ds in (cpu, gpu):
        assert selects(service["spec"]["selector"], pod_labels(ds))
        assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(ds))
        assert ds["spec"]["template"]["spec"]["volumes"][-2:] == cpu["spec"]["template"][
            "spec"]["volumes"][-2:]  # the same config ConfigMap and /tmp
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["podTargetLabels"] == [POOL_LABEL]


def test_a_gpu_only_cluster(rendered: dict[str, list[Obj]], helm: ModuleType) -> None:
    objects = rendered["gpu-only"]
    (only,) = of_kind(objects, "DaemonSet")
    assert only["metadata"]["name"] == f"{RELEASE}-footprint-exporter-gpu"
    spec = pod_spec(objects)
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}  # every Linux node
    assert "runtimeClassName" not in spec  # the NVIDIA runtime is the nodes' default
    assert env(objects)["NVIDIA_VISIBLE_DEVICES"] == "all"
    notes = render_templates(helm, load_values("gpu-only"))[
        "footprint-exporter/templates/NOTES.txt"]
    assert f"port-forward ds/{RELEASE}-footprint-exporter-gpu" in notes
    with pytest.raises(helm.HelmRenderError, match="both false"):
        render(helm, {"cpu": {"enabled": False}})
    # Without a selector the CPU DaemonSet could not leave the GPU nodes out.
    with pytest.raises(helm.HelmRenderError, match=r"gpu\.nodeSelector is empty"):
        render(helm, {"gpu": {"enabled": True, "nodeSelector": None}})


def test_the_gpu_exclusion_is_anded_into_the_users_affinity(helm: ModuleType) -> None:
    zone = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}
    spot = {"key": "example.com/spot", "operator": "DoesNotExist"}
    preferred = [{"weight": 1, "preference": {"matchExpressions": [spot]}}]
    values = {"gpu": {"enabled": True, "nodeSelector": {GPU_LABEL: "true", "pool": "gpu"}},
              "affinity": {"nodeAffinity": {
                  "requiredDuringSchedulingIgnoredDuringExecution": {
                      "nodeSelectorTerms": [{"matchExpressions": [zone]},
                                            {"matchExpressions": [spot]}]},
                  "preferredDuringSchedulingIgnoredDuringExecution": preferred}}}
    objects = render(helm, values)
    cpu, gpu = daemonset(objects, "cpu"), daemonset(objects, "gpu")
    affinity = pod_spec(objects, "cpu")["affinity"]["nodeAffinity"]
    assert affinity["preferredDuringSchedulingIgnoredDuringExecution"] == preferred
    assert len(affinity["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]) == 4  # 2 user terms x 2 keys of gpu.nodeSelector
    for zone_label in ({}, {"topology.kubernetes.io/zone": "a"}):
        for gpu_labels in ({}, {GPU_LABEL: "true"}, {"pool": "gpu"},
                           {GPU_LABEL: "true", "pool": "gpu"}):
            for spot_label in ({}, {"example.com/spot": "yes"}):
                for virtual in ({}, *VIRTUAL_NODES.values()):
                    node = {"kubernetes.io/os": "linux", **zone_label, **gpu_labels,
                            **spot_label, **virtual}
                    user = bool(zone_label) or not spot_label
                    is_gpu = len(gpu_labels) == 2
                    assert runs_on(cpu, node) is (user and not is_gpu and not virtual), node
                    assert runs_on(gpu, node) is (is_gpu and not virtual), node


def test_the_nvidia_block_moved_to_gpu(helm: ModuleType) -> None:
    """nvidia: (before the GPU pool) is refused, not silently ignored."""
    with helm.Chart.load(CHART) as chart:
        for old in ({"nvidia": {"enabled": True}}, {"gpu": {"visibleDevices": "all"}}):
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(old)
    notes = render_templates(helm, None)["footprint-exporter/templates/NOTES.txt"]
    assert "set gpu.enabled=true" in notes


def test_host_pid(rendered: dict[str, list[Obj]], helm: ModuleType) -> None:
    assert all(pod_spec(rendered[c])["hostPID"] is (c == "hostpid")
               for c in CASES if c != "gpu-only")
    assert pod_spec(rendered["gpu"], "gpu")["hostPID"] is True
    assert pod_spec(rendered["gpu-only"])["hostPID"] is False
    notes = render_templates(helm, {"gpu": {"enabled": True}})
    assert "Set gpu.hostPID=true where GPUs are shared" in notes[
        "footprint-exporter/templates/NOTES.txt"]


def test_recursive_read_only_only_where_the_cluster_has_it(helm: ModuleType) -> None:
    for version in KUBE_VERSIONS:
        objects = render(helm, {"gpu": {"enabled": True}}, version)
        has = tuple(map(int, version.split("."))) >= tuple(
            map(int, RECURSIVE_READ_ONLY_SINCE.split(".")))
        for pool in ("cpu", "gpu"):
            host = [m for m in mounts(objects, pool).values()
                    if m["mountPath"].startswith(("/host/sys/", "/host/proc"))]
            assert len(host) == 4
            for mount in host:
                assert mount["readOnly"] is True
                assert ("recursiveReadOnly" in mount) is has, (version, mount)


def test_the_values_shared_with_prometheus_node_exporter(
        rendered: dict[str, list[Obj]], helm: ModuleType) -> None:
    objects = rendered["parity"]
    ds = one(objects, "DaemonSet")
    spec, exporter = pod_spec(objects), container(objects)
    assert exporter["image"] == (
        f"registry.example.com/{IMAGE.removeprefix('ghcr.io/')}:{APP_VERSION}")
    assert spec["imagePullSecrets"] == [{"name": "mirror-credentials"}]
    assert ds["spec"]["revisionHistoryLimit"] == 3
    assert exporter["startupProbe"] == {
        "httpGet": {"path": "/healthz", "port": "metrics", "scheme": "HTTP"},
        "periodSeconds": 5, "failureThreshold": 24}
    assert volumes(objects)["ca"] == {"name": "ca", "configMap": {"name": "corporate-ca"}}
    assert mounts(objects)["ca"] == {"name": "ca", "mountPath": "/etc/ssl/corporate",
                                     "readOnly": True}
    monitor = one(objects, "PodMonitor")
    assert monitor["metadata"]["namespace"] == "observability"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert (monitor["spec"]["sampleLimit"], monitor["spec"]["podTargetLabels"]) == (
        50000, [POOL_LABEL])
    both = render(helm, {"global": {"imagePullSecrets": ["a", {"name": "b"}]},
                         "imagePullSecrets": [{"name": "b"}, "c"],
                         "gpu": {"enabled": True},
                         "extraVolumes": [{"name": "x", "emptyDir": {}}],
                         "extraVolumeMounts": [{"name": "x", "mountPath": "/x",
                                                "readOnly": True}],
                         "webConfig": {"enabled": True, "existingSecret": "w",
                                       "tcpSocketProbes": True},
                         "startupProbe": {"failureThreshold": 30}})
    for pool in ("cpu", "gpu"):
        assert pod_spec(both, pool)["imagePullSecrets"] == [
            {"name": "a"}, {"name": "b"}, {"name": "c"}]
        assert "x" in volumes(both, pool) and mounts(both, pool)["x"]["mountPath"] == "/x"
        assert container(both, pool)["startupProbe"] == {
            "tcpSocket": {"port": "metrics"}, "failureThreshold": 30}
    no_limit = one(render(helm, {"serviceMonitor": {"enabled": True, "sampleLimit": 0}}),
                   "ServiceMonitor")
    assert "sampleLimit" not in no_limit["spec"]


def test_web_config(rendered: dict[str, list[Obj]], helm: ModuleType) -> None:
    objects = rendered["webconfig-tls"]
    exporter = container(objects)
    assert "--web.config.file=/etc/footprint/web/web-config.yaml" in exporter["args"]
    assert volumes(objects)["web-config"]["secret"]["secretName"] == "footprint-web"
    assert mounts(objects)["web-config"] == {
        "name": "web-config", "mountPath": "/etc/footprint/web", "readOnly": True}
    # /healthz and /readyz are exempt from basic auth: the probes need only the scheme.
    assert exporter["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert exporter["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    (endpoint,) = one(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["serverName"] == "footprint-exporter"
    assert endpoint["basicAuth"]["username"] == {"name": "footprint-scrape", "key": "username"}
    with pytest.raises(helm.HelmError, match="existingSecret"):
        render(helm, {"webConfig": {"enabled": True}})
    # Client certificates apply to the whole listener: probes that carry none connect only.
    tcp = container(render(helm, {"webConfig": {
        "enabled": True, "existingSecret": "footprint-web", "tcpSocketProbes": True}}))
    for probe in ("livenessProbe", "readinessProbe"):
        assert tcp[probe]["tcpSocket"] == {"port": "metrics"} and "httpGet" not in tcp[probe]
    for case in CASES:
        if case != "webconfig-tls":
            assert not any(a.startswith("--web.config.file") for a in
                           container(rendered[case])["args"]), case


def test_live_intensity_token_from_an_existing_secret(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["live-intensity"]
    volume = volumes(objects)["carbon-credentials"]
    assert volume["secret"] == {"secretName": "electricitymaps", "defaultMode": 0o400,
                                "items": [{"key": "token", "path": "token"}]}
    assert mounts(objects)["carbon-credentials"] == {
        "name": "carbon-credentials", "mountPath": "/etc/footprint/secrets", "readOnly": True}
    carbon = config_file(objects)["carbon"]
    assert carbon["electricitymaps"]["token_file"] == "/etc/footprint/secrets/token"
    assert carbon["electricitymaps"]["refresh_seconds"] == 900
    assert not any(o["kind"] == "Secret" for o in objects)  # the chart never holds a token
    for case in CASES:
        if case != "live-intensity":
            assert "carbon-credentials" not in volumes(rendered[case]), case


def test_watttime_password_and_a_path_set_in_the_config(helm: ModuleType) -> None:
    watttime = {"carbon": {"existingSecret": "wt", "existingSecretKey": "password"},
                "config": {"carbon": {"provider": "watttime", "watttime": {
                    "region": "CAISO_NORTH", "username": "me"}}}}
    config = config_file(render(helm, watttime))
    assert config["carbon"]["watttime"]["password_file"] == "/etc/footprint/secrets/password"
    exporter_config.parse_file_config(config)
    own = {"carbon": {"existingSecret": "em"}, "config": {"carbon": {
        "provider": "electricitymaps", "zone": "FR",
        "electricitymaps": {"token_env": "EM_TOKEN"}}}}
    assert "token_file" not in config_file(render(helm, own))["carbon"]["electricitymaps"]


def test_pod_resources_can_be_left_out_or_moved(helm: ModuleType) -> None:
    objects = render(helm, {"podResources": {"enabled": False}})
    assert "pod-resources" not in volumes(objects) and "pod-resources" not in mounts(objects)
    moved = render(helm, {"podResources": {"hostPath": "/var/lib/k0s/kubelet/pod-resources"}})
    assert volumes(moved)["pod-resources"]["hostPath"]["path"] == (
        "/var/lib/k0s/kubelet/pod-resources")
    assert mounts(moved)["pod-resources"]["mountPath"] == POD_RESOURCES_DIR


def container_path_to_host(objects: list[Obj], path: str) -> str | None:
    """The node's path behind a path inside the exporter container, through its hostPath mounts
    (the longest mountPath that holds it), or None where no host mount holds it."""
    host = {name: v["hostPath"]["path"] for name, v in volumes(objects).items()
            if "hostPath" in v}
    best: tuple[str, str] | None = None
    for mount in mounts(objects).values():
        where = mount["mountPath"]
        holds = mount["name"] in host and (path == where or path.startswith(where + "/"))
        if holds and (best is None or len(where) > len(best[0])):
            best = (where, host[mount["name"]])
    if best is None:
        return None
    return best[1] + path[len(best[0]):]


def test_host_mounts_are_no_wider_than_the_exporter_reads(
        rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["default"]
    assert {v["hostPath"]["path"]: v["hostPath"]["type"] for v in volumes(objects).values()
            if "hostPath" in v} == {path: "Directory" for path in HOST_DIRECTORIES}
    args = container(objects)["args"]
    assert "--path.sysfs=/host/sys" in args and "--path.procfs=/host/proc" in args
    reads = {  # what the exporter reads, under --path.sysfs and --path.procfs
        "/host/sys/class/powercap": "/sys/class/powercap",  # rapl.py lists it
        "/host/sys/fs/cgroup/kubepods.slice/cpu.stat": "/sys/fs/cgroup/kubepods.slice/cpu.stat",
        "/host/sys/fs/cgroup/cpu,cpuacct/kubepods/cpuacct.usage":
            "/sys/fs/cgroup/cpu,cpuacct/kubepods/cpuacct.usage",
        "/host/proc/stat": "/proc/stat", "/host/proc/meminfo": "/proc/meminfo",
        "/host/proc/cpuinfo": "/proc/cpuinfo", "/host/proc/4242/cgroup": "/proc/4242/cgroup",
    }
    for inside, on_node in reads.items():
        assert container_path_to_host(objects, inside) == on_node, inside
    # Each /sys/class/powercap entry is a relative link into /sys/devices/virtual/powercap;
    # resolved inside the container, it must land on the same file of the node.
    for link in ("../../devices/virtual/powercap/intel-rapl/intel-rapl:0",
                 "../../devices/virtual/powercap/intel-rapl/intel-rapl:0/intel-rapl:0:0",
                 "../../devices/virtual/powercap/intel-rapl-mmio/intel-rapl-mmio:0"):
        inside = posixpath.normpath(f"/host/sys/class/powercap/{link}/energy_uj")
        on_node = posixpath.normpath(f"/sys/class/powercap/{link}/energy_uj")
        assert container_path_to_host(objects, inside) == on_node, link
    for unread in ("/host/sys/firmware/acpi/tables", "/host/sys/kernel/debug",
                   "/host/sys/kernel/security", "/host/sys/fs/bpf", "/host/sys/module",
                   "/host/sys/devices/pci0000:00", "/host/sys/devices/system/cpu",
                   "/host/sys/bus/pci"):
        assert container_path_to_host(objects, unread) is None, unread
    for case in CASES:
        assert "/sys" not in {v["hostPath"]["path"] for v in volumes(rendered[case]).values()
                              if "hostPath" in v}, case


def mebibytes(quantity: str) -> float:
    """A memory quantity (Ki, Mi, Gi or plain bytes) in MiB."""
    units = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity.removesuffix(suffix)) * factor
    return float(quantity) / 2**20


def test_memory_fits_the_measured_rss_and_hostile_clients(
        rendered: dict[str, list[Obj]]) -> None:
    for case in CASES:
        resources = container(rendered[case])["resources"]
        request = mebibytes(resources["requests"]["memory"])
        limit = mebibytes(resources["limits"]["memory"])
        measured = MEASURED_RSS_MB * 1e6 / 2**20
        worst = (MEASURED_RSS_MB + HOSTILE_CLIENTS_MB) * 1e6 / 2**20
        assert (request, limit) == (128, 256), case
        assert request >= measured  # the steady state at 250 containers is requested
        assert limit >= worst * 1.5  # headroom above the hostile-client worst case
        assert "cpu" not in resources["limits"]  # throttling would delay ticks


def test_liveness_leaves_healthz_time_to_fail(rendered: dict[str, list[Obj]]) -> None:
    for case in CASES:
        exporter = container(rendered[case])
        live = exporter["livenessProbe"]
        assert live["httpGet"]["path"] == "/healthz", case
        # /healthz fails after max(3 x interval, 30 s) without a tick; the kubelet then waits
        # another failureThreshold x periodSeconds, so one slow tick restarts nothing.
        assert live["failureThreshold"] * live["periodSeconds"] >= HEALTHZ_STALE_MIN_S, case
        assert live["timeoutSeconds"] < live["periodSeconds"], case


def test_config_changes_restart_the_pods(rendered: dict[str, list[Obj]]) -> None:
    def checksum(case: str) -> str:
        annotations = one(rendered[case], "DaemonSet")["spec"]["template"]["metadata"][
            "annotations"]
        return str(annotations["checksum/config"])

    assert checksum("default") != checksum("config") != checksum("live-intensity")


# ---------------------------------------------------------------------------------------------
# How the GPU exporter gets its GPUs (gpu.injection), and DRA attribution (gpu.dra)


def gpu_values(injection: str, dra: bool = True, **gpu: Any) -> Obj:
    return {"gpu": {"enabled": True, "injection": injection, "dra": {"enabled": dra}, **gpu}}


def check_injection(objects: list[Obj], injection: str) -> None:
    """The GPU pods ask for every GPU the way gpu.injection says, and say which way in
    FOOTPRINT_GPU_INJECTION; the CPU pods ask for none."""
    gpu_env = env(objects, "gpu")
    assert gpu_env["FOOTPRINT_GPU_INJECTION"] == injection
    assert gpu_env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    names = [e["name"] for e in container(objects, "gpu")["env"]]
    assert len(names) == len(set(names)), names
    annotations = daemonset(objects, "gpu")["spec"]["template"]["metadata"]["annotations"]
    device_list = volumes(objects, "gpu").get("nvidia-device-list")
    device_list_mount = mounts(objects, "gpu").get("nvidia-device-list")
    if injection == "env":
        assert gpu_env["NVIDIA_VISIBLE_DEVICES"] == "all"
    elif injection == "volume-mounts":
        assert gpu_env["NVIDIA_VISIBLE_DEVICES"] == DEVICE_LIST_DIR
        # As NVIDIA's device plugin with deviceListStrategy volume-mounts: /dev/null, mounted
        # where its name under the directory (`all`) is the device list.
        assert device_list == {"name": "nvidia-device-list",
                               "hostPath": {"path": "/dev/null", "type": "CharDevice"}}
        assert device_list_mount == {"name": "nvidia-device-list",
                                     "mountPath": f"{DEVICE_LIST_DIR}/all", "readOnly": True}
    else:
        assert injection == "cdi"
        assert "NVIDIA_VISIBLE_DEVICES" not in gpu_env
        assert annotations[CDI_ANNOTATION] == "nvidia.com/gpu=all"
    assert (CDI_ANNOTATION in annotations) is (injection == "cdi")
    assert (device_list is not None) is (device_list_mount is not None) is (
        injection == "volume-mounts")
    if len(of_kind(objects, "DaemonSet")) == 2:
        cpu_env = env(objects, "cpu")
        assert not {"NVIDIA_VISIBLE_DEVICES", "FOOTPRINT_GPU_INJECTION"} & set(cpu_env)
        cpu_annotations = daemonset(objects, "cpu")["spec"]["template"]["metadata"][
            "annotations"]
        assert CDI_ANNOTATION not in cpu_annotations
        assert "nvidia-device-list" not in volumes(objects, "cpu")


def check_dra(objects: list[Obj], dra: bool) -> None:
    """The resourceslices rule, a rule of its own, and the config's DRA drivers, together."""
    rules = one(objects, "ClusterRole")["rules"]
    assert rules == RBAC_RULES + ([DRA_RULE] if dra else [])
    assert "resourceclaims" not in json.dumps(rules)
    assert config_file(objects)["kubernetes"]["dra_drivers"] == (DRA_DRIVERS if dra else [])


@pytest.mark.parametrize("dra", [True, False], ids=["dra", "no-dra"])
@pytest.mark.parametrize("injection", INJECTIONS)
def test_the_gpu_daemonset_validates_for_each_injection_with_and_without_dra(
        helm: ModuleType, kubernetes_validate: ModuleType, injection: str, dra: bool) -> None:
    """Rendered as each minor that has resource.k8s.io/v1, strictly validated: the GPU
    DaemonSet, the ClusterRole and the ConfigMap."""
    for version in DRA_KUBE_VERSIONS:
        objects = render(helm, gpu_values(injection, dra), version)
        check_injection(objects, injection)
        check_dra(objects, dra)
        for obj in (daemonset(objects, "gpu"), one(objects, "ClusterRole"),
                    one(objects, "ConfigMap")):
            try:
                assert kubernetes_validate.validate(obj, version, strict=True) == version
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(map(str, exc.path))
                pytest.fail(f"{injection}, dra={dra}: {obj['kind']}/{obj['metadata']['name']} "
                            f"on {version}: {where}: {exc.message}")


def test_the_ci_values_of_each_injection(rendered: dict[str, list[Obj]]) -> None:
    for case, injection, dra in (("gpu", "env", True), ("gpu-only", "env", True),
                                 ("gpu-cdi", "cdi", True),
                                 ("gpu-volume-mounts", "volume-mounts", False)):
        assert load_values(case)["gpu"].get("injection", "env") == injection  # type: ignore[index]
        check_injection(rendered[case], injection)
        check_dra(rendered[case], dra)


def test_dra_needs_the_gpu_pool_and_gpu_dra(helm: ModuleType) -> None:
    """The resourceslices rule and the DRA drivers exactly with gpu.enabled and
    gpu.dra.enabled; the drivers are gpu.dra.drivers, which the exporter accepts."""
    for gpu_enabled in (False, True):
        for dra in (False, True):
            objects = render(helm, {"gpu": {"enabled": gpu_enabled, "dra": {"enabled": dra}}})
            check_dra(objects, gpu_enabled and dra)
    drivers = ["gpu.nvidia.com", "gpu.example.com"]
    objects = render(helm, {"gpu": {"enabled": True, "dra": {"drivers": drivers}}})
    config = config_file(objects)
    assert config["kubernetes"]["dra_drivers"] == drivers
    assert list(exporter_config.parse_file_config(config).kubernetes.dra_drivers) == drivers
    # The chart's config keys stay its own, beside the user's kubernetes settings.
    objects = render(helm, {"gpu": {"enabled": True},
                            "config": {"kubernetes": {"grace_period_seconds": 60}}})
    assert config_file(objects)["kubernetes"] == {
        "grace_period_seconds": 60, "dra_drivers": DRA_DRIVERS,
        "pod_resources_socket": f"{POD_RESOURCES_DIR}/kubelet.sock",
        "chargeback_labels": ["team"]}
    assert not of_kind(render(helm, {"gpu": {"enabled": True}, "rbac": {"create": False}}),
                       "ClusterRole")


def test_gpu_env_may_replace_the_visible_devices_only_with_env(helm: ModuleType) -> None:
    uuids = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "GPU-0,GPU-1"},
             {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "utility"}]
    objects = render(helm, gpu_values("env", env=uuids))
    names = [e["name"] for e in container(objects, "gpu")["env"]]
    assert names.count("NVIDIA_VISIBLE_DEVICES") == 1  # the chart's `all` gives way
    assert env(objects, "gpu")["NVIDIA_VISIBLE_DEVICES"] == "GPU-0,GPU-1"
    for injection in ("volume-mounts", "cdi"):
        with pytest.raises(helm.HelmRenderError,
                           match=rf"gpu\.env sets NVIDIA_VISIBLE_DEVICES, which "
                                 rf"gpu\.injection={injection} does not take from there"):
            render(helm, gpu_values(injection, env=uuids))
    # gpu.env without NVIDIA_VISIBLE_DEVICES goes with every injection.
    extra = [{"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "utility"},
             {"name": "NVIDIA_MIG_MONITOR_DEVICES", "value": "all"}]
    for injection in INJECTIONS:
        assert env(render(helm, gpu_values(injection, env=extra)), "gpu")[
            "NVIDIA_MIG_MONITOR_DEVICES"] == "all"


def test_an_unknown_injection_fails_even_without_the_schema(
        helm: ModuleType, tmp_path: Path) -> None:
    """The schema's enum refuses it; the template refuses it too, for installs that skip the
    schema (helm --skip-schema-validation)."""
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"gpu": {"injection": "volume-mount"}})
    unchecked = tmp_path / CHART.name
    shutil.copytree(CHART, unchecked, ignore=shutil.ignore_patterns("values.schema.json"))
    with helm.Chart.load(unchecked) as chart:
        for bad, shown in (("volume-mount", "volume-mount"), ("ENV", "ENV"), ("", ""),
                           (None, "")):  # null removes the key: the schema has nothing to check
            with pytest.raises(helm.HelmRenderError,
                               match=rf'gpu\.injection is "{shown}": choose env, '
                                     "volume-mounts or cdi"):
                chart.render({"gpu": {"enabled": True, "injection": bad}}, name=RELEASE,
                             namespace=NAMESPACE, is_install=True)
    with pytest.raises(helm.HelmRenderError, match=r'gpu\.injection is "": choose'):
        render(helm, {"gpu": {"enabled": True, "injection": None}})


# ---------------------------------------------------------------------------------------------
# Scheduling: virtual nodes, eviction, priority, VerticalPodAutoscaler


def required_terms(objects: list[Obj], pool: str) -> list[list[Obj]]:
    """The matchExpressions of each required node-affinity term of a pool's pods."""
    affinity = pod_spec(objects, pool).get("affinity") or {}
    required = (affinity.get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution") or {"nodeSelectorTerms": []}
    return [term.get("matchExpressions", []) for term in required["nodeSelectorTerms"]]


def test_virtual_nodes_are_left_out_of_both_pools(
        rendered: dict[str, list[Obj]], helm: ModuleType) -> None:
    """virtualNodeExclusion is ANDed into every required term of both DaemonSets, beside the
    GPU pool's exclusion and the user's own terms; [] turns it off."""
    objects = rendered["scheduling"]
    zone = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-a"]}
    own = {"key": "example.com/virtual-node", "operator": "DoesNotExist"}
    gpu_out = {"key": GPU_LABEL, "operator": "NotIn", "values": ["true"]}
    assert required_terms(objects, "cpu") == [[zone, *VIRTUAL_NODE_EXCLUSION, own, gpu_out]]
    assert required_terms(objects, "gpu") == [[zone, *VIRTUAL_NODE_EXCLUSION, own]]
    in_zone = {"kubernetes.io/os": "linux", "topology.kubernetes.io/zone": "zone-a"}
    for pool, node in (("cpu", in_zone), ("gpu", {**in_zone, GPU_LABEL: "true"})):
        ds = daemonset(objects, pool)
        assert runs_on(ds, node)
        assert not runs_on(ds, {**node, "example.com/virtual-node": "yes"})
        assert not any(runs_on(ds, {**node, **v}) for v in VIRTUAL_NODES.values())
    # Turned off: no affinity at all without a GPU pool, only the pools' split with one.
    off = render(helm, {"virtualNodeExclusion": []})
    assert "affinity" not in pod_spec(off)
    off = render(helm, {"virtualNodeExclusion": [], "gpu": {"enabled": True}})
    assert required_terms(off, "cpu") == [[gpu_out]]
    assert "affinity" not in pod_spec(off, "gpu")
    # A preferred affinity of the user's stays as it is, beside the required exclusion.
    preferred = [{"weight": 1, "preference": {"matchExpressions": [zone]}}]
    kept = render(helm, {"gpu": {"enabled": True, "affinity": {"nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": preferred}}}})
    assert pod_spec(kept, "gpu")["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"] == preferred
    assert required_terms(kept, "gpu") == [VIRTUAL_NODE_EXCLUSION]
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"virtualNodeExclusion": [{"key": "type", "operator": "Nope"}]})


def test_the_pods_are_safe_to_evict_unless_told_otherwise(helm: ModuleType) -> None:
    for pool in ("cpu", "gpu"):
        objects = render(helm, {"gpu": {"enabled": True}, "podAnnotations": {"team": "green"}})
        annotations = daemonset(objects, pool)["spec"]["template"]["metadata"]["annotations"]
        assert annotations.items() >= {**SAFE_TO_EVICT, "team": "green"}.items()  # merged
    dropped = render(helm, {"podAnnotations": {next(iter(SAFE_TO_EVICT)): None}})
    assert not set(SAFE_TO_EVICT) & set(daemonset(dropped)["spec"]["template"]["metadata"][
        "annotations"])


def quota(objects: list[Obj]) -> Obj | None:
    (found,) = of_kind(objects, "ResourceQuota") or [None]
    return found


def test_the_priority_class_and_the_quota_that_admits_it(
        rendered: dict[str, list[Obj]], helm: ModuleType, kubernetes_validate: ModuleType
) -> None:
    """system-cluster-critical by default, with a ResourceQuota scoped to it in the release's
    namespace (GKE admits critical pods only where one matches); none for other classes."""
    for case, pool in CASE_POOLS:
        expected = "system-node-critical" if case == "scheduling" else PRIORITY_CLASS
        assert pod_spec(rendered[case], pool)["priorityClassName"] == expected, case
    for priority_class in ("system-cluster-critical", "system-node-critical"):
        objects = render(helm, {"priorityClassName": priority_class})
        found = quota(objects)
        assert found is not None
        assert found["metadata"]["namespace"] == NAMESPACE
        assert found["spec"] == {
            "hard": {"pods": "1G"},
            "scopeSelector": {"matchExpressions": [
                {"scopeName": "PriorityClass", "operator": "In", "values": [priority_class]}]}}
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(found, version, strict=True)
    for values in ({"priorityClassName": ""}, {"priorityClassName": "exporters"},
                   {"priorityClassQuota": {"enabled": False}}):
        objects = render(helm, values)
        assert quota(objects) is None, values
        assert pod_spec(objects).get("priorityClassName") == (
            values.get("priorityClassName", PRIORITY_CLASS) or None)
    assert quota(render(helm, {"priorityClassQuota": {"pods": 5000}}))["spec"]["hard"] == {
        "pods": "5000"}


QUANTITY = {"anyOf": [{"type": "integer"}, {
    "type": "string",
    "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
               r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"}]}
VPA_SCHEMA: Obj = {
    "type": "object", "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "autoscaling.k8s.io/v1"},
        "kind": {"const": "VerticalPodAutoscaler"},
        "metadata": {"type": "object", "additionalProperties": False,
                     "required": ["name", "namespace"],
                     "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                                    "labels": {"type": "object",
                                               "additionalProperties": {"type": "string"}}}},
        "spec": {"type": "object", "additionalProperties": False, "required": ["targetRef"],
                 "properties": {
            "targetRef": {"type": "object", "additionalProperties": False,
                          "required": ["kind", "name"],
                          "properties": {"apiVersion": {"type": "string"},
                                         "kind": {"type": "string"},
                                         "name": {"type": "string"}}},
            "updatePolicy": {"type": "object", "additionalProperties": False, "properties": {
                "updateMode": {"enum": ["Off", "Initial", "Recreate", "InPlaceOrRecreate",
                                        "InPlace", "Auto"]}}},
            "resourcePolicy": {"type": "object", "additionalProperties": False, "properties": {
                "containerPolicies": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "containerName": {"type": "string"},
                        "controlledResources": {"type": "array", "items": {"type": "string"}},
                        "controlledValues": {"enum": ["RequestsAndLimits", "RequestsOnly"]},
                        "minAllowed": {"type": "object", "additionalProperties": QUANTITY},
                        "maxAllowed": {"type": "object", "additionalProperties": QUANTITY},
                        "mode": {"enum": ["Auto", "Off"]}}}}}}}}}}
"""The VerticalPodAutoscaler CRD's schema (kubernetes/autoscaler,
vertical-pod-autoscaler/deploy/vpa-v1-crd-gen.yaml, autoscaling.k8s.io/v1), cut to the fields
the chart may render and made strict: kubernetes-validate knows no CRDs."""


def check_vpa(vpa: Obj, ds: Obj) -> None:
    """A VerticalPodAutoscaler, structurally, and that it sizes the exporter of ds."""
    jsonschema = require_module("jsonschema", "jsonschema (with kubernetes-validate)")
    jsonschema.validate(vpa, VPA_SCHEMA)
    assert vpa["metadata"]["name"] == ds["metadata"]["name"]
    assert vpa["metadata"]["namespace"] == ds["metadata"]["namespace"]
    assert vpa["spec"]["targetRef"] == {"apiVersion": "apps/v1", "kind": "DaemonSet",
                                        "name": ds["metadata"]["name"]}
    (policy,) = vpa["spec"]["resourcePolicy"]["containerPolicies"]
    (exporter,) = ds["spec"]["template"]["spec"]["containers"]
    assert policy["containerName"] == exporter["name"]
    assert set(policy.get("controlledResources", ["cpu", "memory"])) <= {"cpu", "memory"}
    for bound in ("minAllowed", "maxAllowed"):
        assert set(policy.get(bound, {})) <= set(policy.get("controlledResources",
                                                            ["cpu", "memory"]))
    for resource in set(policy.get("minAllowed", {})) & set(policy.get("maxAllowed", {})):
        low, high = policy["minAllowed"][resource], policy["maxAllowed"][resource]
        parse = mebibytes if resource == "memory" else millicores
        assert parse(str(low)) <= parse(str(high)), (resource, low, high)


def millicores(quantity: str) -> float:
    return float(quantity[:-1]) if quantity.endswith("m") else float(quantity) * 1000


def test_a_vertical_pod_autoscaler_per_daemonset(
        rendered: dict[str, list[Obj]], helm: ModuleType) -> None:
    assert all(not of_kind(rendered[case], "VerticalPodAutoscaler")
               for case in CASES if case != "scheduling")
    objects = rendered["scheduling"]
    vpas = {vpa["spec"]["targetRef"]["name"]: vpa
            for vpa in of_kind(objects, "VerticalPodAutoscaler")}
    assert len(vpas) == 2
    for pool in ("cpu", "gpu"):
        ds = daemonset(objects, pool)
        vpa = vpas[ds["metadata"]["name"]]
        check_vpa(vpa, ds)
        assert vpa["metadata"]["labels"][POOL_LABEL] == pool
        assert vpa["spec"]["updatePolicy"] == {"updateMode": "InPlaceOrRecreate"}
        assert vpa["spec"]["resourcePolicy"]["containerPolicies"][0] == {
            "containerName": "footprint-exporter", "controlledResources": ["cpu", "memory"],
            "controlledValues": "RequestsOnly",
            "minAllowed": {"cpu": "20m", "memory": "96Mi"},
            "maxAllowed": {"cpu": "500m", "memory": "256Mi"}}
    # The defaults: Recreate, requests only (the memory limit stays the worst case's bound).
    only = render(helm, {"verticalPodAutoscaler": {"enabled": True},
                         "cpu": {"enabled": False}, "gpu": {"enabled": True}})
    (vpa,) = of_kind(only, "VerticalPodAutoscaler")
    check_vpa(vpa, daemonset(only, "gpu"))
    assert vpa["spec"]["updatePolicy"] == {"updateMode": "Recreate"}
    assert vpa["spec"]["resourcePolicy"]["containerPolicies"][0] == {
        "containerName": "footprint-exporter", "controlledResources": ["cpu", "memory"],
        "controlledValues": "RequestsOnly"}
    with helm.Chart.load(CHART) as chart:
        for bad in ({"updateMode": "Sometimes"}, {"controlledResources": ["nvidia.com/gpu"]},
                    {"minAllowed": {"ephemeral-storage": "1Gi"}}):
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema({"verticalPodAutoscaler": bad})
    # The strict schema is a real check: a misspelt field fails it.
    jsonschema = require_module("jsonschema", "jsonschema (with kubernetes-validate)")
    broken = json.loads(json.dumps(vpa))
    broken["spec"]["updatePolicy"]["updatemode"] = "Off"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, VPA_SCHEMA)


# ---------------------------------------------------------------------------------------------
# values.yaml and values.schema.json


def leaf_paths(data: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of a values tree's leaves (an empty map or list is a leaf)."""
    if isinstance(data, dict) and data:
        for key, value in data.items():
            yield from leaf_paths(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix


def schema_node(schema: Obj, path: str) -> Obj | None:
    """The schema of a dotted path, or None where the schema does not describe it."""
    node = schema
    for key in path.split("."):
        properties = node.get("properties", {})
        if key in properties:
            node = properties[key]
        elif node.get("type") == "object" and "properties" not in node:
            return node  # a free-form object (resources, securityContext, ...): typed as a whole
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
    return node


def test_the_schema_covers_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(values)
    missing = [p for p in leaf_paths(values) if schema_node(schema, p) is None]
    assert not missing
    for key, node in schema["properties"].items():
        assert node.get("description"), key


def config_fields(cls: Any, prefix: str = "") -> set[str]:
    out = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if f.metadata.get("sections"):  # each energy source's own section, by its flag
            for name, section in SECTIONS.items():
                out |= config_fields(section, f"{prefix}{name}.")
        elif dataclasses.is_dataclass(hints[f.name]):
            out |= config_fields(hints[f.name], f"{path}.")
        else:
            out.add(path)
    return out


def schema_fields(node: Obj, prefix: str = "") -> set[str]:
    out = set()
    for key, child in node["properties"].items():
        if "properties" in child and key not in ("idle_watts",):
            out |= schema_fields(child, f"{prefix}{key}.")
        else:
            out.add(f"{prefix}{key}")
    return out


def test_the_config_schema_matches_the_exporter_settings() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    config = schema["properties"]["config"]
    # The chart sets the pod-resources socket (podResources) and the DRA drivers (gpu.dra)
    # itself, so values may not.
    assert schema_fields(config) == config_fields(exporter_config.FileConfig) - CHART_SETS


CHART_SETS = {"kubernetes.pod_resources_socket", "kubernetes.dra_drivers"}
"""Config keys the chart writes itself (podResources, gpu.dra), so `config:` values may not set
them."""


def _types(node: Obj) -> set[str]:
    given = node.get("type")
    return set(given) if isinstance(given, list) else {given}


def _bounds_disagree(node: Obj, minimum: object, maximum: object, path: str) -> Iterator[str]:
    for name, want in (("minimum", minimum), ("maximum", maximum)):
        if node.get(name) != want:
            yield f"{path}: {name} {node.get(name)!r} in the schema, {want!r} in exporter.config"


def _rules_disagree(node: Obj, path: str) -> Iterator[str]:
    from exporter import models

    items = node.get("items", {})
    if _types(node) != {"array"} or items.get("additionalProperties") is not False:
        yield f"{path}: expected an array of closed objects, got {node}"
        return
    properties = items.get("properties", {})
    if list(properties) != list(models.RULE_FIELDS):
        yield f"{path}: rule keys {list(properties)}, parse_rules takes {models.RULE_FIELDS}"
    if items.get("required") != list(models.REQUIRED_FIELDS):
        yield f"{path}: required {items.get('required')}, parse_rules needs " \
              f"{list(models.REQUIRED_FIELDS)}"
    for name, choices in (("source", models.SOURCES), ("phase", models.PHASES)):
        if properties.get(name, {}).get("enum") != list(choices):
            yield f"{path}.{name}: enum {properties.get(name, {}).get('enum')}, not {choices}"


def _overrides_disagree(node: Obj, path: str) -> Iterator[str]:
    items = node.get("items", {})
    properties = items.get("properties", {})
    if _types(node) != {"array"} or items.get("additionalProperties") is not False:
        yield f"{path}: expected an array of closed objects, got {node}"
    if list(properties) != list(exporter_config.OVERRIDE_KEYS):
        yield f"{path}: keys {list(properties)}, not {exporter_config.OVERRIDE_KEYS}"
    if items.get("required") != ["node_labels"]:
        yield f"{path}: required {items.get('required')}, not ['node_labels']"
    grams = {f.name: f.metadata for f in dataclasses.fields(exporter_config.EmbodiedSettings)}
    for name in ("server_grams", "gpu_grams"):
        yield from _bounds_disagree(properties.get(name, {}), grams[name]["min"],
                                    grams[name]["max"], f"{path}[].{name}")


def config_disagreements(cls: Any, node: Obj, prefix: str = "") -> Iterator[str]:
    """Where the JSON schema `node` and the settings dataclass `cls` differ: keys at every
    level, types, nullability, enums, minimum and maximum, a closed object for each section."""
    where = prefix.rstrip(".") or "config"
    if node.get("additionalProperties") is not False:
        yield f"{where}: the schema lets unknown keys through"
    hints = typing.get_type_hints(cls)
    fields: dict[str, tuple[Any, Any]] = {}  # name: (type hint, setting metadata)
    for f in dataclasses.fields(cls):
        if f.metadata.get("sections"):  # each energy source's own section, by its flag
            fields |= {flag: (section, {}) for flag, section in SECTIONS.items()}
        elif prefix + f.name not in CHART_SETS:
            fields[f.name] = (hints[f.name], f.metadata)
    properties = node.get("properties", {})
    for name in fields.keys() - properties.keys():
        yield f"{prefix}{name}: a setting the schema lacks"
    for name in properties.keys() - fields.keys():
        chart_sets = prefix + name in CHART_SETS
        yield f"{prefix}{name}: " + ("set by the chart, so not a value" if chart_sets
                                     else "in the schema, not a setting")
    for name in fields.keys() & properties.keys():
        yield from _field_disagreements(*fields[name], properties[name], prefix + name)


def _field_disagreements(hint: Any, meta: Any, node: Obj, path: str) -> Iterator[str]:
    types = _types(node)
    args = typing.get_args(hint)
    if type(None) in args:
        (hint,) = (a for a in args if a is not type(None))
    # A section written as `carbon:` alone (null) means every default.
    nullable = type(None) in args or dataclasses.is_dataclass(hint)
    if ("null" in types) != nullable:
        yield f"{path}: null {'refused' if nullable else 'allowed'} by the schema"
    types.discard("null")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if types != {"object"}:
            yield f"{path}: type {types}, a section is an object"
        yield from config_disagreements(hint, node, f"{path}.")
        return
    if ("choices" in meta or "enum" in node) and node.get("enum") != list(
            meta.get("choices", ())):
        yield f"{path}: enum {node.get('enum')}, exporter.config has {meta.get('choices')}"
    if hint is float:
        if types != {"number"}:
            yield f"{path}: type {types}, not number"
        yield from _bounds_disagree(node, meta.get("min"), meta.get("max"), path)
    elif hint is str:
        if types != {"string"}:
            yield f"{path}: type {types}, not string"
    elif hint is bool:
        if types != {"boolean"}:
            yield f"{path}: type {types}, not boolean"
    elif origin is tuple and args == (str, Ellipsis):
        if types != {"array"} or node.get("items", {}).get("type") != "string":
            yield f"{path}: not an array of strings"
    elif origin is Mapping and args == (str, float):
        if types != {"object"}:
            yield f"{path}: type {types}, not object"
        if "keys" in meta:
            if node.get("additionalProperties") is not False:
                yield f"{path}: the schema lets keys other than {meta['keys']} through"
            if list(node.get("properties", {})) != list(meta["keys"]):
                yield f"{path}: keys {list(node.get('properties', {}))}, not {meta['keys']}"
            values = list(node.get("properties", {}).values())
        else:
            values = [node.get("additionalProperties") or {}]
        for value in values:
            if value.get("type") != "number":
                yield f"{path}: values typed {value.get('type')}, not number"
            yield from _bounds_disagree(value, meta.get("min"), meta.get("max"), f"{path}.*")
    elif args and args[0] is exporter_config.ModelRule:
        yield from _rules_disagree(node, path)
    elif path == "embodied.overrides":
        yield from _overrides_disagree(node, path)
    else:
        yield f"{path}: {hint!r} has no check here: add one"


def test_the_config_schema_agrees_with_the_validator() -> None:
    """Same keys at every level, types, enums and bounds in the chart's schema as in the
    dataclasses exporter.config validates with (scripts/gen_values_schema.py writes it)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert not list(config_disagreements(exporter_config.FileConfig,
                                         schema["properties"]["config"]))


def _bounded_values(node: Obj, path: str) -> Iterator[tuple[str, Obj]]:
    """(dotted path, schema) of each number and each choice under a config schema node."""
    if "properties" in node and "object" in _types(node):
        for key, child in node["properties"].items():
            yield from _bounded_values(child, f"{path}.{key}" if path else key)
    elif isinstance(node.get("additionalProperties"), dict):
        yield from _bounded_values(node["additionalProperties"], f"{path}.SOMEKEY")
    elif "enum" in node or "number" in _types(node):
        yield path, node


def _document(path: str, value: object) -> Obj:
    doc: Obj = {}
    *parents, last = path.split(".")
    inner = doc
    for key in parents:
        inner = inner.setdefault(key, {})
    inner[last] = value
    return doc


def _config_error(path: str, value: object) -> str:
    try:
        exporter_config.parse_file_config(_document(path, value))
    except exporter_config.ConfigError as exc:
        return str(exc)
    return ""


def test_the_validator_enforces_the_bounds_and_choices_the_schema_states() -> None:
    """What Helm lets through, the exporter takes, and what it refuses, the exporter refuses
    too, with the same bounds in its message."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    checked = 0
    for path, node in _bounded_values(schema["properties"]["config"], ""):
        checked += 1
        if "enum" in node:
            for ok in node["enum"]:
                assert not _config_error(path, ok).startswith(f"{path}:"), (path, ok)
            assert _config_error(path, "not-a-choice") == (
                f"{path}: expected one of {', '.join(node['enum'])}, got 'not-a-choice'")
            continue
        lo, hi = node.get("minimum"), node.get("maximum")
        parts = ([f">= {lo:g}"] if lo is not None else []) + (
            [f"<= {hi:g}"] if hi is not None else [])
        expected = f"{path}: expected a number " + " and ".join(parts)
        for edge, outside in ((lo, -math.inf), (hi, math.inf)):
            if edge is None:
                continue
            assert not _config_error(path, edge).startswith(expected), (path, edge)
            beyond = math.nextafter(float(edge), outside)
            assert _config_error(path, beyond) == f"{expected}, got {beyond!r}", path
        assert _config_error(path, "x") == f"{expected}, got 'x'", path
    assert checked >= 25


def test_the_config_schema_is_generated() -> None:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_values_schema.py"),
                             "--check"], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_the_schema_rejects_unknown_and_mistyped_values(helm: ModuleType) -> None:
    with helm.Chart.load(CHART) as chart:
        for bad in ({"hostPid": True}, {"config": {"carbon": {"provder": "static"}}},
                    {"config": {"kubernetes": {"pod_resources_socket": "/x.sock"}}},
                    {"config": {"kubernetes": {"dra_drivers": ["gpu.nvidia.com"]}}},
                    {"gpu": {"injection": "envvar"}}, {"gpu": {"injection": "ENV"}},
                    {"gpu": {"dra": {"drivers": []}}}, {"gpu": {"dra": {"drivers": [""]}}},
                    {"gpu": {"dra": {"enabled": "yes"}}}, {"gpu": {"dra": {"driver": []}}},
                    {"collectorInterval": "5s"}, {"prometheusRule": {"budgets": {"m": "lots"}}},
                    {"serviceMonitor": {"interval": "30 seconds"}}):
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(bad)
        for case in CASES:
            chart.validate_schema(load_values(case))


KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/]+):")


def test_every_value_has_a_comment() -> None:
    """Every leaf of values.yaml has a comment right above it or above one of its parents."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the keys enclosing a line
    undocumented = []
    for i, line in enumerate(lines):
        match = KEY_LINE.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        commented = i > 0 and lines[i - 1].strip().startswith("#")
        documented = commented or any(d for _, d in stack)
        next_lines = [n for n in lines[i + 1:] if n.strip() and not n.strip().startswith("#")]
        is_leaf = not next_lines or len(next_lines[0]) - len(next_lines[0].lstrip()) <= indent
        if is_leaf and not documented:
            undocumented.append(line.strip())
        stack.append((indent, documented))
    assert not undocumented


# ---------------------------------------------------------------------------------------------
# Generated files


def test_the_generated_files_are_in_sync(tmp_path: Path) -> None:
    require_module("helm_python", "helm-python-sdk")
    result = subprocess.run([sys.executable, str(GENERATOR), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    generated = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert generated
    stale = [str(p) for p in generated if (REPO / p).read_bytes() != (tmp_path / p).read_bytes()]
    assert not stale, f"run scripts/gen_manifests.py: {stale} differ"
    for owned in (Path("manifests"), CHART.relative_to(REPO) / "files"):
        extra = {p.relative_to(REPO) for p in (REPO / owned).rglob("*") if p.is_file()}
        assert extra <= generated, f"not generated: {extra - generated}"


def test_the_chart_files_are_copies_of_the_sources() -> None:
    files = CHART / "files"
    assert (files / "footprint.rules.yaml").read_bytes() == RULES.read_bytes()
    copies = sorted((files / "dashboards").glob("*.json"))
    assert [c.name for c in copies] == [d.name for d in DASHBOARDS]
    for copy, source in zip(copies, DASHBOARDS, strict=True):
        assert copy.read_bytes() == source.read_bytes(), copy.name


def test_the_manifests_are_the_default_render(
        kubernetes_validate: ModuleType, helm: ModuleType) -> None:
    header = "# Generated by scripts/gen_manifests.py from charts/footprint-exporter; do not edit."
    for path in sorted(MANIFESTS.glob("*.yaml")):
        assert path.read_text().startswith(header + "\n"), path
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == NAMESPACE
    assert all((MANIFESTS / r).is_file() for r in kustomization["resources"])
    objects = [o for o in yaml.safe_load_all((MANIFESTS / "footprint-exporter.yaml").read_text())
               if o]
    assert {o["kind"] for o in objects} == {o["kind"] for o in render(helm, None)}
    for obj in objects:
        assert obj["metadata"].get("namespace", NAMESPACE) == NAMESPACE
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_chart_metadata_and_the_supported_versions() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    # One version for the chart, the exporter and its image (tests/test_release.py).
    package = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert (chart["apiVersion"], chart["version"], chart["appVersion"]) == (
        "v2", package, package)
    assert chart["kubeVersion"] == f">={KUBE_VERSIONS[0]}.0-0"
    # Every minor from the floor on, none skipped.
    minors = [int(v.split(".")[1]) for v in KUBE_VERSIONS]
    assert minors == list(range(minors[0], minors[-1] + 1))
    doc = INSTALL_DOC.read_text()
    assert f"**{KUBE_VERSIONS[0]} to {KUBE_VERSIONS[-1]}**" in doc
    assert f'kubeVersion: ">={KUBE_VERSIONS[0]}.0-0"' in doc
    assert f"GA since {RECURSIVE_READ_ONLY_SINCE}" in doc


def test_the_chart_readme_values_table_is_generated() -> None:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_chart_readme.py"),
                             "--check"], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    readme = (CHART / "README.md").read_text()
    for key in ("gpu.enabled", "gpu.nodeSelector", "serviceMonitor.sampleLimit",
                "podMonitor.podTargetLabels", "global.imageRegistry", "startupProbe",
                "revisionHistoryLimit", "extraVolumes"):
        assert f"| `{key}` |" in readme, key
