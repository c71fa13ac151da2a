"""hwmon source against committed sysfs fixtures (Ampere Altra, amd_energy, an ACPI power meter,
NVIDIA Grace, IBM POWER9) and odd cases built from them; and the whole exporter through the
source registry."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import pytest

from exporter import cli
from exporter.sources.hwmon import HwmonSource, classify
from tests.support import FakeClock, node_tree, parse, value, write_atomic

GRACE = {"hwmon1": "Grace Power Socket 0", "hwmon2": "CPU Power Socket 0",
         "hwmon3": "SysIO Power Socket 0", "hwmon4": "Grace Power Socket 1",
         "hwmon5": "CPU Power Socket 1", "hwmon6": "SysIO Power Socket 1"}
METER = (Path(__file__).parent / "fixtures" / "hwmon-acpi-power-meter" / "sys" / "class" / "hwmon"
         / "hwmon1")


def device_dir(root: Path, device: str) -> Path:
    return root / "sys" / "class" / "hwmon" / device


def write(root: Path, device: str, file: str, text: str) -> None:
    path = device_dir(root, device) / file
    if not path.exists() and (device_dir(root, device) / "device" / file).exists():
        path = device_dir(root, device) / "device" / file
    write_atomic(path, text)


def read_int(root: Path, device: str, file: str) -> int:
    path = device_dir(root, device) / file
    if not path.exists():
        path = device_dir(root, device) / "device" / file
    return int(path.read_text())


def advance(root: Path, device: str, file: str, microjoules: int) -> None:
    write(root, device, file, f"{read_int(root, device, file) + microjoules}\n")


def added(source: HwmonSource) -> dict[str, str | None]:
    """`hwmonN/file` -> component, for the sensors added to node energy."""
    return {f"{s.device}/{s.file}": s.component for s in source.sensors() if s.added}


def probed(tmp_path: Path, fixture: str, **kwargs: frozenset[str]) -> tuple[Path, HwmonSource]:
    root = node_tree(tmp_path, fixture)
    source = HwmonSource(root / "sys", **kwargs)
    assert source.probe().enabled
    return root, source


# -- what is found -------------------------------------------------------------------------


@pytest.mark.parametrize(("fixture", "components", "sensors"), [
    ("hwmon-ampere-altra", {"cpu"}, {"hwmon0/power1_input": "cpu"}),
    ("hwmon-amd-energy", {"cpu"},
     {"hwmon1/energy9_input": "cpu", "hwmon1/energy10_input": "cpu"}),
    ("hwmon-acpi-power-meter", {"platform"}, {"hwmon1/power1_average": "platform"}),
    ("hwmon-nvidia-grace", {"cpu", "platform"},
     {"hwmon1/power1_average": "platform", "hwmon2/power1_average": "cpu",
      "hwmon4/power1_average": "platform", "hwmon5/power1_average": "cpu"}),
    ("hwmon-ibm-power9", {"cpu", "platform"},
     {"hwmon0/energy1_input": "cpu", "hwmon0/energy4_input": "cpu",
      "hwmon0/energy7_input": "platform"}),
])
def test_probe_finds_sensors_and_components(tmp_path: Path, fixture: str, components: set[str],
                                            sensors: dict[str, str]) -> None:
    root = node_tree(tmp_path, fixture)
    source = HwmonSource(root / "sys")
    status = source.probe()
    assert status.enabled and status.present
    assert status.components == components
    assert added(source) == sensors
    assert f"reading {len(sensors)} of {len(sensors)} sensors" in status.detail


def test_probe_says_what_it_left_out_and_why(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "hwmon-ampere-altra")
    detail = HwmonSource(root / "sys").probe().detail
    assert "hwmon0 (apm_xgene): cpu from power1_input 'CPU power' (integrated)" in detail
    assert "not added: power2_input 'IO power' (the SoC's I/O domain" in detail
    assert "nvme" not in detail  # temperatures only: not a power sensor at all


def test_amd_energy_cores_are_never_added_to_the_sockets(tmp_path: Path) -> None:
    root, source = probed(tmp_path, "hwmon-amd-energy")
    why = {s.file: s.why_not for s in source.sensors()}
    assert why["energy1_input"] == "inside a coarser cpu sensor"
    assert why["energy9_input"] == ""
    for i in range(1, 9):
        advance(root, "hwmon1", f"energy{i}_input", 999_000_000)  # cores: inside the sockets
    advance(root, "hwmon1", "energy9_input", 61_000_123)
    advance(root, "hwmon1", "energy10_input", 47_500_007)
    reading = source.read(5.0)
    assert reading.up
    assert reading.joules == {"cpu": 108_500_130 / 1e6}  # integer microjoules, divided once
    assert reading.measurements == ()  # footprint_rapl_energy_joules_total is RAPL's


def test_acpi_power_meter_in_the_legacy_layout_is_platform(tmp_path: Path) -> None:
    root, source = probed(tmp_path, "hwmon-acpi-power-meter")
    [meter] = [s for s in source.sensors() if s.added]
    assert (meter.driver, meter.label, meter.component) == ("power_meter", "", "platform")
    assert not any(s.device == "hwmon0" for s in source.sensors())  # coretemp: no power file
    source.read(10.0)
    write(root, "hwmon1", "power1_average", "231000000\n")
    assert source.read(12.0).joules == {"platform": 462.0}


def test_grace_sockets_are_platform_and_cpu_rails_are_cpu(tmp_path: Path) -> None:
    _, source = probed(tmp_path, "hwmon-nvidia-grace")
    assert {s.device: s.label for s in source.sensors()} == GRACE  # from power1_oem_info
    assert {s.label: s.why_not for s in source.sensors() if not s.added} == {
        "SysIO Power Socket 0": "the SoC rail, inside the socket",
        "SysIO Power Socket 1": "the SoC rail, inside the socket"}
    source.read(100.0)
    reading = source.read(101.0)  # constant power over one second
    assert reading.joules == {"cpu": 121.0 + 117.25, "platform": 182.5 + 176.0}


def test_gh200_module_power_covers_the_grace_socket(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "hwmon-nvidia-grace")
    module = device_dir(root, "hwmon7")
    shutil.copytree(device_dir(root, "hwmon1"), module)
    write(root, "hwmon7", "power1_oem_info", "Module Power Socket 0\n")
    write(root, "hwmon7", "power1_average", "650000000\n")
    source = HwmonSource(root / "sys")
    assert source.probe().components == {"cpu", "platform"}
    assert added(source) == {"hwmon2/power1_average": "cpu", "hwmon5/power1_average": "cpu",
                             "hwmon7/power1_average": "platform"}
    why = {s.label: s.why_not for s in source.sensors()}
    assert why["Grace Power Socket 0"] == "inside a coarser platform sensor"


def test_power9_prefers_energy_counters_and_whole_chips(tmp_path: Path) -> None:
    root, source = probed(tmp_path, "hwmon-ibm-power9")
    why = {(s.file, s.label): s.why_not for s in source.sensors()}
    assert why[("power1_input", "Chip 0")] == "an energy counter of hwmon0 covers cpu"
    assert why[("energy2_input", "Chip 0 Vdd")] == "inside a coarser cpu sensor"
    assert why[("energy9_input", "APSS 15")] == "a board supply channel"
    steps = {1: 157_000_001, 2: 113_000_000, 3: 12_000_000, 4: 99_000_003, 7: 426_000_000,
             8: 127_000_000, 9: 426_000_000}
    for i, uj in steps.items():
        advance(root, "hwmon0", f"energy{i}_input", uj)
        write(root, "hwmon0", f"power{i}_input", "9999000000\n")  # not read
    assert source.read(2.0).joules == {"cpu": 256_000_004 / 1e6, "platform": 426.0}


@pytest.mark.parametrize(("driver", "label", "component"), [
    ("apm_xgene", "CPU power", "cpu"),
    ("apm_xgene", "IO power", None),
    ("smpro_hwmon", "power1 CORE VRD", "cpu"),
    ("smpro_hwmon", "power2 SoC", None),
    ("smpro_hwmon", "power3 DIMM VRD1", "dram"),
    ("smpro_hwmon", "power5 RCA VRD", None),
    ("amd_energy", "Esocket1", "cpu"),
    ("amd_energy", "Ecore127", "cpu"),
    ("power_meter", "", "platform"),
    ("power_meter", "Module Power Socket 0", "platform"),
    ("power_meter", "Grace Power Socket 1", "platform"),
    ("power_meter", "CPU Power Socket 1", "cpu"),
    ("power_meter", "SysIO Power Socket 1", None),
    ("power_meter", "Total Power in uW socket 0", "platform"),
    ("power_meter", "CPU Rail Power in uW socket 0", "cpu"),
    ("power_meter", "SoC Rail Input Power in uW socket 0", None),
    ("power_meter", "DRAM Power in uW socket 0", "dram"),
    ("power_meter", "CPU Rail Output Power in uW socket 0", None),
    ("power_meter", "Total CPU Energy In uJ socket 0", None),
    ("power_meter", "Chipthrot DDR Throttle (samples x1000) socket 0", None),
    ("ibmpowernv", "Chip 8", "cpu"),
    ("ibmpowernv", "Chip 8 Vdn", "cpu"),
    ("ibmpowernv", "System", "platform"),
    ("ibmpowernv", "APSS 15", None),
    ("fam15h_power", "", "cpu"),
    ("zenpower", "SVI2_P_Core", "cpu"),
    ("some_bmc", "Memory Power", "dram"),
    ("some_bmc", "Node Power", "platform"),
    ("ina3221", "VDD_IN", None),
    ("amdgpu", "PPT", None),
    ("i915", "", None),
    ("xe", "pkg", None),
])
def test_mapping(driver: str, label: str, component: str | None) -> None:
    assert classify(driver, label)[0] == component


def test_per_core_is_added_only_without_a_package_sensor() -> None:
    assert classify("amd_energy", "Ecore000")[1] < classify("amd_energy", "Esocket0")[1]
    assert classify("ibmpowernv", "Chip 0 Vdd")[1] < classify("ibmpowernv", "Chip 0")[1]
    assert classify("power_meter", "Grace Power Socket 0")[1] < classify(
        "power_meter", "Module Power Socket 0")[1]


def test_unknown_sensors_are_logged_once_at_info(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    root = node_tree(tmp_path, "hwmon-ampere-altra")
    (device_dir(root, "hwmon1") / "power1_input").write_text("3000000\n")  # nvme, unlabelled
    caplog.set_level(logging.INFO, logger="footprint")
    source = HwmonSource(root / "sys")
    source.probe()
    for t in range(2, 5):
        source.read(float(t))
    unknown = [r for r in caplog.records if "no component matches it" in r.getMessage()]
    assert len(unknown) == 1 and unknown[0].levelno == logging.INFO
    assert "hwmon1 (nvme) power1_input" in unknown[0].getMessage()
    assert source.read(5.0).joules.keys() == {"cpu"}


def test_two_drivers_for_one_component_count_once(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "hwmon-amd-energy")
    other = device_dir(root, "hwmon0")  # k10temp gains a package power sensor (say, a BMC's)
    (other / "power1_input").write_text("95000000\n")
    (other / "power1_label").write_text("CPU package\n")
    source = HwmonSource(root / "sys")
    source.probe()
    why = {(s.device, s.file): s.why_not for s in source.sensors()}
    assert why[("hwmon0", "power1_input")] == "cpu is read from amd_energy"  # counters win
    assert why[("hwmon1", "energy9_input")] == ""


def test_power_average_is_preferred_over_power_input(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "hwmon-ampere-altra")
    (device_dir(root, "hwmon0") / "power1_average").write_text("40000000\n")
    source = HwmonSource(root / "sys")
    source.probe()
    assert added(source) == {"hwmon0/power1_average": "cpu"}


# -- energy and integration ------------------------------------------------------------------


def test_counter_energy_is_exact_over_many_reads(tmp_path: Path) -> None:
    root, source = probed(tmp_path, "hwmon-amd-energy")
    true_uj = 0
    seen = 0.0
    for i in range(200):
        step = 333_333_337 + i * 7919
        advance(root, "hwmon1", "energy9_input", step)
        true_uj += step
        seen += source.read(float(i + 1)).joules["cpu"]
    assert seen == pytest.approx(true_uj / 1e6, abs=1e-6)


def test_constant_power_integrates_exactly(tmp_path: Path) -> None:
    _, source = probed(tmp_path, "hwmon-ampere-altra")  # CPU power 45.25 W
    assert source.read(10.0).joules == {}  # the first read with a clock: a baseline only
    assert source.read(15.0).joules == {"cpu": 45.25 * 5}
    assert source.read(17.5).joules == {"cpu": 45.25 * 2.5}


def test_the_time_before_the_first_read_is_not_integrated(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "hwmon-ampere-altra")
    source = HwmonSource(root / "sys")
    source.probe()  # no clock at probe: a monotonic clock's first reading may be days
    assert source.read(86_400.0).joules == {}
    assert source.read(86_401.0).joules == {"cpu": 45.25}


def test_a_linear_ramp_integrates_exactly(tmp_path: Path) -> None:
    root, source = probed(tmp_path, "hwmon-ampere-altra")
    times = [0.0, 1.0, 3.0, 3.5, 7.0, 8.25, 12.0]

    def microwatts(t: float) -> int:
        return 40_000_000 + int(2_000_000 * t)  # 40 W + 2 W/s

    total = 0.0
    for t in times:
        write(root, "hwmon0", "power1_input", f"{microwatts(t)}\n")
        total += source.read(t).joules.get("cpu", 0.0)
    end = times[-1]
    assert total == pytest.approx(40.0 * end + end * end, rel=1e-12)  # the integral of 40 + 2t


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [
    "not-a-number\n", "", "-5\n", "1e6\n", "\u0662\u0663\n", "9" * 65 + "\n"])
def test_garbage_marks_one_sensor_down_and_the_gap_is_counted_on_recovery(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, garbage: str) -> None:
    root, source = probed(tmp_path, "hwmon-amd-energy")
    good = read_int(root, "hwmon1", "energy9_input")
    caplog.set_level(logging.INFO, logger="footprint")
    write(root, "hwmon1", "energy9_input", garbage)
    for t in (2.0, 3.0, 4.0):
        advance(root, "hwmon1", "energy10_input", 1_000_000)
        reading = source.read(t)
        assert not reading.up
        assert reading.joules == {"cpu": 1.0}  # socket 1 goes on
    faults = [r for r in caplog.records if "hwmon sensor" in r.getMessage()
              and "down" in r.getMessage()]
    assert len(faults) == 1, "the fault is logged once, not every tick"
    message = faults[0].getMessage()
    assert "energy9_input" in message and "amd_energy" in message
    assert "not a value in microjoules" in message and "dmesg" in message
    write(root, "hwmon1", "energy9_input", f"{good + 9_000_000}\n")
    reading = source.read(5.0)
    assert reading.up
    assert reading.joules == {"cpu": 9.0}  # used while unreadable, counted once
    assert any("readable again" in r.getMessage() for r in caplog.records)


def test_power_garbage_keeps_the_last_good_value_for_the_gap(tmp_path: Path) -> None:
    root, source = probed(tmp_path, "hwmon-ampere-altra")
    source.read(1.0)
    write(root, "hwmon0", "power1_input", "garbage\n")
    assert not source.read(2.0).up
    write(root, "hwmon0", "power1_input", "55250000\n")
    reading = source.read(3.0)
    assert reading.up
    assert reading.joules == {"cpu": (45.25 + 55.25) / 2 * 2}  # from t=1 to t=3


def test_implausible_power_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, source = probed(tmp_path, "hwmon-ampere-altra")
    source.read(1.0)
    write(root, "hwmon0", "power1_input", "20000000000\n")  # 20 kW
    reading = source.read(2.0)
    assert not reading.up and reading.joules == {}
    assert any("above 10000 W" in r.getMessage() for r in caplog.records)
    write(root, "hwmon0", "power1_input", "45250000\n")
    assert source.read(3.0).joules == {"cpu": 45.25 * 2}


def test_implausible_energy_step_is_refused_and_the_baseline_restarted(tmp_path: Path) -> None:
    root, source = probed(tmp_path, "hwmon-amd-energy")
    source.read(1.0)
    advance(root, "hwmon1", "energy9_input", 10**15)  # 1 GJ in one second
    reading = source.read(2.0)
    assert not reading.up
    assert reading.joules == {"cpu": 0.0}  # socket 1 unchanged; socket 0's step refused
    advance(root, "hwmon1", "energy9_input", 2_000_000)
    assert source.read(3.0).joules == {"cpu": 2.0}


def test_a_counter_that_goes_down_restarts_its_baseline(tmp_path: Path) -> None:
    root, source = probed(tmp_path, "hwmon-amd-energy")
    write(root, "hwmon1", "energy9_input", "100\n")  # driver reloaded
    advance(root, "hwmon1", "energy10_input", 1_000_000)
    reading = source.read(2.0)
    assert reading.up
    assert reading.joules == {"cpu": 1.0}  # nothing negative, nothing invented
    advance(root, "hwmon1", "energy9_input", 3_000_000)
    assert source.read(3.0).joules == {"cpu": 3.0}


def test_unreadable_file_marks_the_sensor_down(tmp_path: Path) -> None:
    root, source = probed(tmp_path, "hwmon-nvidia-grace")
    path = device_dir(root, "hwmon2") / "device" / "power1_average"
    path.unlink()
    path.mkdir()  # reading a directory fails like an unreadable file
    source.read(1.0)
    reading = source.read(2.0)
    assert not reading.up
    assert reading.joules == {"cpu": 117.25, "platform": 182.5 + 176.0}


def test_permission_denied_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    root = node_tree(tmp_path, "hwmon-amd-energy")
    real_open = os.open

    def root_only(path: str | os.PathLike[str], flags: int, *args: int) -> int:
        if str(path).endswith("energy9_input"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", root_only)
    status = HwmonSource(root / "sys").probe()
    assert status.enabled and status.components == {"cpu"}  # Esocket1 is readable
    assert "permission denied" in status.detail and "UID 0" in status.detail


def test_a_fifo_never_blocks_the_probe(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "hwmon-ampere-altra")
    value_file = device_dir(root, "hwmon0") / "power1_input"
    value_file.unlink()
    os.mkfifo(value_file)  # no writer: reading it would block without O_NONBLOCK
    status = HwmonSource(root / "sys").probe()
    assert not status.enabled and status.present
    assert "none could be read" in status.detail
    label_file = device_dir(root, "hwmon0") / "power1_label"
    label_file.unlink()
    os.mkfifo(label_file)  # reads as no label: the sensor is classified by the driver's name
    status = HwmonSource(root / "sys").probe()
    assert not status.enabled and "power1_input (unknown)" in status.detail


def test_no_readable_sensor_disables_the_source_with_the_reason(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "hwmon-amd-energy")
    write(root, "hwmon1", "energy9_input", "garbage\n")
    write(root, "hwmon1", "energy10_input", "garbage\n")
    status = HwmonSource(root / "sys").probe()
    assert not status.enabled and status.present
    assert "none could be read" in status.detail and "not a value" in status.detail


# -- devices that come and go ----------------------------------------------------------------


def test_vanished_device_and_its_return_with_a_new_baseline(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, source = probed(tmp_path, "hwmon-nvidia-grace")
    source.read(1.0)
    saved = tmp_path / "saved"
    shutil.move(device_dir(root, "hwmon5"), saved)  # CPU Power Socket 1
    reading = source.read(2.0)
    assert reading.up  # the sensors still there were all read
    assert reading.joules["cpu"] == 121.0
    assert any("hwmon5 (power_meter) vanished" in r.getMessage() for r in caplog.records)
    shutil.move(saved, device_dir(root, "hwmon5"))
    assert source.read(3.0).joules["cpu"] == 121.0  # back: a baseline only, nothing invented
    assert source.read(4.0).joules["cpu"] == 121.0 + 117.25


def test_a_device_that_appears_is_picked_up(tmp_path: Path) -> None:
    root, source = probed(tmp_path, "hwmon-ampere-altra")
    source.read(1.0)
    shutil.copytree(METER, device_dir(root, "hwmon2"))  # an ACPI power meter is loaded
    assert source.read(2.0).joules == {"cpu": 45.25}
    assert source.read(3.0).joules == {"cpu": 45.25, "platform": 231.0}



def test_everything_vanishing_marks_the_source_down(tmp_path: Path) -> None:
    root, source = probed(tmp_path, "hwmon-ampere-altra")
    shutil.rmtree(device_dir(root, "hwmon0"))
    reading = source.read(2.0)
    assert not reading.up and reading.joules == {}


# -- the components still free -----------------------------------------------------------------


def test_with_no_component_free_it_is_off(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "hwmon-ibm-power9")
    status = HwmonSource(root / "sys", components=frozenset()).probe()
    assert not status.enabled and not status.present
    assert "not needed" in status.detail


def test_components_owned_elsewhere_are_not_read(tmp_path: Path) -> None:
    _, source = probed(tmp_path, "hwmon-nvidia-grace",
                       components=frozenset({"cpu", "dram", "gpu"}))
    assert source.probe().components == {"cpu"}
    assert {s.why_not for s in source.sensors() if s.component == "platform"} == {
        "platform is covered by an earlier source"}
    source.read(1.0)
    assert source.read(2.0).joules == {"cpu": 121.0 + 117.25}


def test_only_sensors_for_owned_components_means_off(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "hwmon-amd-energy")  # with RAPL owning cpu (AMD Zen)
    status = HwmonSource(root / "sys", components=frozenset({"dram", "platform"})).probe()
    assert not status.enabled and not status.present
    assert "no sensor for dram/platform" in status.detail
    assert "cpu is covered by an earlier source" in status.detail


def test_temperature_only_devices_are_ignored(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "hwmon-acpi-power-meter")
    shutil.rmtree(device_dir(root, "hwmon1"))  # coretemp alone
    status = HwmonSource(root / "sys").probe()
    assert not status.enabled and not status.present
    assert "no power or energy sensor" in status.detail and "hwmon0 (coretemp)" in status.detail


def test_no_hwmon_class_says_why(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "intel-2s")
    status = HwmonSource(root / "sys").probe()
    assert not status.enabled and not status.present
    assert "no hwmon class" in status.detail


# -- the whole exporter ------------------------------------------------------------------------


def test_the_exporter_takes_cpu_from_hwmon_and_estimates_only_dram(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "hwmon-ampere-altra")  # no powercap tree: no RAPL
    settings = cli.parse_settings(["--path.sysfs", str(root / "sys"),
                                   "--path.procfs", str(root / "proc"),
                                   "--no-collector.kubernetes", "--no-collector.nvml"])
    clock = FakeClock(1000.0)
    sampler = cli.build_sampler(settings, process_metrics=False, clock=clock, timer=clock)
    statuses = {s.name: s.status for s in sampler.states}
    assert statuses["hwmon"].enabled and statuses["hwmon"].components == {"cpu"}
    assert statuses["estimated"].components == {"dram"}
    sampler.tick()  # the first tick with a clock: the power's baseline
    for microwatts in (52_000_000, 61_500_000):
        write(root, "hwmon0", "power1_input", f"{microwatts}\n")
        write(root, "hwmon0", "power2_input", "99000000\n")  # IO power: never added
        clock.now += 5.0
        series = parse(sampler.tick().text.decode())
    expected = (45.25 + 52.0) / 2 * 5 + (52.0 + 61.5) / 2 * 5
    assert value(series, "footprint_node_energy_joules_total",
                 component="cpu", source="hwmon") == pytest.approx(expected, abs=1e-9)
    owners = {dict(labels)["component"]: dict(labels)["source"]
              for name, labels in series if name == "footprint_node_energy_joules_total"}
    assert owners == {"cpu": "hwmon", "dram": "estimated"}
    assert value(series, "footprint_source_up", source="hwmon") == 1.0
    assert not any(name == "footprint_rapl_energy_joules_total" for name, _ in series)
