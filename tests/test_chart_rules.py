"""The chart's rule-pack knobs (prometheusRule.*: jobSelector, runbookUrlBase, clusterLabel,
additionalRuleLabels, additionalRuleAnnotations, disabledAlerts, chargeback).

The chart is rendered from a copy whose files/footprint.rules.yaml is fresh from rules/ (as
scripts/gen_manifests.py renders it), so these tests never depend on a stale copy; every
rendered PrometheusRule also goes through `promtool check rules`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.support import require_binary
from tests.support.chart import CHART, NAMESPACE, RELEASE, Obj, of_kind, one, require_module
from tests.support.rules import (
    CHARGEBACK_BUDGETS,
    CLUSTER_RULES,
    RULES,
    RUNBOOK_BASE,
    SUITE,
    SUITE_NICENESS,
    _DecimalLoader,
    gen_rules,
    promtool,
    runbook_url_problems,
)

ENABLED: Obj = {"enabled": True}
REPO_RULES_TESTS = RULES.parent.parent / "tests" / "rules"
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
                   "budgets": {"m": 1},
                   "chargeback": {"labels": ["team", "cost-center"],
                                  "namespaceBudgets": {"ml": {"daily": 10}},
                                  "labelBudgets": {"cost-center": {"cc-1": {"monthly": 300}}}}},
    "chargeback-keys": {"chargeback": {
        "labels": ["team", "cost-center"],
        "namespaceBudgets": {"ml-prod": {"daily": 5000, "monthly": 100000}},
        "labelBudgets": {"team": {"vision": {"daily": 240000, "monthly": 3200000}},
                         "cost-center": {"cc-1": {"daily": 1000}}}}},
    "no-chargeback-keys": {"chargeback": {"labels": []}},
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
    budgeted = [a for a in alerts(rendered) if "_budget_grams" in a["expr"]]
    assert len(budgeted) == 6
    for alert in budgeted:  # each budget matched on its own key, without the cluster label
        matches = re.findall(r"on \((\w+)\) group_left \(\)\s*(\w+):footprint_co2e_",
                             alert["expr"])
        assert matches and all(key == level for key, level in matches), alert["alert"]


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



# ---------------------------------------------------------------------------------------------
# Chargeback (prometheusRule.chargeback: labels, namespaceBudgets, labelBudgets)

KEYED = "label_team"
"""The string that marks the pack's rules of one chargeback key (docs/rules.md, Chargeback keys)."""


def keyed(rule: Obj) -> bool:
    return KEYED in rule["expr"] or KEYED in rule.get("record", "")


def for_key(rule: Obj, key: str, name: str) -> Obj:
    """What the chart renders of one of the pack's label_team rules for another key."""
    out = {**rule, "expr": rule["expr"].replace(KEYED, name)}
    if "record" in rule:
        out["record"] = rule["record"].replace(KEYED, name)
    if "annotations" in rule:
        out["annotations"] = {
            k: v.replace("Team {{ $labels.label_team }}", f"{key} {{{{ $labels.label_team }}}}")
            .replace(KEYED, name) for k, v in rule["annotations"].items()}
    return out


def pack_for_keys(keys: list[tuple[str, str]]) -> list[Obj]:
    """The pack's groups as the chart renders them for the chargeback keys (key, label name):
    each label_team rule once per key, in place; groups left empty dropped."""
    out = []
    for group in pack(RULES):
        rules = []
        for rule in group["rules"]:
            if not keyed(rule):
                rules.append(rule)
                continue
            rules += [rule if name == KEYED else for_key(rule, key, name) for key, name in keys]
        if rules:
            out.append({**group, "rules": rules})
    return out


def test_the_pack_has_keyed_rules_in_three_groups() -> None:
    groups = {g["name"] for g in pack(RULES) for r in g["rules"] if keyed(r)}
    assert groups == {"footprint.chargeback", "footprint.chargeback1d", "footprint.alerts"}


def test_more_chargeback_keys_render_their_own_rules(helm: ModuleType, chart_dir: Path) -> None:
    rendered = groups(helm, chart_dir, KNOB_CASES["chargeback-keys"])
    *embedded, budgets = rendered
    assert embedded == pack_for_keys([("team", "label_team"), ("cost-center", "label_cost_center")])
    names = {r["record"] for r in records(embedded)}
    assert {"node_label_cost_center:footprint_co2e_grams:rate5m",
            "label_cost_center:footprint_co2e_grams:rate5m",
            "label_cost_center:footprint_energy_joules:increase1d",
            "label_cost_center:footprint_water_liters:increase1d",
            "label_cost_center:footprint_co2e_grams:increase30d"} <= names
    copies = [a for a in alerts(embedded) if "label_cost_center" in a["expr"]]
    assert sorted(a["alert"] for a in copies) == ["FootprintTeamDailyEmissionsOverBudget",
                                                  "FootprintTeamMonthlyEmissionsOverBudget"]
    for alert in copies:
        assert "label_team" not in str(alert)
        assert alert["annotations"]["summary"].startswith(
            "cost-center {{ $labels.label_cost_center }} emitted")
    assert not runbook_url_problems(alerts(embedded))
    # The budgets of every key and namespace, one rule per name.
    assert budgets["name"] == "footprint.chargeback.budgets"
    assert {r["record"]: r["expr"] for r in budgets["rules"]} == {
        "namespace:footprint_co2e_daily_budget_grams":
            'label_replace(vector(5000), "namespace", "ml-prod", "", "")\n',
        "namespace:footprint_co2e_monthly_budget_grams":
            'label_replace(vector(100000), "namespace", "ml-prod", "", "")\n',
        "label_cost_center:footprint_co2e_daily_budget_grams":
            'label_replace(vector(1000), "label_cost_center", "cc-1", "", "")\n',
        "label_team:footprint_co2e_daily_budget_grams":
            'label_replace(vector(240000), "label_team", "vision", "", "")\n',
        "label_team:footprint_co2e_monthly_budget_grams":
            'label_replace(vector(3200000), "label_team", "vision", "", "")\n'}


def test_no_chargeback_key_renders_no_team_rule(helm: ModuleType, chart_dir: Path) -> None:
    rendered = groups(helm, chart_dir, KNOB_CASES["no-chargeback-keys"])
    assert rendered == pack_for_keys([])
    assert "label_" not in str(rendered)
    assert "footprint.chargeback" not in [g["name"] for g in rendered]
    namespace = {r["record"] for r in records(rendered) if r["record"].startswith("namespace:")}
    assert "namespace:footprint_co2e_grams:increase30d" in namespace
    assert {a["alert"] for a in alerts(rendered)} >= {
        "FootprintNamespaceDailyEmissionsOverBudget",
        "FootprintNamespaceMonthlyEmissionsOverBudget"}
    assert not {a["alert"] for a in alerts(rendered)} & {
        "FootprintTeamDailyEmissionsOverBudget", "FootprintTeamMonthlyEmissionsOverBudget"}


def example_chargeback_values() -> Obj:
    """The prometheusRule values in the header of rules/chargeback-budgets.example.yaml."""
    header = textwrap.dedent("\n".join(
        line.removeprefix("#") for line in
        CHARGEBACK_BUDGETS.read_text().split("groups:")[0].splitlines()
        if line.startswith("#   ")))
    values: Obj = yaml.safe_load(header)
    assert set(values) == {"chargeback"}, values
    return values


def test_the_example_chargeback_budgets_are_what_the_chart_renders(
        helm: ModuleType, chart_dir: Path) -> None:
    """rules/chargeback-budgets.example.yaml is the group the values in its header render."""
    rendered = groups(helm, chart_dir, example_chargeback_values())
    (example,) = pack(CHARGEBACK_BUDGETS)
    assert rendered[-1] == example


def test_chargeback_key_label_names_are_the_exporters(helm: ModuleType, chart_dir: Path) -> None:
    """The chart names a key's label as the exporter publishes it (exporter/podlabels.py)."""
    from exporter.podlabels import label_name

    keys = ["team", "cost-center", "costCenter2", "example.com/team", "app.kubernetes.io/part-of",
            "aBC", "Team_Name", "x9Y"]
    rendered = groups(helm, chart_dir, {"chargeback": {"labels": keys}})
    found = [re.match(r"label_\w+?(?=:)", r["record"]) for r in records(rendered)
             if r["record"].startswith("label_") and r["record"].endswith(
                 ":footprint_co2e_grams:rate5m")]
    assert [m.group(0) for m in found if m] == [label_name(k) for k in keys]


def test_bad_chargeback_keys_and_budgets_fail_the_render(helm: ModuleType, chart_dir: Path) -> None:
    with pytest.raises(Exception, match="label_cost_center"):
        render_rule(helm, chart_dir, {"chargeback": {"labels": ["cost-center", "cost_center"]}})
    with pytest.raises(Exception, match="labelBudgets: owner is not in"):
        render_rule(helm, chart_dir, {"chargeback": {
            "labels": ["team"], "labelBudgets": {"owner": {"a": {"daily": 1}}}}})


def test_the_schema_rejects_bad_chargeback_values(helm: ModuleType, chart_dir: Path) -> None:
    with helm.Chart.load(chart_dir) as chart:
        for bad in ({"labels": "team"}, {"labels": ["cost-*"]}, {"labels": ["team", "team"]},
                    {"labels": [""]}, {"labels": ["-team"]},
                    {"namespaceBudgets": {"ML": {"daily": 1}}},
                    {"namespaceBudgets": {"ml": {}}},
                    {"namespaceBudgets": {"ml": {"weekly": 1}}},
                    {"namespaceBudgets": {"ml": {"daily": -1}}},
                    {"namespaceBudgets": {"ml": 5}},
                    {"labelBudgets": {"team": {"vision": 5}}},
                    {"labelBudgets": {"team": {"vision": {"monthly": "lots"}}}},
                    {"labelBudgets": {"cost-*": {"a": {"daily": 1}}}},
                    {"budgetz": {}}):
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema({"prometheusRule": {"chargeback": bad}})
        chart.validate_schema({"prometheusRule": KNOB_CASES["chargeback-keys"]})


def test_the_cluster_label_keeps_every_chargeback_budget_free_of_it(
        helm: ModuleType, chart_dir: Path) -> None:
    knobs = {"clusterLabel": "region", **KNOB_CASES["chargeback-keys"]}
    *embedded, _ = groups(helm, chart_dir, knobs)
    module = gen_rules()
    want = module.cluster_pack({"groups": pack_for_keys(
        [("team", "label_team"), ("cost-center", "label_cost_center")])}, "region")["groups"]
    assert embedded == want
    budgeted = [a["expr"] for a in alerts(embedded) if "_budget_grams" in a["expr"]]
    assert len(budgeted) == 8
    for expr in budgeted:
        matches = re.findall(r"on \((\w+)\) group_left \(\)\s*(\w+):footprint_co2e_", expr)
        assert matches and all(key == level for key, level in matches), expr
        assert f"by (region, {matches[0][0]})" in expr


def keyed_unit_test(path: Path, rule_file: Path) -> str:
    """A chargeback unit test of tests/rules/ for the key cost-center: every label_team
    (series, records, expectations) as label_cost_center, the alerts' "Team" as the key, the
    rule files the chart's rendering."""
    data = yaml.load(path.read_text(), Loader=_DecimalLoader)
    data["rule_files"] = [str(rule_file)]
    text = yaml.safe_dump(data, sort_keys=False, width=1000)
    return text.replace("Team vision", "cost-center vision").replace(KEYED, "label_cost_center")


@SUITE
@pytest.mark.parametrize("name", ["chargeback.yaml", "chargeback_monthly.yaml"])
def test_another_keys_rules_pass_the_chargeback_unit_tests(
        helm: ModuleType, chart_dir: Path, tmp_path: Path, name: str) -> None:
    """The chart's rendering for `labels: [cost-center]` passes the team's unit tests with
    label_cost_center for label_team: the copies compute what the pack's rules do."""
    example = example_chargeback_values()["chargeback"]
    values = {"chargeback": {**example, "labels": ["cost-center"],
                             "labelBudgets": {"cost-center": example["labelBudgets"]["team"]}}}
    rule_file = tmp_path / "rendered.rules.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": groups(helm, chart_dir, values)},
                                        sort_keys=False))
    test = tmp_path / name
    test.write_text(keyed_unit_test(REPO_RULES_TESTS / name, rule_file))
    assert "label_team" not in test.read_text() + rule_file.read_text()
    result = promtool("test", "rules", str(test), niceness=SUITE_NICENESS)
    assert result.returncode == 0, result.stdout + result.stderr
