"""The rule pack: promtool accepts the rule files and passes their unit tests, the contract's
names are recorded, every rule and alert is tested, and every alert has its runbook."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO, require_binary

RULES = REPO / "rules" / "footprint.rules.yaml"
BUDGETS = REPO / "rules" / "budgets.example.yaml"
UNIT_TESTS = sorted((REPO / "tests" / "rules").glob("*.yaml"))
RUNBOOKS = REPO / "docs" / "runbooks.md"
RULES_DOC = REPO / "docs" / "rules.md"

CONTRACT_RECORDS = {
    "container:footprint_co2e_grams:rate5m",
    "container:footprint_energy_joules:rate5m",
    "model:footprint_co2e_grams:rate5m",
    "namespace:footprint_co2e_grams:rate5m",
    "model:footprint_energy_joules:rate5m",
    "model:footprint_co2e_grams:increase1d",
    "model:footprint_energy_joules:increase1d",
    "namespace:footprint_co2e_grams:increase1d",
    "model:footprint_co2e_grams_per_1k_tokens:rate5m",
    "model:footprint_co2e_grams_per_request:rate5m",
}
CONTRACT_ALERTS = {
    "FootprintModelDailyEmissionsOverBudget",
    "FootprintModelDailyEmissionsForecastOverBudget",
    "FootprintExporterDown",
    "FootprintPowerSourceDown",
    "FootprintGridIntensityStale",
    "FootprintEnergyUnattributedHigh",
}
SCOPES = {"operational", "infrastructure", "embodied", "total"}


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in load(path)["groups"] for rule in group["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_binary("promtool"), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600, check=False)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_promtool_checks_the_rule_files() -> None:
    result = promtool("check", "rules", str(RULES), str(BUDGETS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    assert UNIT_TESTS, "no promtool unit tests in tests/rules/"
    result = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_groups_leave_the_interval_to_prometheus() -> None:
    for path in (RULES, BUDGETS):
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
    assert "model:footprint_co2e_daily_budget_grams" not in recorded, "budgets are per install"


@pytest.mark.parametrize("name", ["container:footprint_co2e_grams:rate5m",
                                  "node_namespace_model:footprint_co2e_grams:increase1d"])
def test_every_scope_is_recorded(name: str) -> None:
    scopes = {rule["labels"]["scope"] for rule in rules(RULES) if rule.get("record") == name}
    assert scopes == SCOPES


def test_every_recorded_name_is_documented_and_tested() -> None:
    doc = RULES_DOC.read_text()
    tests = "\n".join(path.read_text() for path in UNIT_TESTS)
    for rule in rules(RULES) + rules(BUDGETS):
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
    anchors = {github_anchor(line.lstrip("#")) for line in RUNBOOKS.read_text().splitlines()
               if line.startswith("#")}
    for rule in rules(RULES):
        if "alert" not in rule:
            continue
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), f"{name} has no summary"
        assert "{{" in annotations.get("description", ""), f"{name}: description without numbers"
        url = annotations.get("runbook_url", "")
        page, _, anchor = url.partition("#")
        assert page.endswith("docs/runbooks.md"), f"{name}: runbook_url {url!r}"
        assert anchor in anchors, f"{name}: no section #{anchor} in docs/runbooks.md"
        assert anchor == name.lower(), f"{name}: runbook_url should point at its own section"
