"""A tick end to end in-process: source ownership, CO2e, conservation, and the golden exposition."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import pytest

from exporter import cli
from exporter.carbon import JOULES_PER_KWH
from exporter.sampler import Sampler
from tests.fakes.fake_nvml import FakeNvml, h100
from tests.support import (
    FIXTURES,
    FakeClock,
    Series,
    advance,
    node_tree,
    parse,
    require_binary,
    total,
    value,
)

GOLDEN = Path(__file__).parent / "golden" / "metrics.prom"


def make_sampler(root: Path, *flags: str, clock: FakeClock | None = None) -> Sampler:
    settings = cli.parse_settings(["--path.sysfs", str(root / "sys"),
                                   "--path.procfs", str(root / "proc"),
                                   "--no-collector.kubernetes", "--no-collector.nvml", *flags])
    clock = clock or FakeClock(1000.0)
    return cli.build_sampler(settings, process_metrics=False, clock=clock, timer=clock)


def owners(series: Series) -> dict[str, str]:
    return {dict(labels)["component"]: dict(labels)["source"]
            for (name, labels) in series if name == "footprint_node_energy_joules_total"}


def platform_owners(series: Series) -> set[str]:
    return {dict(labels)["source"] for (name, labels) in series
            if name == "footprint_node_platform_energy_joules_total"}


@pytest.mark.parametrize(("fixture", "expected", "platform"), [
    ("intel-2s", {"cpu": "rapl", "dram": "rapl"}, {"rapl"}),
    ("amd-epyc-2s", {"cpu": "rapl", "dram": "estimated"}, set()),  # no dram zone: estimated
    ("intel-client-psys", {"cpu": "rapl", "dram": "estimated"}, {"rapl"}),
    (None, {"cpu": "estimated", "dram": "estimated"}, set()),
])
def test_each_component_has_exactly_one_source(tmp_path: Path, fixture: str | None,
                                               expected: dict[str, str],
                                               platform: set[str]) -> None:
    series = parse(make_sampler(node_tree(tmp_path, fixture)).tick().text.decode())
    assert owners(series) == expected
    assert platform_owners(series) == platform


SYSFS_FIXTURES = sorted(p.parent.name for p in FIXTURES.glob("*/sys"))
PLATFORM_SENSOR = {"intel-2s", "intel-client-psys", "hwmon-acpi-power-meter",
                   "hwmon-nvidia-grace", "hwmon-ibm-power9"}
"""The fixtures with a whole-platform reading: RAPL psys, or an hwmon power meter."""


def grow(root: Path, microjoules: int) -> None:
    """Every RAPL counter and hwmon energy counter of a node tree gains the same energy;
    hwmon power files keep their value (constant power)."""
    for counter in (root / "sys").glob("class/powercap/*/energy_uj"):
        advance(root, counter.parent.name, microjoules)
    for counter in (root / "sys").glob("class/hwmon/*/energy*_input"):
        counter.resolve().write_text(f"{int(counter.read_text()) + microjoules}\n")


@pytest.mark.parametrize("fixture", [*SYSFS_FIXTURES, None])
def test_node_energy_sums_to_cpu_dram_and_gpu_on_every_fixture(tmp_path: Path,
                                                               fixture: str | None) -> None:
    """`sum by (node) (footprint_node_energy_joules_total)` is cpu + dram + gpu, each counted
    once, psys included: a platform reading lives in its own family and is never summed."""
    root = node_tree(tmp_path, fixture)
    nvml = FakeNvml([h100("GPU-aaaaaaaa-0000-0000-0000-000000000001"),
                     h100("GPU-aaaaaaaa-0000-0000-0000-000000000002")])
    for board, watts in zip(nvml.gpus, (300.0, 450.0), strict=True):
        nvml.set_watts(board, watts)
    clock = FakeClock(1000.0)
    settings = cli.parse_settings(["--path.sysfs", str(root / "sys"),
                                   "--path.procfs", str(root / "proc"),
                                   "--no-collector.kubernetes"])
    sampler = cli.build_sampler(settings, process_metrics=False, clock=clock, timer=clock,
                                nvml_module=nvml)
    first = parse(sampler.tick().text.decode())
    for _ in range(3):
        grow(root, 25_000_000)
        nvml.advance(10.0)
        clock.now += 10.0
        series = parse(sampler.tick().text.decode())
    node = {dict(labels)["component"]: v for (name, labels), v in series.items()
            if name == "footprint_node_energy_joules_total"}
    assert set(node) == {"cpu", "dram", "gpu"}  # one series each: one source per component
    # independent of the node family: the GPUs' own counters, and the RAPL zones as read
    gpu = (total(series, "footprint_gpu_energy_joules_total")
           - total(first, "footprint_gpu_energy_joules_total"))
    assert gpu == pytest.approx(30 * (300.0 + 450.0))
    assert node["gpu"] == pytest.approx(gpu)
    rapl = {domain: total(series, "footprint_rapl_energy_joules_total", domain=domain)
            - total(first, "footprint_rapl_energy_joules_total", domain=domain)
            for domain in ("package", "dram", "psys")}
    if owners(series)["cpu"] == "rapl":
        assert node["cpu"] == pytest.approx(rapl["package"])
    if owners(series)["dram"] == "rapl":
        assert node["dram"] == pytest.approx(rapl["dram"])
    assert total(series, "footprint_node_energy_joules_total") == pytest.approx(
        node["cpu"] + node["dram"] + gpu)
    platform = total(series, "footprint_node_platform_energy_joules_total")
    assert bool(platform_owners(series)) == (fixture in PLATFORM_SENSOR)
    if fixture in PLATFORM_SENSOR:
        assert platform > 0
        if platform_owners(series) == {"rapl"}:
            assert platform == pytest.approx(rapl["psys"]) and rapl["psys"] > 0
    for name in ("footprint_node_co2e_grams_total", "footprint_unattributed_energy_joules_total",
                 "footprint_unattributed_co2e_grams_total"):
        assert {dict(labels)["component"] for (n, labels) in series if n == name} <= {
            "cpu", "dram", "gpu"}, name


def test_no_collector_rapl_means_the_estimate_covers_all(tmp_path: Path) -> None:
    sampler = make_sampler(node_tree(tmp_path, "intel-2s"), "--no-collector.rapl")
    series = parse(sampler.tick().text.decode())
    assert owners(series) == {"cpu": "estimated", "dram": "estimated"}
    assert not any(name == "footprint_rapl_energy_joules_total" for name, _ in series)


def drive(root: Path, sampler: Sampler, clock: FakeClock, ticks: int) -> Series:
    text = b""
    for i in range(ticks):
        advance(root, "intel-rapl:0", 61_000_000 + 1_000 * i)
        advance(root, "intel-rapl:1", 47_500_000)
        advance(root, "intel-rapl:0:2", 6_250_000)
        advance(root, "intel-rapl:1:1", 5_750_000)
        advance(root, "intel-rapl:2", 150_000_001)
        clock.now += 1.0
        text = sampler.tick().text
    return parse(text.decode())


def test_co2e_is_kwh_times_intensity(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "intel-2s")
    config = tmp_path / "footprint.yaml"
    config.write_text("carbon:\n  zone: FR\n  intensity_grams_per_kwh: 57.3\n")
    clock = FakeClock(1000.0)
    sampler = make_sampler(root, "--config.file", str(config), clock=clock)
    sampler.tick()
    series = drive(root, sampler, clock, ticks=7)
    assert value(series, "footprint_grid_intensity_grams_per_kwh",
                 grid_zone="FR", provider="static") == 57.3
    for component in ("cpu", "dram"):
        joules = value(series, "footprint_node_energy_joules_total", component=component)
        grams = value(series, "footprint_node_co2e_grams_total", component=component)
        assert math.isclose(grams, joules / JOULES_PER_KWH * 57.3, rel_tol=1e-12)
    assert value(series, "footprint_node_energy_joules_total", component="cpu") == (
        pytest.approx(7 * (61 + 47.5) + 0.001 * sum(range(7)), abs=1e-9))


def test_all_energy_is_unattributed_and_conserved(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "intel-2s")
    clock = FakeClock(1000.0)
    sampler = make_sampler(root, clock=clock)
    sampler.tick()
    series = drive(root, sampler, clock, ticks=20)
    for component in ("cpu", "dram"):
        node = value(series, "footprint_node_energy_joules_total", component=component)
        parts = total(series, "footprint_unattributed_energy_joules_total", component=component)
        assert math.isclose(parts, node, rel_tol=1e-12)
        node_g = value(series, "footprint_node_co2e_grams_total", component=component)
        parts_g = total(series, "footprint_unattributed_co2e_grams_total", component=component)
        assert math.isclose(parts_g, node_g, rel_tol=1e-12)
    # the cpu's power rises a little each tick, so the learned idle baseline leaves a dynamic part
    assert value(series, "footprint_unattributed_energy_joules_total",
                 component="cpu", mode="dynamic") > 0


def golden_text(tmp_path: Path) -> str:
    root = node_tree(tmp_path, "intel-2s")
    clock = FakeClock(1000.0)
    sampler = make_sampler(root, clock=clock)
    sampler.tick()
    drive(root, sampler, clock, ticks=3)
    text = sampler.tick().text.decode()
    # the host's name and Python version are the only inputs not from the fixture
    text = re.sub(r'node="[^"]*"', 'node="golden-node"', text)
    return re.sub(r'python_version="[^"]*"', 'python_version="3.x"', text)


def test_golden_metrics(tmp_path: Path, update_golden: bool) -> None:
    text = golden_text(tmp_path)
    if update_golden:
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "run pytest --update-golden and review the diff"


def test_golden_passes_promtool() -> None:
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "check", "metrics"], input=GOLDEN.read_bytes(),
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_tick_is_rendered_only_when_read_and_as_it_was(tmp_path: Path) -> None:
    """The render runs on the first read of a tick's snapshot (a scrape), not in the tick; a
    snapshot read after later ticks still shows its own tick's values, and is rendered once."""
    root = node_tree(tmp_path, "intel-2s")
    clock = FakeClock(1000.0)
    settings = cli.parse_settings(["--path.sysfs", str(root / "sys"),
                                   "--path.procfs", str(root / "proc"),
                                   "--no-collector.kubernetes", "--no-collector.nvml"])
    sampler = cli.build_sampler(settings, process_metrics=False, clock=clock, timer=clock)
    renderer = sampler._renderer
    first = sampler.tick()
    grow(root, 25_000_000)
    clock.now += 10.0
    second = sampler.tick()
    assert renderer.renders == 0 and not first.rendered and not second.rendered
    grow(root, 25_000_000)
    clock.now += 10.0
    third = sampler.tick()
    cpu = [total(parse(s.text.decode()), "footprint_node_energy_joules_total")
           for s in (third, first, second)]
    assert renderer.renders == 3
    assert cpu[1] < cpu[2] < cpu[0]  # each snapshot holds its own tick's totals
    assert second.body(openmetrics=True, gzipped=True)
    assert second.text == second.body(openmetrics=False, gzipped=False)
    assert renderer.renders == 3  # rendered once, whatever is asked of it after
