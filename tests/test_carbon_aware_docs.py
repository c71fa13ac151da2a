"""docs/carbon-aware.md stays true: its YAML parses, the Kubernetes objects validate, the KEDA
and Kueue fields are the documented ones, every metric it names is published, and its queries
give the documented answers (promtool, on hand-made series)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.metrics import FAMILIES
from tests.support import REPO, require_binary

DOC = REPO / "docs" / "carbon-aware.md"
KUBE_VERSION = "1.32"
STANDARD = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "CronJob"}
KEDA_SPEC = {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
             "cooldownPeriod", "idleReplicaCount", "initialCooldownPeriod", "fallback",
             "advanced", "triggers"}
"""ScaledObject spec fields (keda.sh/docs/latest/reference/scaledobject-spec)."""
KEDA_PROMETHEUS = {"serverAddress", "query", "threshold", "activationThreshold", "namespace",
                   "customHeaders", "ignoreNullValues", "unsafeSsl", "queryParameters"}
"""The prometheus trigger's metadata (keda.sh/docs/latest/scalers/prometheus; `metricName` was
removed in 2.12)."""
STOP_POLICIES = {"None", "Hold", "HoldAndDrain"}
"""kueue.x-k8s.io/v1beta1 ClusterQueueSpec.stopPolicy (kueue apis/kueue/v1beta1)."""


def objects() -> list[dict[str, Any]]:
    text = DOC.read_text()
    blocks = re.findall(r"^```yaml\n(.*?)^```", text, re.S | re.M)
    assert blocks, "no YAML block"
    found = []
    for block in blocks:
        for obj in yaml.safe_load_all(block):
            assert isinstance(obj, dict) and obj.get("apiVersion") and obj.get("kind"), block
            assert obj["metadata"]["name"], obj
            found.append(obj)
    return found


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [o for o in objects() if o["kind"] == kind]


def test_every_metric_named_is_published() -> None:
    named = set(re.findall(r"\bfootprint_[a-z0-9_]+", DOC.read_text()))
    assert "footprint_grid_intensity_forecast_grams_per_kwh" in named
    assert named <= set(FAMILIES), named - set(FAMILIES)


def test_the_gauges_table_matches_the_families() -> None:
    text = DOC.read_text()
    for name in ("footprint_grid_intensity_forecast_grams_per_kwh",
                 "footprint_grid_intensity_forecast_min_grams_per_kwh",
                 "footprint_grid_intensity_forecast_min_timestamp_seconds"):
        labels = ", ".join(f"`{label}`" for label in FAMILIES[name].labels)
        assert f"| `{name}` | {labels} |" in text, name


def test_the_standard_objects_validate() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    standard = [o for o in objects() if o["kind"] in STANDARD]
    assert {o["kind"] for o in standard} == STANDARD
    for obj in standard:
        assert kubernetes_validate.validate(obj, KUBE_VERSION, strict=True) == KUBE_VERSION


def test_the_scaled_object_uses_keda_fields() -> None:
    (scaled,) = of_kind("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= KEDA_SPEC, set(spec) - KEDA_SPEC
    assert spec["scaleTargetRef"]["name"]
    assert spec["minReplicaCount"] == 0 < spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert set(meta) <= KEDA_PROMETHEUS, set(meta) - KEDA_PROMETHEUS
    assert {"serverAddress", "query", "threshold"} <= set(meta)
    for key in ("threshold", "activationThreshold"):  # strings, as KEDA's metadata is
        assert isinstance(meta[key], str) and float(meta[key]) > 0
    assert float(meta["threshold"]) * spec["maxReplicaCount"] == 1.0


def test_the_cluster_queue_and_its_hold() -> None:
    (queue,) = of_kind("ClusterQueue")
    assert queue["apiVersion"] == "kueue.x-k8s.io/v1beta1"
    assert queue["spec"]["stopPolicy"] in STOP_POLICIES
    (role,) = of_kind("ClusterRole")
    (rule,) = role["rules"]
    assert rule["apiGroups"] == ["kueue.x-k8s.io"] and rule["resources"] == ["clusterqueues"]
    assert rule["resourceNames"] == [queue["metadata"]["name"]]
    (cron,) = of_kind("CronJob")
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CLUSTER_QUEUE"] == queue["metadata"]["name"]
    script = container["command"][-1]
    assert set(re.findall(r"policy=(\w+)", script)) <= STOP_POLICIES
    assert "kubectl patch clusterqueue" in script and '\\"stopPolicy\\"' in script


def queries() -> dict[str, str]:
    (scaled,) = of_kind("ScaledObject")
    (cron,) = of_kind("CronJob")
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    hold = next(e["value"] for e in container["env"] if e["name"] == "HOLD_QUERY")
    return {"run": scaled["spec"]["triggers"][0]["metadata"]["query"], "hold": hold}


# (name, intensity now, forecast minimum, hours until it, KEDA run, Kueue hold); evaluated at
# 10 minutes, with every forecast series of zone DE or none (minimum None).
SCENARIOS = [
    ("now is near the cleanest hour", 300.0, 290.0, 1.0, 1, 0),
    ("a cleaner hour within 6 h", 400.0, 250.0, 2.0, 0, 1),
    ("the cleaner hour is too far: the fixed threshold, clean", 150.0, 100.0, 10.0, 1, 0),
    ("the cleaner hour is too far: the fixed threshold, dirty", 400.0, 100.0, 10.0, 0, 1),
    ("no forecast, clean", 150.0, None, 0.0, 1, 0),
    ("no forecast, dirty", 250.0, None, 0.0, 0, 1),
]


def test_the_queries_give_the_documented_answers(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    tests = []
    for name, now, lowest, hours, run, hold in SCENARIOS:
        labels = 'grid_zone="DE",provider="electricitymaps",node="n1"'
        series = [{"series": f"footprint_grid_intensity_grams_per_kwh{{{labels}}}",
                   "values": f"{now:g}x20"}]
        if lowest is not None:
            when = 600 + hours * 3600
            series += [
                {"series": f'footprint_grid_intensity_forecast_min_grams_per_kwh{{{labels},'
                           f'window="24h"}}', "values": f"{lowest:g}x20"},
                {"series": f'footprint_grid_intensity_forecast_min_timestamp_seconds{{{labels},'
                           f'window="24h"}}', "values": f"{when:g}x20"},
                {"series": f'footprint_grid_intensity_forecast_grams_per_kwh{{{labels},'
                           f'horizon="1h"}}', "values": f"{now:g}x20"}]
        exprs = [{"expr": query, "eval_time": "10m",
                  "exp_samples": [{"labels": "{}", "value": expected}]}
                 for query, expected in ((queries()["run"], run), (queries()["hold"], hold))]
        tests.append({"name": name, "interval": "1m", "input_series": series,
                      "promql_expr_test": exprs})
    path = tmp_path / "carbon-aware.test.yaml"
    path.write_text(yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m",
                                    "tests": tests}, sort_keys=False))
    done = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
