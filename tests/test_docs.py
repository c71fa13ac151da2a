"""The docs stay true: CI runs the README's test command, the chart's appVersion is the
exporter's, the Kepler migration names only what exists. (The metric tables are generated and
held to the families by tests/test_metric_tables.py.)"""

from __future__ import annotations

import re

from exporter.metrics import FAMILIES as SPECS
from exporter.metrics import TICK_DURATION as SUMMARY
from tests.support import REPO

GOLDEN = REPO / "tests" / "golden" / "metrics.prom"


def published() -> set[str]:
    return set(SPECS) | {SUMMARY.name}


def test_families_the_contract_says_are_published_since_0_1_are_in_the_golden() -> None:
    """docs/metrics.md's "since" (each family's Doc.since) claims no family the golden
    exposition lacks."""
    oldest = [f.name for f in SPECS.values() if f.doc.since.split()[:1] == ["0.1"]]
    assert oldest, "no family says it is published since 0.1"
    golden = GOLDEN.read_text()
    for name in oldest:
        assert f"# TYPE {name.removesuffix('_total')}" in golden or name in golden, name


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert "```sh\nbash scripts/test.sh\n```" in readme
    assert "```sh\nbash scripts/run.sh\n```" in readme
    assert "bash scripts/test.sh" in (REPO / ".ci" / "run").read_text()


def test_chart_app_version_is_the_exporters() -> None:
    import yaml

    from exporter import __version__

    chart = yaml.safe_load((REPO / "charts" / "footprint-exporter" / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__


def test_the_kepler_migration_names_only_what_exists() -> None:
    """docs/migrating-from-kepler.md's Footprint names are published or recorded by the pack."""
    import yaml

    text = (REPO / "docs" / "migrating-from-kepler.md").read_text()
    rules = yaml.safe_load((REPO / "rules" / "footprint.rules.yaml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    named = {n for n in re.findall(r"\b(footprint_[a-z0-9_]+|[a-z_]+:footprint_[a-z0-9_:]+)", text)
             if not n.endswith("_")}  # `footprint_container_*` names a family of names
    assert named, "the page names no Footprint metric"
    assert named <= published() | recorded, named - published() - recorded
