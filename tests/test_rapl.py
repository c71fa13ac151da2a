"""RAPL source against committed sysfs fixtures and odd cases built from them."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from exporter.sources.rapl import RaplSource
from tests.support import advance, max_uj, node_tree, read_uj, write_atomic, zone_dir


def zones_of(source: RaplSource, now: float = 1.0) -> dict[str, tuple[str, float]]:
    return {z.device: (dict(z.labels)["domain"], z.joules_total)
            for z in source.read(now).measurements}


@pytest.mark.parametrize(("fixture", "components", "zones"), [
    ("intel-2s", {"cpu", "dram", "platform"},
     {"intel-rapl:0": "package", "intel-rapl:0:0": "core", "intel-rapl:0:1": "uncore",
      "intel-rapl:0:2": "dram", "intel-rapl:1": "package", "intel-rapl:1:0": "core",
      "intel-rapl:1:1": "dram", "intel-rapl:2": "psys"}),
    ("intel-multidie", {"cpu", "dram"},
     {"intel-rapl:0": "package", "intel-rapl:0:0": "dram", "intel-rapl:1": "package",
      "intel-rapl:1:0": "dram"}),
    ("amd-epyc-2s", {"cpu"},
     {"intel-rapl:0": "package", "intel-rapl:0:0": "core", "intel-rapl:1": "package",
      "intel-rapl:1:0": "core"}),
    ("intel-client-psys", {"cpu", "platform"},
     {"intel-rapl:0": "package", "intel-rapl:0:0": "core", "intel-rapl:0:1": "uncore",
      "intel-rapl:1": "psys"}),
])
def test_probe_finds_zones_and_components(tmp_path: Path, fixture: str, components: set[str],
                                          zones: dict[str, str]) -> None:
    root = node_tree(tmp_path, fixture)
    source = RaplSource(root / "sys")
    status = source.probe()
    assert status.enabled
    assert status.components == components
    assert {z: d for z, (d, _) in zones_of(source).items()} == zones  # no intel-rapl-mmio


def test_hexadecimal_indexes_are_parsed_and_ordered(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "hex-12-dies")
    source = RaplSource(root / "sys")
    assert source.probe().components == {"cpu"}
    assert list(zones_of(source)) == [f"intel-rapl:{i:x}" for i in range(12)]
    for i in range(12):
        advance(root, f"intel-rapl:{i:x}", (i + 1) * 1_000_000)
    reading = source.read(2.0)
    assert reading.joules["cpu"] == pytest.approx(sum(range(1, 13)), abs=1e-9)


def test_components_sum_without_double_counting(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "intel-2s")
    source = RaplSource(root / "sys")
    source.probe()
    steps = {"intel-rapl:0": 50_000_000, "intel-rapl:0:0": 30_000_000,
             "intel-rapl:0:1": 5_000_000, "intel-rapl:0:2": 7_000_000,
             "intel-rapl:1": 40_000_000, "intel-rapl:1:0": 20_000_000,
             "intel-rapl:1:1": 6_000_000, "intel-rapl:2": 120_000_000,
             "intel-rapl-mmio:0": 999_000_000}
    for zone, uj in steps.items():
        advance(root, zone, uj)
    reading = source.read(2.0)
    assert reading.up
    # package only (core/uncore are inside it); dram beside it; psys alone; mmio ignored
    assert reading.joules == {"cpu": 90.0, "dram": 13.0, "platform": 120.0}
    assert zones_of(source, 3.0)["intel-rapl:0:0"] == ("core", 30.0)


def test_multidie_packages_add_up(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "intel-multidie")
    source = RaplSource(root / "sys")
    source.probe()
    advance(root, "intel-rapl:0", 11_000_000)
    advance(root, "intel-rapl:1", 13_000_000)
    assert source.read(2.0).joules == {"cpu": 24.0, "dram": 0.0}


def test_wraparound_is_corrected_exactly(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "amd-epyc-2s")
    zone = "intel-rapl:0"
    top = max_uj(root, zone)
    write_atomic(zone_dir(root, zone) / "energy_uj", f"{top - 1_234_567}\n")
    source = RaplSource(root / "sys")
    source.probe()
    advance(root, zone, 5_000_000)  # crosses the wrap point
    assert read_uj(root, zone) == 5_000_000 - 1_234_567
    reading = source.read(2.0)
    assert reading.joules["cpu"] == 5.0
    assert zones_of(source, 3.0)[zone] == ("package", 5.0)


def test_a_counter_stepping_back_is_a_glitch_not_a_wrap(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """1 uJ back, read as a wrap, would be +262 kJ in 5 s (52 kW from one package): more than
    any sensor reads, so it is a reset: nothing counted, the total stays monotonic."""
    root = node_tree(tmp_path, "amd-epyc-2s")
    zone = "intel-rapl:0"
    source = RaplSource(root / "sys")
    source.probe()
    source.read(5.0)
    before = zones_of(source, 10.0)[zone][1]
    caplog.set_level(logging.WARNING)
    for i in range(5):
        write_atomic(zone_dir(root, zone) / "energy_uj", f"{read_uj(root, zone) - 1}\n")
        reading = source.read(15.0 + 5 * i)
        assert reading.joules.get("cpu", 0.0) == 0.0
    assert zones_of(source, 40.0)[zone][1] == before
    assert any("went back" in r.getMessage() and "not energy" in r.getMessage()
               for r in caplog.records)
    advance(root, zone, 7_000_000)  # and it goes on from the new baseline
    assert source.read(45.0).joules["cpu"] == 7.0


def test_many_wraps_over_a_long_run_lose_nothing(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "amd-epyc-2s")
    zone = "intel-rapl:1"
    write_atomic(zone_dir(root, zone) / "max_energy_range_uj", "1000000007\n")
    write_atomic(zone_dir(root, zone) / "energy_uj", "12345\n")
    source = RaplSource(root / "sys")
    source.probe()
    true_uj = 0
    for i in range(200):
        step = 333_333_337 + i * 7919
        advance(root, zone, step)
        true_uj += step
        source.read(float(i))
    assert zones_of(source)[zone][1] == pytest.approx(true_uj / 1e6, abs=1e-6)


def test_garbage_marks_one_zone_down_and_the_gap_is_counted_on_recovery(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = node_tree(tmp_path, "intel-2s")
    source = RaplSource(root / "sys")
    source.probe()
    path = zone_dir(root, "intel-rapl:0") / "energy_uj"
    good = read_uj(root, "intel-rapl:0")
    caplog.set_level(logging.INFO, logger="footprint")
    for garbage in ("not-a-number\n", "", "-5\n", f"{10**15}\n"):  # last: above the range
        write_atomic(path, garbage)
        advance(root, "intel-rapl:1", 1_000_000)
        reading = source.read(2.0)
        assert not reading.up
        assert reading.joules["cpu"] == 1.0  # package-1 goes on
    faults = [r for r in caplog.records if "zone intel-rapl:0 down" in r.getMessage()]
    assert len(faults) == 1, "the fault is logged once, not every tick"
    assert "not a counter in microjoules" in faults[0].getMessage()
    write_atomic(path, f"{good + 9_000_000}\n")
    reading = source.read(3.0)
    assert reading.up
    assert reading.joules["cpu"] == 9.0  # energy used while unreadable, counted once
    assert any("readable again" in r.getMessage() for r in caplog.records)


def test_unreadable_file_marks_zone_down(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "intel-2s")
    source = RaplSource(root / "sys")
    source.probe()
    path = zone_dir(root, "intel-rapl:0:2") / "energy_uj"
    path.unlink()
    path.mkdir()  # reading a directory fails like an unreadable file
    advance(root, "intel-rapl:1:1", 2_000_000)
    reading = source.read(2.0)
    assert not reading.up
    assert reading.joules["dram"] == 2.0


def test_vanished_zone_keeps_its_total_and_returns_with_a_new_baseline(
        tmp_path: Path) -> None:
    root = node_tree(tmp_path, "intel-2s")
    source = RaplSource(root / "sys")
    source.probe()
    advance(root, "intel-rapl:1", 4_000_000)
    assert source.read(2.0).joules["cpu"] == 4.0
    saved = tmp_path / "saved"
    shutil.move(zone_dir(root, "intel-rapl:1"), saved)
    reading = source.read(3.0)
    assert reading.up  # the zones still there were all read
    assert dict((z.device, z.joules_total) for z in reading.measurements)["intel-rapl:1"] == 4.0
    shutil.move(saved, zone_dir(root, "intel-rapl:1"))
    write_atomic(zone_dir(root, "intel-rapl:1") / "energy_uj", "100\n")  # e.g. driver reload
    assert source.read(4.0).joules.get("cpu", 0.0) == 0.0  # baseline only: nothing invented
    advance(root, "intel-rapl:1", 3_000_000)
    assert source.read(5.0).joules["cpu"] == 3.0
    assert zones_of(source, 6.0)["intel-rapl:1"] == ("package", 7.0)


def test_new_zone_appearing_is_picked_up(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "amd-epyc-2s")
    source = RaplSource(root / "sys")
    source.probe()
    shutil.copytree(zone_dir(root, "intel-rapl:1"), zone_dir(root, "intel-rapl:2"))
    source.read(2.0)
    advance(root, "intel-rapl:2", 1_500_000)
    reading = source.read(3.0)
    assert reading.joules["cpu"] == 1.5
    assert "intel-rapl:2" in zones_of(source, 4.0)


def test_no_powercap_tree_says_why(tmp_path: Path) -> None:
    root = node_tree(tmp_path, None)
    status = RaplSource(root / "sys").probe()
    assert not status.enabled and not status.present
    assert "no RAPL driver" in status.detail


def test_all_zones_unreadable_disables_source_with_reason(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "amd-epyc-2s")
    for zone in ("intel-rapl:0", "intel-rapl:0:0", "intel-rapl:1", "intel-rapl:1:0"):
        write_atomic(zone_dir(root, zone) / "energy_uj", "garbage\n")
    status = RaplSource(root / "sys").probe()
    assert not status.enabled and status.present
    assert "none could be read" in status.detail and "not a counter" in status.detail
