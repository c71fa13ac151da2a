"""The exporter as a real process against fixture trees, changed between ticks by the test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support import (
    Exporter,
    advance,
    log_lines,
    max_uj,
    node_tree,
    parse,
    read_uj,
    require_binary,
    value,
    write_atomic,
    zone_dir,
)

pytestmark = pytest.mark.slow(seconds=2)  # every test runs the exporter as a process

TICK = "0.1"


def test_without_rapl_the_estimate_rises_and_the_log_says_why(tmp_path: Path) -> None:
    """As on this machine: no powercap tree, the host's real /proc."""
    root = node_tree(tmp_path, None)
    with Exporter(["--path.sysfs", str(root / "sys"), "--collector.interval", TICK]) as exp:
        first = value(exp.wait_ticks(2), "footprint_node_energy_joules_total",
                      component="cpu", source="estimated")
        time.sleep(0.3)
        second = value(exp.wait_ticks(2), "footprint_node_energy_joules_total",
                       component="cpu", source="estimated")
        assert second > first > 0
        assert exp.stop() == 0
    why = list(log_lines(exp.lines, "source rapl: off"))
    assert len(why) == 1 and "no RAPL driver" in why[0]
    (nvml,) = log_lines(exp.lines, "source nvml: off")  # no NVIDIA library: still runs
    assert "no NVIDIA driver here" in nvml or "nvidia-ml-py" in nvml
    assert any("source estimated: on" in line for line in exp.lines)


def test_counters_that_wrap_mid_run_stay_exact(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "intel-2s")
    zones = ["intel-rapl:0", "intel-rapl:0:2", "intel-rapl:1", "intel-rapl:2"]
    for zone in zones:  # start 40 J below the wrap point
        write_atomic(zone_dir(root, zone) / "energy_uj", f"{max_uj(root, zone) - 40_000_000}\n")
    true_uj = dict.fromkeys(zones, 0)
    with Exporter(["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
                   "--collector.interval", TICK]) as exp:
        exp.wait_ticks(1)
        for step in range(8):
            for i, zone in enumerate(zones):
                uj = 9_999_999 + 1_000_003 * i + 17 * step
                advance(root, zone, uj)
                true_uj[zone] += uj
            series = exp.wait_ticks(2)
        assert read_uj(root, "intel-rapl:0") < 50_000_000, "the counter did wrap"
        for zone in zones:
            got = value(series, "footprint_rapl_energy_joules_total", zone=zone)
            assert abs(got - true_uj[zone] / 1e6) <= 1e-6, zone
        cpu = value(series, "footprint_node_energy_joules_total", component="cpu")
        assert abs(cpu - (true_uj["intel-rapl:0"] + true_uj["intel-rapl:1"]) / 1e6) <= 2e-6
        assert exp.stop() == 0


def test_garbage_and_vanishing_zones_mid_run_never_move_counters_back(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "intel-2s")
    with Exporter(["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
                   "--collector.interval", TICK]) as exp:
        exp.wait_ticks(1)
        advance(root, "intel-rapl:0", 5_000_000)
        before = exp.wait_ticks(2)
        write_atomic(zone_dir(root, "intel-rapl:0") / "energy_uj", "\x00\x01garbage")
        (zone_dir(root, "intel-rapl:1") / "energy_uj").unlink()
        during = exp.wait_ticks(2)
        assert value(during, "footprint_source_up", source="rapl") == 0.0
        assert value(during, "footprint_exporter_errors_total", source="rapl") >= 1
        for key, old in before.items():
            if key[0].endswith("_total"):
                assert during[key] >= old, key
        assert exp.proc.poll() is None
        assert exp.stop() == 0
    faults = list(log_lines(exp.lines, "zone intel-rapl:0 down"))
    assert len(faults) == 1, "logged once however many ticks it lasts"


def test_permission_denied_says_root_only_and_falls_back(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "intel-2s")
    for path in (root / "sys" / "class" / "powercap").glob("intel-rapl*/energy_uj"):
        os.chmod(path, 0o400)
        if os.geteuid() == 0:
            os.chown(path, 65534, 65534)  # with DAC override dropped, root cannot read it
    with Exporter(["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
                   "--collector.interval", TICK], unreadable_as_root=os.geteuid() == 0) as exp:
        series = exp.wait_ticks(2)
        assert value(series, "footprint_source_up", source="rapl") == 0.0
        assert value(series, "footprint_source_up", source="estimated") == 1.0
        assert value(series, "footprint_node_energy_joules_total", component="cpu",
                     source="estimated") > 0
        assert exp.stop() == 0
    (line,) = log_lines(exp.lines, "source rapl: off")
    assert "level=warn" in line
    assert "permission denied reading" in line
    assert "readable by root only since Linux 5.10 (CVE-2020-8694)" in line
    assert "run the exporter as UID 0" in line


def test_sigterm_stops_cleanly_and_output_passes_promtool(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    root = node_tree(tmp_path, "amd-epyc-2s")
    with Exporter(["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
                   "--collector.interval", TICK], env={"NODE_NAME": "gpu-node-7"}) as exp:
        exp.wait_ticks(2)
        status, _, body = exp.get("/metrics")
        assert status == 200
        assert value(parse(body.decode()), "footprint_source_up", node="gpu-node-7",
                     source="rapl") == 1.0
        check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                               timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        started = time.monotonic()
        assert exp.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 5
    assert any("stopping" in line for line in exp.lines)
    assert not any("Traceback" in line for line in exp.lines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node_exporter_joules(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        series = parse(response.read().decode())
    return value(series, "node_rapl_package_joules_total", index="0")


def test_node_exporter_loses_a_range_at_the_wrap_where_footprint_does_not(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """node_exporter publishes the raw counter; Prometheus' reset logic then drops one range."""
    binary = require_binary("prometheus-node-exporter")
    root = node_tree(tmp_path, "amd-epyc-2s")
    zone = "intel-rapl:0"
    top = max_uj(root, zone)
    write_atomic(zone_dir(root, zone) / "energy_uj", f"{top - 30_000_000}\n")
    port = _free_port()
    node_exporter = subprocess.Popen(
        [binary, "--collector.disable-defaults", "--collector.rapl",
         f"--path.sysfs={root / 'sys'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Exporter(["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
                       "--collector.interval", TICK]) as exp:
            deadline = time.monotonic() + 20
            while True:
                try:
                    before = _node_exporter_joules(port)
                    break
                except OSError:
                    assert time.monotonic() < deadline, "node_exporter did not start"
                    time.sleep(0.05)
            ours_before = value(exp.wait_ticks(2), "footprint_rapl_energy_joules_total",
                                zone=zone)
            advance(root, zone, 50_000_000)  # 50 J, crossing the wrap
            ours = value(exp.wait_ticks(2), "footprint_rapl_energy_joules_total",
                         zone=zone) - ours_before
            after = _node_exporter_joules(port)
            exp.stop()
    finally:
        node_exporter.terminate()
        node_exporter.wait(10)
    # Prometheus' increase() over a counter reset: the new value is taken as the increase.
    prometheus_increase = after - before if after >= before else after
    lost = 50.0 - prometheus_increase
    with capsys.disabled():
        print(f"\nwrap of a {top / 1e6:.0f} J range: true 50 J; footprint {ours:.6f} J; "
              f"node_exporter raw {before:.6f} -> {after:.6f} J, Prometheus increase "
              f"{prometheus_increase:.6f} J, lost {lost:.6f} J")
    assert abs(ours - 50.0) <= 1e-6
    assert after < before, "node_exporter's raw counter went backwards at the wrap"
    assert lost == pytest.approx(30.0, abs=1e-6)  # the range left before the wrap
