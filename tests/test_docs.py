"""The docs stay true: every published metric is in the contract and the README's table, and CI
runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

from exporter.metrics import FAMILIES as SPECS
from exporter.metrics import TICK_DURATION as SUMMARY
from tests.support import REPO

GOLDEN = Path(__file__).parent / "golden" / "metrics.prom"


def published() -> set[str]:
    return set(SPECS) | {SUMMARY.name}


def test_every_metric_is_in_the_contract_and_the_readme() -> None:
    contract = (REPO / "docs" / "metrics.md").read_text()
    readme = (REPO / "README.md").read_text()
    for name in published():
        assert f"`{name}`" in contract, f"{name} missing from docs/metrics.md"
        assert f"`{name}`" in readme, f"{name} missing from the README's metric table"


def test_contract_names_marked_as_published_exist() -> None:
    contract = (REPO / "docs" / "metrics.md").read_text()
    rows = re.findall(r"^\| `(footprint_[a-z_]+)` \|[^|]*\|[^|]*\| 0\.1 \|", contract, re.M)
    assert rows, "no row of docs/metrics.md says 0.1"
    assert set(rows) <= published(), set(rows) - published()
    golden = GOLDEN.read_text()
    for name in rows:
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
