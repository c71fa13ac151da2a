"""The metric tables of docs/metrics.md and the README are what scripts/gen_metric_tables.py
writes from exporter/metrics.py (issue 21): every family has a row, every row names a family and
exactly its labels, and a family edited without regenerating fails here."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from exporter.metrics import (
    CONTRACT_TABLES,
    FAMILIES,
    NODE_ENERGY,
    PUE,
    README_TABLE,
    TICK_DURATION,
    UNDOCUMENTED,
    Doc,
    Family,
)
from tests.support import REPO

sys.path.insert(0, str(REPO / "scripts"))
import gen_metric_tables as gen

PUBLISHED = {**FAMILIES, TICK_DURATION.name: TICK_DURATION}
ROW = re.compile(r"^\| `(footprint_[a-z0-9_]+)` \|([^|]*)\|([^|]*)\|", re.M)
"""A family's row: its name, type and labels cells."""
LABEL = re.compile(r"(?:^ |, )`([a-z_0-9]+)`")


def marked(path: Path) -> dict[str, str]:
    """Each table between its markers in the file, by marker name."""
    text = (REPO / path).read_text(encoding="utf-8")
    return {key: gen.regions(text, key, path)[1] for key in gen.tables()[path]}


def test_the_files_hold_the_generated_tables() -> None:
    for path, fresh in gen.tables().items():
        assert marked(path) == fresh, f"{path} is stale: run scripts/gen_metric_tables.py"


def test_check_passes_on_the_repository() -> None:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_metric_tables.py"),
                             "--check"], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_fails_with_a_diff_on_a_stale_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path in (gen.CONTRACT, gen.README):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / path, tmp_path / path)
    contract = tmp_path / gen.CONTRACT
    text = contract.read_text()
    contract.write_text(text.replace("| `footprint_pue` | gauge |",
                                     "| `footprint_pue` | counter |"))
    assert gen.main(["--check"], root=tmp_path) == 1
    out = capsys.readouterr()
    assert "-| `footprint_pue` | counter |" in out.out and "+| `footprint_pue` | gauge |" in out.out
    assert "docs/metrics.md is stale" in out.err and "README.md" not in out.err
    assert contract.read_text() != text  # --check wrote nothing
    assert gen.main([], root=tmp_path) == 0
    assert contract.read_text() == text
    assert gen.main(["--check"], root=tmp_path) == 0


def test_an_edited_family_changes_its_rows() -> None:
    edited = dataclasses.replace(NODE_ENERGY, labels=("component", "source", "socket"))
    table = gen.contract_table([edited])
    assert "`source` (rapl, nvml, hwmon, estimated), `socket` |" in table
    assert table not in marked(gen.CONTRACT)["hardware"]
    summary = dataclasses.replace(PUE, doc=dataclasses.replace(PUE.doc, summary="PUE"))
    assert gen.readme_table([summary]).splitlines()[-1] == "| `footprint_pue` | gauge | | PUE |"


def test_every_family_has_one_row_in_each_table_set() -> None:
    assert set(PUBLISHED) >= UNDOCUMENTED
    for where, families in (("docs/metrics.md", [f for _, fs in CONTRACT_TABLES for f in fs]),
                            ("README.md", list(README_TABLE))):
        names = [f.name for f in families]
        assert [n for n, k in Counter(names).items() if k > 1] == [], where
        assert set(names) == set(PUBLISHED) - UNDOCUMENTED, (where, set(PUBLISHED) ^ set(names))
        assert all(PUBLISHED[f.name] is f for f in families), where


def test_every_row_names_a_family_and_exactly_its_labels() -> None:
    """Parsed back from the files: each row's name is published and its labels cell names
    the family's labels, in order; no family row lives outside the generated regions."""
    for path in (gen.CONTRACT, gen.README):
        outside = (REPO / path).read_text(encoding="utf-8")
        seen = set()
        tables = marked(path).values()
        for table in tables:
            outside = outside.replace(table, "")
        for name, _, labels in ROW.findall("".join(tables)):
            assert name in PUBLISHED, f"{path}: {name} is no family"
            assert tuple(LABEL.findall(labels)) == PUBLISHED[name].labels, (path, name, labels)
            seen.add(name)
        assert seen | UNDOCUMENTED == set(PUBLISHED), (path, set(PUBLISHED) - seen)
        assert ROW.findall(outside) == [], f"{path}: hand-written rows outside the tables"


def test_doc_hints_name_only_the_familys_labels() -> None:
    with pytest.raises(ValueError, match="doc hints for labels it lacks: \\['zone'\\]"):
        Family("footprint_x_joules_total", "counter", "x", ("source",), "joules",
               doc=Doc(hints={"zone": "a, b"}))
    for family in PUBLISHED.values():
        assert set(family.doc.hints) <= set(family.labels), family.name


def test_every_documented_family_has_a_meaning_and_since_where_its_table_has_one() -> None:
    for key, families in CONTRACT_TABLES:
        if key == "exporter":
            assert not any(f.doc.since for f in families)
            continue
        for f in families:
            assert f.doc.since and f.doc.meaning and f.doc.summary, f.name


def test_labels_of_takes_labels_by_name() -> None:
    assert NODE_ENERGY.labels_of(source="rapl", component="cpu") == ("cpu", "rapl")
    assert PUE.labels_of() == ()
    with pytest.raises(ValueError, match=r"missing \['source'\], unknown \[\]"):
        NODE_ENERGY.labels_of(component="cpu")
    with pytest.raises(ValueError, match=r"missing \[\], unknown \['zone'\]"):
        NODE_ENERGY.labels_of(component="cpu", source="rapl", zone="x")
    with pytest.raises(ValueError, match=r"missing \['component'\], unknown \['kind'\]"):
        NODE_ENERGY.labels_of(kind="cpu", source="rapl")
    for family in PUBLISHED.values():
        values = {name: f"v{i}" for i, name in enumerate(family.labels)}
        assert family.check(family.labels_of(**values)) == tuple(values.values())
