"""The rule pack: promtool accepts the rule files and passes their unit tests, the contract's
names are recorded, every rule and alert is tested, and every alert has its runbook."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO
from tests.support.rules import (
    CHARGEBACK_BUDGETS,
    CLUSTER_RULES,
    GEN_RULES,
    RULES,
    RUNBOOK_BASE,
    SUITE,
    SUITE_NICENESS,
    _DecimalLoader,
    gen_rules,
    promtool,
    runbook_url_problems,
)

CLUSTER = 'cluster="c1"'
BUDGETS = REPO / "rules" / "budgets.example.yaml"
EXAMPLES = (BUDGETS, CHARGEBACK_BUDGETS)
"""The per-install budget groups the chart generates, as examples (rules/README.md)."""
UNIT_TESTS = sorted((REPO / "tests" / "rules").glob("*.yaml"))
RULES_DOC = REPO / "docs" / "rules.md"

CONTRACT_RECORDS = {
    "container:footprint_co2e_grams:rate5m",
    "container:footprint_energy_joules:rate5m",
    "model:footprint_co2e_grams:rate5m",
    "namespace:footprint_co2e_grams:rate5m",
    "model:footprint_energy_joules:rate5m",
    "node:footprint_energy_joules:rate5m",
    "node:footprint_platform_energy_joules:rate5m",
    "pod:footprint_energy_joules:rate5m",
    "model:footprint_co2e_grams:increase1d",
    "model:footprint_energy_joules:increase1d",
    "namespace:footprint_co2e_grams:increase1d",
    "model:footprint_co2e_grams_per_1k_tokens:rate5m",
    "model:footprint_co2e_grams_per_request:rate5m",
    # Chargeback (issue 22): per namespace and per team (the default key, label_team).
    "namespace:footprint_energy_joules:rate5m",
    "namespace:footprint_energy_joules:increase1d",
    "namespace:footprint_co2e_grams:increase30d",
    "label_team:footprint_co2e_grams:rate5m",
    "label_team:footprint_energy_joules:rate5m",
    "label_team:footprint_water_liters:rate5m",
    "label_team:footprint_co2e_grams:increase1d",
    "label_team:footprint_energy_joules:increase1d",
    "label_team:footprint_water_liters:increase1d",
    "label_team:footprint_co2e_grams:increase30d",
}
CHARGEBACK_BUDGET_NAMES = {
    "namespace:footprint_co2e_daily_budget_grams",
    "namespace:footprint_co2e_monthly_budget_grams",
    "label_team:footprint_co2e_daily_budget_grams",
    "label_team:footprint_co2e_monthly_budget_grams",
}
CONTRACT_ALERTS = {
    "FootprintModelDailyEmissionsOverBudget",
    "FootprintModelDailyEmissionsForecastOverBudget",
    "FootprintExporterDown",
    "FootprintPowerSourceDown",
    "FootprintGridIntensityStale",
    "FootprintEnergyUnattributedHigh",
    "FootprintNamespaceDailyEmissionsOverBudget",
    "FootprintNamespaceMonthlyEmissionsOverBudget",
    "FootprintTeamDailyEmissionsOverBudget",
    "FootprintTeamMonthlyEmissionsOverBudget",
}
SCOPES = {"operational", "infrastructure", "embodied", "total"}


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in load(path)["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rule_files() -> None:
    result = promtool("check", "rules", str(RULES), *map(str, EXAMPLES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_there_are_promtool_unit_tests() -> None:
    assert UNIT_TESTS, "no promtool unit tests in tests/rules/"


@SUITE
@pytest.mark.parametrize("path", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(path: Path) -> None:
    result = promtool("test", "rules", str(path), niceness=SUITE_NICENESS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_groups_leave_the_interval_to_prometheus() -> None:
    for path in (RULES, *EXAMPLES):
        for group in load(path)["groups"]:
            assert "interval" not in group, (path.name, group["name"])
    alert_groups = [g["name"] for g in load(RULES)["groups"]
                    if any("alert" in rule for rule in g["rules"])]
    assert alert_groups == ["footprint.alerts"]


def test_contract_names_are_recorded() -> None:
    recorded = {rule["record"] for rule in rules(RULES) if "record" in rule}
    assert recorded >= CONTRACT_RECORDS, CONTRACT_RECORDS - recorded
    alerts = {rule["alert"] for rule in rules(RULES) if "alert" in rule}
    assert alerts >= CONTRACT_ALERTS, CONTRACT_ALERTS - alerts
    budgets = {rule["record"] for rule in rules(BUDGETS)}
    assert budgets == {"model:footprint_co2e_daily_budget_grams"}
    assert {rule["record"] for rule in rules(CHARGEBACK_BUDGETS)} == CHARGEBACK_BUDGET_NAMES
    assert not recorded & (budgets | CHARGEBACK_BUDGET_NAMES), "budgets are per install"
    assert [g["name"] for g in load(CHARGEBACK_BUDGETS)["groups"]] == [
        "footprint.chargeback.budgets"]


def recorded_scopes(rule: dict[str, Any]) -> set[str]:
    """The scopes a rule records: its scope label, or, for a rule that keeps the scope of the
    records it reads (one join for two scopes), those its `scope=~"..."` selector picks."""
    if "scope" in rule.get("labels", {}):
        return {rule["labels"]["scope"]}
    (picked,) = re.findall(r'scope=~"([a-z|]+)"', rule["expr"])
    return set(picked.split("|"))


@pytest.mark.parametrize(("name", "scopes"), [
    # only operational per container: the others derived where read (docs/rules.md)
    ("container:footprint_co2e_grams:rate5m", {"operational"}),
    ("node_namespace_model:footprint_co2e_grams:rate5m", SCOPES),
    ("node_label_team:footprint_co2e_grams:rate5m", SCOPES)])
def test_every_scope_is_recorded(name: str, scopes: set[str]) -> None:
    recorded = [recorded_scopes(rule) for rule in rules(RULES) if rule.get("record") == name]
    assert set().union(*recorded) == scopes
    assert sum(map(len, recorded)) == len(scopes), "a scope recorded twice"


def test_every_recorded_name_is_documented_and_tested() -> None:
    doc = RULES_DOC.read_text()
    tests = "\n".join(path.read_text() for path in UNIT_TESTS)
    for rule in rules(RULES) + [r for path in EXAMPLES for r in rules(path)]:
        name = rule.get("record") or rule["alert"]
        assert f"`{name}`" in doc, f"{name} missing from docs/rules.md"
        if "record" in rule:
            assert re.search(rf"expr: {re.escape(name)}\b", tests) or (
                f"labels: '{name}{{" in tests), f"{name} has no promql_expr_test"


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases: dict[str, list[bool]] = {}
    for path in UNIT_TESTS:
        for test in load(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], []).append(bool(case.get("exp_alerts")))
    for rule in rules(RULES):
        if "alert" in rule:
            outcomes = cases.get(rule["alert"], [])
            assert True in outcomes, f"{rule['alert']} never tested firing"
            assert False in outcomes, f"{rule['alert']} never tested silent"


def test_every_alert_has_a_summary_a_description_and_a_runbook() -> None:
    for rule in rules(RULES):
        if "alert" not in rule:
            continue
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), f"{name} has no summary"
        assert "{{" in annotations.get("description", ""), f"{name}: description without numbers"


@pytest.mark.parametrize("path", [RULES, CLUSTER_RULES], ids=lambda p: p.name)
def test_every_runbook_url_is_absolute_and_resolves(path: Path) -> None:
    alerts = [rule for rule in rules(path) if "alert" in rule]
    assert {rule["alert"] for rule in alerts} >= CONTRACT_ALERTS
    assert not runbook_url_problems(alerts)


def test_the_runbook_base_is_stated_in_the_docs() -> None:
    assert RUNBOOK_BASE in RULES_DOC.read_text()
    assert RUNBOOK_BASE in RULES.read_text().split("groups:")[0], "state it in the header"


LONG_RANGE = re.compile(r"\[(\d+[dw]|[2-9]\d+h|\d{3,}h)[:\]]")
"""A range or subquery of a day or more."""


def test_no_rule_reads_per_container_series_over_a_day() -> None:
    """The daily and 30-day rules integrate recorded per node series (docs/scale.md): none
    reads the exporter's per-container series, nor the per-container records, over a day."""
    for rule in rules(RULES):
        if LONG_RANGE.search(rule["expr"]):
            name = rule.get("record") or rule["alert"]
            assert "footprint_container_" not in rule["expr"], name
            assert "container:" not in rule["expr"], name
    assert LONG_RANGE.search("x[1d:5m]") and LONG_RANGE.search("x[30d:1d]")
    assert LONG_RANGE.search("x[24h]") and not LONG_RANGE.search("x[5m]")
    assert not LONG_RANGE.search("x[1h]")


def test_the_label_team_rules_are_one_chargeback_key() -> None:
    """Every rule that names label_team is a template the chart renders once per key of
    prometheusRule.chargeback.labels (label_team -> label_<key>): its record is named after
    the key, and an alert's text names the team as `Team {{ $labels.label_team }}`, the phrase
    the chart rewords for another key. No other rule names it."""
    keyed = [r for r in rules(RULES) if "label_team" in r["expr"] or
             "label_team" in r.get("record", "")]
    assert {r.get("record") for r in keyed} >= {
        name for name in CONTRACT_RECORDS if name.startswith("label_team:")}
    for rule in keyed:
        if "record" in rule:
            # the key's records, per team and per node and team
            assert rule["record"].split(":")[0] in ("label_team", "node_label_team"), rule
        else:
            assert rule["alert"].startswith("FootprintTeam"), rule["alert"]
            for field in ("summary", "description"):
                text = rule["annotations"][field]
                assert text.startswith("Team {{ $labels.label_team }}"), (rule["alert"], field)
                assert text.count("Team") == 1, (rule["alert"], field)
    for rule in rules(RULES):
        if rule not in keyed:
            assert "label_team" not in str(rule), rule.get("record") or rule["alert"]


def test_the_chargeback_groups_follow_their_inputs() -> None:
    """Groups in the order their records are computed (the unit tests' group_eval_order):
    the per team 5-minute records after the container ones, the daily ones after them."""
    names = [g["name"] for g in load(RULES)["groups"]]
    assert names.index("footprint.rate5m") < names.index("footprint.chargeback") < names.index(
        "footprint.increase1d") < names.index("footprint.chargeback1d") < names.index(
        "footprint.alerts")
    for path in UNIT_TESTS:
        order = load(path).get("group_eval_order", [])
        if "footprint.chargeback" in order:
            assert order.index("footprint.rate5m") < order.index("footprint.chargeback")
            assert order.index("footprint.chargeback1d") < order.index("footprint.alerts")


# ---------------------------------------------------------------------------------------------
# The cluster-label variant (scripts/gen_rules.py -> rules/footprint.rules.cluster.yaml)


def test_the_cluster_variant_is_generated() -> None:
    result = subprocess.run([sys.executable, str(GEN_RULES), "--check"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_promtool_checks_the_cluster_variant() -> None:
    result = promtool("check", "rules", str(CLUSTER_RULES), *map(str, EXAMPLES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_cluster_variant_keeps_the_label_in_every_aggregation() -> None:
    plain, variant = rules(RULES), rules(CLUSTER_RULES)
    assert [{k: v for k, v in r.items() if k != "expr"} for r in plain] == [
        {k: v for k, v in r.items() if k != "expr"} for r in variant]
    module = gen_rules()
    budget_match = re.compile(r"on \((\w+)\) group_left \(\)\s*(\w+):footprint_co2e_\w+")
    for rule in variant:
        # A budget (no cluster label) is matched on its own key alone.
        for key, level in budget_match.findall(rule["expr"]):
            assert key == level, rule.get("alert")
        rest = budget_match.sub("", rule["expr"])
        lists = re.findall(r"\b(by|on) \(([^)]*)\)", rest)
        for keyword, labels in lists:
            names = [n.strip() for n in labels.split(",")]
            assert "cluster" in names, (rule.get("record"), keyword, labels)
    budgeted = [r["alert"] for r in variant if "_budget_grams" in r["expr"]]
    assert len(budgeted) == 6, budgeted
    assert all(module.BUDGET.match(n) for n in CHARGEBACK_BUDGET_NAMES)
    assert module.add_cluster_label("x > on (label_cost_center) label_cost_center:"
                                    "footprint_co2e_monthly_budget_grams") == (
        "x > on (label_cost_center) group_left () label_cost_center:"
        "footprint_co2e_monthly_budget_grams")
    assert module.add_cluster_label("sum by () (x) / on (a) y") == (
        "sum by (cluster) (x) / on (cluster, a) y")
    assert module.add_cluster_label("sum without (a) (x) * ignoring (b) group_left (c) y",
                                    "region") == (
        "sum without (a) (x) * ignoring (b) group_left (c) y")
    with pytest.raises(ValueError):
        module.add_cluster_label("x", "not a label")


def with_cluster(series: str) -> str:
    """A series in promtool's notation, name{labels}, with the cluster label added."""
    if "{" not in series:
        return f"{series}{{{CLUSTER}}}"
    name, _, rest = series.partition("{")
    return f"{name}{{{CLUSTER}}}" if rest.strip() == "}" else f"{name}{{{CLUSTER},{rest}"


def keeps_cluster(labels: dict[str, Any] | str) -> bool:
    """Whether a result carries the cluster label: the budgets do not (one budget per model,
    namespace or team in every cluster), nor absent()'s series (FootprintExporterDown with no
    target at all)."""
    if isinstance(labels, str):
        return not gen_rules().BUDGET.match(labels.partition("{")[0])
    return not set(labels) <= {"severity", "job"}


def cluster_unit_test(path: Path) -> dict[str, Any]:
    """A tests/rules/ file rewritten for the cluster variant: its series carry cluster="c1",
    its own expressions keep the label, and so do the results it expects."""
    module = gen_rules()
    data = yaml.load(path.read_text(), Loader=_DecimalLoader)  # a SafeLoader
    data["rule_files"] = [str(CLUSTER_RULES if (path.parent / f).resolve() == RULES else
                              (path.parent / f).resolve()) for f in data["rule_files"]]
    assert str(CLUSTER_RULES) in data["rule_files"], path
    for test in data["tests"]:
        for series in test.get("input_series", []):
            series["series"] = with_cluster(series["series"])
        for case in test.get("promql_expr_test", []):
            case["expr"] = module.add_cluster_label(case["expr"])
            for sample in case.get("exp_samples", []):
                if keeps_cluster(sample["labels"]):
                    sample["labels"] = with_cluster(sample["labels"])
        for case in test.get("alert_rule_test", []):
            for alert in case.get("exp_alerts", []) or []:
                if keeps_cluster(alert.get("exp_labels", {})):
                    alert["exp_labels"] = {"cluster": "c1", **alert.get("exp_labels", {})}
    return data


def test_with_cluster_adds_the_label() -> None:
    assert with_cluster("up") == 'up{cluster="c1"}'
    assert with_cluster("{}") == '{cluster="c1"}'
    assert with_cluster('x:y{a="{b}"}') == 'x:y{cluster="c1",a="{b}"}'
    assert yaml.load("values: 0x90 1x5", Loader=_DecimalLoader) == {
        "values": "0x90 1x5"}
    assert yaml.load("v: 0x90", Loader=_DecimalLoader) == {"v": "0x90"}


@SUITE
@pytest.mark.parametrize("path", UNIT_TESTS, ids=lambda p: p.name)
def test_the_cluster_variant_passes_the_same_unit_tests(tmp_path: Path, path: Path) -> None:
    target = tmp_path / path.name
    target.write_text(yaml.safe_dump(cluster_unit_test(path), sort_keys=False))
    result = promtool("test", "rules", str(target), niceness=SUITE_NICENESS)
    assert result.returncode == 0, result.stdout + result.stderr
    # The rewrite did add the label where the plain tests expect results.
    assert 'cluster="c1"' in target.read_text()
