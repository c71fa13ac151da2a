"""Usage-based estimate: Cloud Carbon Footprint's linear model over /proc/stat and meminfo."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.sources.estimate import ESTIMABLE, EstimateSettings, EstimateSource, read_cpu_times
from tests.support import node_tree, write_atomic

MEM_GB = 16384000 * 1024 / 1e9  # MemTotal of tests/fixtures/proc/meminfo


def set_stat(root: Path, *, busy: int, idle: int, steal: int = 0) -> None:
    """Aggregate line: user=busy, idle, steal; four per-CPU lines."""
    lines = [f"cpu  {busy} 0 0 {idle} 0 0 0 {steal} 0 0"]
    lines += [f"cpu{i} 0 0 0 0 0 0 0 0 0 0" for i in range(4)]
    write_atomic(root / "proc" / "stat", "\n".join(lines) + "\nctxt 1\n")


def test_fixture_stat_is_parsed(tmp_path: Path) -> None:
    times = read_cpu_times(node_tree(tmp_path, None) / "proc")
    assert (times.busy, times.total, times.vcpus) == (13300, 93800, 4)


@pytest.mark.parametrize("utilisation", [0.0, 0.25, 0.6, 1.0])
def test_cpu_and_dram_watts_follow_the_linear_model(tmp_path: Path, utilisation: float) -> None:
    root = node_tree(tmp_path, None)
    settings = EstimateSettings()
    set_stat(root, busy=1000, idle=1000)
    source = EstimateSource(root / "proc", settings, ESTIMABLE)
    assert source.probe().enabled
    source.read(100.0)
    set_stat(root, busy=1000 + int(400 * utilisation), idle=1000 + int(400 * (1 - utilisation)))
    reading = source.read(102.5)
    watts = 4 * (0.74 + (3.5 - 0.74) * utilisation)
    assert reading.joules["cpu"] == pytest.approx(watts * 2.5, rel=1e-12)
    assert reading.joules["dram"] == pytest.approx(MEM_GB * 0.392 * 2.5, rel=1e-12)


def test_steal_time_is_not_our_power(tmp_path: Path) -> None:
    root = node_tree(tmp_path, None)
    set_stat(root, busy=0, idle=0)
    source = EstimateSource(root / "proc", EstimateSettings(), frozenset({"cpu"}))
    source.probe()
    source.read(0.0)
    set_stat(root, busy=100, idle=100, steal=200)  # 25% busy, half the time stolen
    reading = source.read(1.0)
    assert reading.joules == {"cpu": pytest.approx(4 * (0.74 + 2.76 * 0.25))}


def test_only_the_components_asked_for(tmp_path: Path) -> None:
    root = node_tree(tmp_path, None)
    source = EstimateSource(root / "proc", EstimateSettings(), frozenset({"dram"}))
    status = source.probe()
    assert status.components == {"dram"}
    source.read(0.0)
    assert set(source.read(1.0).joules) == {"dram"}
    assert not EstimateSource(root / "proc", EstimateSettings(), frozenset()).probe().enabled


def test_garbage_stat_pauses_and_the_next_good_sample_covers_the_gap(tmp_path: Path) -> None:
    root = node_tree(tmp_path, None)
    set_stat(root, busy=0, idle=0)
    source = EstimateSource(root / "proc", EstimateSettings(cpu_idle_watts_per_vcpu=1.0,
                                                            cpu_max_watts_per_vcpu=2.0),
                            frozenset({"cpu"}))
    source.probe()
    source.read(0.0)
    write_atomic(root / "proc" / "stat", "garbage\n")
    assert source.read(1.0) .up is False
    set_stat(root, busy=150, idle=150)
    reading = source.read(3.0)
    assert reading.up
    assert reading.joules["cpu"] == pytest.approx(4 * 1.5 * 3.0)  # all 3 s at 50%


def test_missing_procfs_gives_a_reason(tmp_path: Path) -> None:
    status = EstimateSource(tmp_path / "nowhere", EstimateSettings(), ESTIMABLE).probe()
    assert not status.enabled
    assert "--path.procfs" in status.detail
