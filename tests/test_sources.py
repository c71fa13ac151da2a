"""The source contract, held by every spec in the registry (exporter/sources/base.py): a new
source that follows it gets its flag, config section, values schema, ownership, watchdog and
metrics from its one registry line, and these tests run over it without being edited."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from exporter import cli
from exporter.config import COMPONENTS, ConfigError, file_keys, parse_file_config
from exporter.metrics import DEVICE_FAMILIES, SOURCE_UP
from exporter.sources import registry
from exporter.sources.base import Measurement, Reading, SourceContext, SourceSpec
from tests.fakes.fake_nvml import FakeNvml, h100
from tests.support import FIXTURES, REPO, node_tree

SPECS = registry.SOURCES
IDS = [s.flag for s in SPECS]


def host(tmp_path: Path) -> Path:
    """A node where every source of the registry finds something: RAPL zones, an ACPI power
    meter in hwmon, /proc for the estimate (and a fake H100 for NVML, passed apart)."""
    root = node_tree(tmp_path, "intel-2s")
    shutil.copytree(FIXTURES / "hwmon-acpi-power-meter" / "sys" / "class" / "hwmon",
                    root / "sys" / "class" / "hwmon")
    return root


def test_each_source_has_one_flag_one_label_and_components_the_exporter_knows() -> None:
    assert len(set(IDS)) == len(SPECS)
    assert len({s.label for s in SPECS}) == len(SPECS)
    for spec in SPECS:
        assert spec.flag.isidentifier() and spec.flag not in ("kubernetes",)
        assert spec.components and spec.components <= set(COMPONENTS), spec.flag
        assert spec.flag in cli.COLLECTORS and cli.COLLECTORS[spec.flag] == spec.help


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_a_source_with_settings_has_its_section_in_the_file_and_the_chart_schema(
        spec: SourceSpec) -> None:
    if spec.settings is None:
        assert spec.flag not in file_keys()
        return
    assert spec.flag in file_keys()
    assert parse_file_config({}).sources[spec.flag] == spec.settings()
    with pytest.raises(ConfigError, match=rf"^{spec.flag}\.no_such_key: unknown key"):
        parse_file_config({spec.flag: {"no_such_key": 1}})
    schema = json.loads((REPO / "charts/footprint-exporter/values.schema.json").read_text())
    assert schema["properties"]["config"]["properties"][spec.flag]["additionalProperties"] is False


def check_reading(spec: SourceSpec, reading: Reading, owned: frozenset[str]) -> None:
    assert isinstance(reading, Reading)
    assert set(reading.joules) <= owned, (spec.flag, reading.joules)
    for component, joules in reading.joules.items():
        assert math.isfinite(joules) and joules >= 0.0, (spec.flag, component, joules)
    family = DEVICE_FAMILIES.get(spec.label)
    for m in reading.measurements:
        assert isinstance(m, Measurement)
        assert m.component is None or m.component in spec.components, (spec.flag, m)
        assert m.device and m.joules_total >= 0.0
        assert family is not None, f"{spec.label} reports devices but has no family"
        assert family.labels_of(**dict(m.labels))  # every label by the family's names


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_each_source_probes_and_reads_by_the_contract(tmp_path: Path, spec: SourceSpec) -> None:
    root = host(tmp_path)
    nvml = FakeNvml([h100()])
    source = spec.create(SourceContext(
        sysfs=root / "sys", procfs=root / "proc",
        settings=parse_file_config({}).sources.get(spec.flag),
        uncovered=frozenset(COMPONENTS), nvml_module=nvml))
    status = source.probe()
    assert status.enabled, (spec.flag, status.detail)
    assert status.components <= spec.components
    totals: dict[str, float] = {}
    for now in (10.0, 20.0):
        nvml.time = now
        reading = source.read(now)
        check_reading(spec, reading, status.components)
        for m in reading.measurements:
            assert m.joules_total >= totals.get(m.device, 0.0)  # never backwards
            totals[m.device] = m.joules_total
    closer = getattr(source, "close", None)
    if closer is not None:
        closer()


def test_the_exporter_publishes_every_source_under_its_label_from_the_spec(
        tmp_path: Path) -> None:
    root = host(tmp_path)
    settings = cli.parse_settings(["--path.sysfs", str(root / "sys"), "--path.procfs",
                                   str(root / "proc"), "--no-collector.kubernetes"])
    sampler = cli.build_sampler(settings, process_metrics=False,
                                nvml_module=FakeNvml([h100()]))
    try:
        sampler.tick()
        up = sampler.ledger.gauges[SOURCE_UP.name]
        names = {s.name for s in sampler.states}
        assert names == {s.label for s in SPECS}
        for state in sampler.states:
            if state.status.enabled:
                assert up[(state.name,)] == 1.0, state.name
    finally:
        sampler.close()
