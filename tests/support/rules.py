"""The rule pack's files and tools (from tests/test_rules.py): promtool, scripts/gen_rules.py
as a module, the runbook_url check, the slow marker and niceness of promtool's unit-test
suites and a YAML loader that reads integers as Go does; shared by the rule and chart-rule
tests."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.support import REPO, require_binary

RULES = REPO / "rules" / "footprint.rules.yaml"
CLUSTER_RULES = REPO / "rules" / "footprint.rules.cluster.yaml"
GEN_RULES = REPO / "scripts" / "gen_rules.py"
RUNBOOK_BASE = "https://github.com/footprint-exporter/footprint/blob/main/docs/runbooks.md"
"""The one base address of every alert's runbook_url (docs/rules.md, Knobs)."""
CHARGEBACK_BUDGETS = REPO / "rules" / "chargeback-budgets.example.yaml"
RUNBOOKS = REPO / "docs" / "runbooks.md"


def promtool(*args: str, niceness: int = 0) -> subprocess.CompletedProcess[str]:
    """promtool, at a lower CPU priority (nice) with a `niceness`."""
    nice = ["nice", "-n", str(niceness)] if niceness else []
    return subprocess.run([*nice, require_binary("promtool"), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=600, check=False)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def runbook_anchors() -> set[str]:
    """The anchors of docs/runbooks.md's headings."""
    return {github_anchor(line.lstrip("#")) for line in RUNBOOKS.read_text().splitlines()
            if line.startswith("#")}


def runbook_url_problems(alerts: list[dict[str, Any]], base: str = RUNBOOK_BASE) -> list[str]:
    """What is wrong with the runbook_url of each alert: not absolute, not under base, or an
    anchor that is not the alert's own section of docs/runbooks.md."""
    anchors = runbook_anchors()
    problems = []
    for rule in alerts:
        name = rule["alert"]
        url = rule.get("annotations", {}).get("runbook_url", "")
        page, _, anchor = url.partition("#")
        if not re.match(r"^https?://[^/\s]+/", url):
            problems.append(f"{name}: runbook_url {url!r} is not absolute")
        if page != base:
            problems.append(f"{name}: runbook_url {url!r} is not under {base}")
        if anchor not in anchors:
            problems.append(f"{name}: no section #{anchor} in docs/runbooks.md")
        if anchor != name.lower():
            problems.append(f"{name}: runbook_url should point at its own section")
    return problems


def gen_rules() -> ModuleType:
    """scripts/gen_rules.py as a module."""
    spec = importlib.util.spec_from_file_location("gen_rules", GEN_RULES)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_rules", module)
    spec.loader.exec_module(module)
    return module


SUITE = pytest.mark.slow(seconds=15)
"""A promtool unit-test file evaluates the whole pack every minute over up to a day and a half
of simulated time: ~0.5-30 s of CPU each, ~95 s for the files, once per variant. One test per
file."""
SUITE_NICENESS = 10
"""The suites are CPU alone, with no time bound: beside them in the parallel slow tier, the
tests that time something (the install half's budget, SIGTERM within 5 s, the engines' start
before a boundary) get the CPU first."""


class _DecimalLoader(yaml.SafeLoader):
    """YAML 1.1 without its hexadecimal, octal and base-60 integers, which Go's YAML (promtool)
    does not have: an input series' `values: 0x90` stays the string "0x90" (0, 90 times)."""


_DecimalLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_DecimalLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"),
                                     list("-+0123456789"))
