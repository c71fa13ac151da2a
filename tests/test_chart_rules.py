"""The chart's rule-pack knobs (prometheusRule.*: jobSelector, runbookUrlBase, clusterLabel,
additionalRuleLabels, additionalRuleAnnotations, disabledAlerts).

The chart is rendered from a copy whose files/footprint.rules.yaml is fresh from rules/ (as
scripts/gen_manifests.py renders it), so these tests never depend on a stale copy; every
rendered PrometheusRule also goes through `promtool check rules`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.support import require_binary
from tests.test_chart import CHART, NAMESPACE, RELEASE, Obj, of_kind, one, require_module
from tests.test_rules import (
    CLUSTER_RULES,
    RULES,
    RUNBOOK_BASE,
    gen_rules,
    runbook_url_problems,
)

ENABLED: Obj = {"enabled": True}
OTHER_BASE = "https://docs.example.com/footprint/runbooks.md"


@pytest.fixture(scope="module")
def helm() -> ModuleType:
    return require_module("helm_python", "helm-python-sdk")


@pytest.fixture(scope="module")
def chart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart with files/footprint.rules.yaml copied from rules/."""
    target = tmp_path_factory.mktemp("chart") / CHART.name
    shutil.copytree(CHART, target)
    (target / "files").mkdir(exist_ok=True)
    shutil.copyfile(RULES, target / "files" / "footprint.rules.yaml")
    return target


def render_rule(helm: ModuleType, chart_dir: Path, knobs: Obj) -> Obj | None:
    """The PrometheusRule rendered with prometheusRule: {enabled: true, **knobs}."""
    with helm.Chart.load(chart_dir) as chart:
        rendered = chart.render({"prometheusRule": {**ENABLED, **knobs}}, name=RELEASE,
                                namespace=NAMESPACE, is_install=True)
    objects = [obj for template, text in sorted(rendered.items())
               if not template.endswith("NOTES.txt")
               for obj in yaml.safe_load_all(text) if obj]
    rules = of_kind(objects, "PrometheusRule")
    return one(objects, "PrometheusRule") if rules else None


def groups(helm: ModuleType, chart_dir: Path, knobs: Obj) -> list[Obj]:
    rule = render_rule(helm, chart_dir, knobs)
    assert rule is not None
    result: list[Obj] = rule["spec"]["groups"]
    return result


def alerts(rule_groups: list[Obj]) -> list[Obj]:
    return [rule for group in rule_groups for rule in group["rules"] if "alert" in rule]


def records(rule_groups: list[Obj]) -> list[Obj]:
    return [rule for group in rule_groups for rule in group["rules"] if "record" in rule]


def assert_promtool_accepts(rule_groups: list[Obj], tmp_path: Path) -> None:
    path = tmp_path / "rendered.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups}, sort_keys=False))
    result = subprocess.run([require_binary("promtool"), "check", "rules", str(path)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def pack(path: Path) -> list[Obj]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    result: list[Obj] = data["groups"]
    return result


KNOB_CASES: dict[str, Obj] = {
    "defaults": {},
    "job": {"jobSelector": 'job=~"footprint.*",namespace="monitoring"'},
    "runbooks": {"runbookUrlBase": OTHER_BASE},
    "cluster": {"clusterLabel": "cluster"},
    "region": {"clusterLabel": "region", "budgets": {"llama-3-8b": 5000}},
    "labels": {"additionalRuleLabels": {"team": "ml-platform", "severity": "page"},
               "additionalRuleAnnotations": {"dashboard": "https://grafana.example.com/d/fp"}},
    "disabled": {"disabledAlerts": ["FootprintEnergyUnattributedHigh", "FootprintExporterDown"]},
    "everything": {"jobSelector": 'job="fp"', "runbookUrlBase": OTHER_BASE,
                   "clusterLabel": "k8s_cluster", "additionalRuleLabels": {"team": "ml"},
                   "additionalRuleAnnotations": {"owner": "ml"},
                   "disabledAlerts": ["FootprintGridIntensityStale"],
                   "budgets": {"m": 1}},
}


@pytest.mark.parametrize("case", KNOB_CASES)
def test_every_rendering_passes_promtool(
        helm: ModuleType, chart_dir: Path, tmp_path: Path, case: str) -> None:
    assert_promtool_accepts(groups(helm, chart_dir, KNOB_CASES[case]), tmp_path)


def test_the_defaults_render_the_rule_pack_unchanged(helm: ModuleType, chart_dir: Path) -> None:
    assert groups(helm, chart_dir, {}) == pack(RULES)


@pytest.mark.parametrize("base", [None, OTHER_BASE])
def test_every_runbook_url_is_absolute_and_resolves(
        helm: ModuleType, chart_dir: Path, base: str | None) -> None:
    knobs = {"runbookUrlBase": base} if base else {}
    rendered = alerts(groups(helm, chart_dir, knobs))
    assert len(rendered) == len(alerts(pack(RULES)))
    assert not runbook_url_problems(rendered, base or RUNBOOK_BASE)


def test_the_job_selector_replaces_the_exporters_job(helm: ModuleType, chart_dir: Path) -> None:
    selector = KNOB_CASES["job"]["jobSelector"]
    rendered = groups(helm, chart_dir, {"jobSelector": selector})
    (down,) = [a for a in alerts(rendered) if a["alert"] == "FootprintExporterDown"]
    assert down["expr"].count("{" + selector + "}") == 2, down["expr"]
    assert all('job="footprint-exporter"' not in r["expr"] for g in rendered for r in g["rules"])
    # Nothing else changes.
    plain = pack(RULES)
    for got, want in zip(alerts(rendered) + records(rendered), alerts(plain) + records(plain),
                         strict=True):
        assert got["expr"] == want["expr"].replace('job="footprint-exporter"', selector)


def test_the_cluster_label_renders_the_cluster_variant(helm: ModuleType, chart_dir: Path) -> None:
    assert groups(helm, chart_dir, {"clusterLabel": "cluster"}) == pack(CLUSTER_RULES)


def test_another_cluster_label_name(helm: ModuleType, chart_dir: Path) -> None:
    module = gen_rules()
    want = module.cluster_pack({"groups": pack(RULES)}, "region")["groups"]
    rendered = groups(helm, chart_dir, {"clusterLabel": "region"})
    assert rendered == want
    assert all("cluster" not in r["expr"] for r in records(rendered) + alerts(rendered))
    budgeted = [a for a in alerts(rendered) if "daily_budget_grams" in a["expr"]]
    assert budgeted and all("on (model) group_left ()" in a["expr"] for a in budgeted)


def test_the_cluster_label_with_budgets_keeps_the_budget_group(
        helm: ModuleType, chart_dir: Path) -> None:
    rendered = groups(helm, chart_dir, {"clusterLabel": "cluster", "budgets": {"m": 10}})
    assert rendered[:-1] == pack(CLUSTER_RULES)
    assert rendered[-1]["name"] == "footprint.budgets"


def test_additional_labels_and_annotations_go_on_every_alert(
        helm: ModuleType, chart_dir: Path) -> None:
    knobs = KNOB_CASES["labels"]
    rendered = groups(helm, chart_dir, knobs)
    plain = {a["alert"]: a for a in alerts(pack(RULES))}
    assert len(alerts(rendered)) == len(plain)
    for alert in alerts(rendered):
        want = plain[alert["alert"]]
        # The alert's own labels and annotations win (severity stays).
        assert alert["labels"] == {"team": "ml-platform", **want["labels"]}
        assert alert["labels"]["severity"] == want["labels"]["severity"]
        assert alert["annotations"] == {**knobs["additionalRuleAnnotations"],
                                        **want["annotations"]}
    # Recording rules are left alone: extra labels would change the recorded series.
    assert records(rendered) == records(pack(RULES))


def test_disabled_alerts_are_left_out(helm: ModuleType, chart_dir: Path) -> None:
    disabled = KNOB_CASES["disabled"]["disabledAlerts"]
    rendered = groups(helm, chart_dir, {"disabledAlerts": disabled})
    names = [a["alert"] for a in alerts(rendered)]
    assert names == [a["alert"] for a in alerts(pack(RULES)) if a["alert"] not in disabled]
    assert records(rendered) == records(pack(RULES))


def test_disabling_every_alert_drops_the_alert_group(helm: ModuleType, chart_dir: Path) -> None:
    every = [a["alert"] for a in alerts(pack(RULES))]
    rendered = groups(helm, chart_dir, {"disabledAlerts": every})
    assert "footprint.alerts" not in [g["name"] for g in rendered]
    assert records(rendered) == records(pack(RULES))


def test_an_unknown_disabled_alert_fails_the_render(helm: ModuleType, chart_dir: Path) -> None:
    with pytest.raises(Exception, match="FootprintNoSuchAlert"):
        render_rule(helm, chart_dir, {"disabledAlerts": ["FootprintNoSuchAlert"]})


def test_the_schema_rejects_bad_knobs(helm: ModuleType, chart_dir: Path) -> None:
    with helm.Chart.load(chart_dir) as chart:
        for bad in ({"clusterLabel": "my-cluster"}, {"clusterLabel": "1c"},
                    {"runbookUrlBase": "docs/runbooks.md"}, {"jobSelector": ""},
                    {"disabledAlerts": "FootprintExporterDown"},
                    {"additionalRuleLabels": {"team": 1}},
                    {"additionalRuleAnnotations": []}):
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema({"prometheusRule": bad})
        chart.validate_schema({"prometheusRule": KNOB_CASES["everything"]})
