"""NVML source against the fake pynvml (tests/fakes/fake_nvml.py), shaped on real H100 readings."""

from __future__ import annotations

import ctypes
import logging
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.sources import nvml as nvml_module
from exporter.sources.gpu import GpuProcessUse, GpuReading, MigSlice
from exporter.sources.nvml import (
    MIG_RESCAN_READS,
    NO_DRIVER,
    NO_PYNVML,
    PROCESSES_EVERY_S,
    NvmlSource,
)
from tests.fakes import fake_nvml
from tests.fakes.fake_nvml import (
    MIB,
    NOT_MIG,
    FakeNvml,
    FakeProcess,
    NVMLError,
    a100_mig,
    h100,
    p100,
)

ROOT = Path(__file__).resolve().parent.parent


def started(*gpus: fake_nvml.FakeGpu,
            every: float = PROCESSES_EVERY_S) -> tuple[FakeNvml, NvmlSource]:
    """A probed source; `every`: its processes_every_s (0: processes at every read)."""
    fake = FakeNvml(gpus)
    source = NvmlSource(nvml=fake, processes_every_s=every)
    status = source.probe()
    assert status.enabled, status.detail
    return fake, source


def by_uuid(source: NvmlSource) -> dict[str, GpuReading]:
    return {g.uuid: g for g in source.gpus}


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# ---- probe -------------------------------------------------------------------------------

def test_probe_describes_every_gpu() -> None:
    fake = FakeNvml([h100(), p100(), a100_mig()])
    source = NvmlSource(nvml=fake)
    status = source.probe()
    assert status.enabled and status.present
    assert status.components == {"gpu"}
    assert status.detail.startswith("reading 3 of 3 GPUs: ")
    assert ("0 NVIDIA H100 80GB HBM3 GPU-d2e6c512-1c8c-b4b8-a8c8-6406cd97ac76 "
            "(energy counter, MIG off)") in status.detail
    assert "1 Tesla P100-PCIE-16GB GPU-0f0e0d0c-1111-2222-3333-00000000f100 " \
           "(integrated power, MIG not supported)" in status.detail
    assert "2 NVIDIA A100-SXM4-40GB" in status.detail
    assert "(energy counter, MIG on, 3 slices)" in status.detail
    assert fake.calls["nvmlInit"] == 1
    source.probe()
    assert fake.calls["nvmlInit"] == 1  # once


def test_library_not_found_turns_the_source_off() -> None:
    source = NvmlSource(nvml=FakeNvml([h100()], library_found=False))
    status = source.probe()
    assert not status.enabled
    assert not status.present
    assert status.detail == ("no NVIDIA driver here (libnvidia-ml.so.1 not found): "
                             "the GPU source is off")
    assert status.detail == NO_DRIVER
    assert source.read(1.0).up is False
    assert source.gpus == ()
    source.close()  # never started: nothing to shut down


def test_missing_pynvml_turns_the_source_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    status = NvmlSource().probe()
    assert (status.enabled, status.present, status.detail) == (False, False, NO_PYNVML)


def _driver_loadable() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_driver_loadable(), reason="this host has an NVIDIA driver")
def test_real_pynvml_without_driver_says_no_driver() -> None:
    pytest.importorskip("pynvml")
    status = NvmlSource().probe()
    assert (status.enabled, status.present, status.detail) == (False, False, NO_DRIVER)


@pytest.mark.parametrize(("code", "words"), [
    (fake_nvml.NVML_ERROR_DRIVER_NOT_LOADED, "NVMLError_DriverNotLoaded (Driver Not Loaded)"),
    (fake_nvml.NVML_ERROR_NO_PERMISSION, "run the exporter as root"),
])
def test_other_init_errors_keep_the_source_present(code: int, words: str) -> None:
    status = NvmlSource(nvml=FakeNvml([h100()], init_error=code)).probe()
    assert not status.enabled
    assert status.present
    assert words in status.detail
    assert status.detail.startswith("NVML did not start: ")


def test_no_gpu_at_all_is_not_present() -> None:
    status = NvmlSource(nvml=FakeNvml([])).probe()
    assert (status.enabled, status.present) == (False, False)
    assert "no GPU" in status.detail


def test_importing_the_source_needs_neither_pynvml_nor_kubernetes() -> None:
    code = ("import sys, exporter.sources.nvml, exporter.sources.gpu; "
            "print(sorted(m for m in ('pynvml', 'kubernetes') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- energy ------------------------------------------------------------------------------

def test_counter_deltas_are_exact_millijoules() -> None:
    gpu = h100()
    _fake, source = started(gpu)
    assert source.gpus[0].joules == 0.0  # the probe takes the baseline
    assert source.gpus[0].joules_total == 0.0
    gpu.energy_mj = 2_168_441 + 12_345
    reading = source.read(1.0)
    assert reading.up
    assert reading.joules == {"gpu": 12.345}
    (g,) = source.gpus
    assert (g.joules, g.joules_total, g.source, g.up) == (12.345, 12.345, "counter", True)
    gpu.energy_mj += 1
    assert source.read(2.0).joules == {"gpu": 0.001}
    assert source.gpus[0].joules_total == pytest.approx(12.346, abs=1e-12)


def test_counter_follows_fake_power_over_time() -> None:
    gpu = h100()
    fake, source = started(gpu)
    fake.set_watts(gpu, 697.6)
    fake.advance(10.0)
    source.read(10.0)
    assert source.gpus[0].joules == pytest.approx(6976.0, abs=0.001)
    assert source.gpus[0].power_watts == pytest.approx(697.6, abs=0.001)  # lag is over


def test_power_usage_lags_a_step_by_a_second_on_h100() -> None:
    gpu = h100()
    fake = FakeNvml([gpu])
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    fake.set_watts(gpu, 700.0)
    fake.advance(0.5)
    average, instant = fake.nvmlDeviceGetFieldValues(handle, [185, 186])
    assert fake.nvmlDeviceGetPowerUsage(handle) == average.value.uiVal == round(
        (123.8 * 0.5 + 700 * 0.5) * 1000)
    assert instant.value.uiVal == 700_000
    assert (average.nvmlReturn, average.valueType) == (0, 1)
    fake.advance(1.0)
    assert fake.nvmlDeviceGetPowerUsage(handle) == 700_000


def test_old_gpu_integrates_power_by_trapezoid() -> None:
    gpu = p100()
    fake, source = started(gpu)
    assert source.read(10.0).joules == {"gpu": 0.0}  # the probe had no time: baseline now
    assert source.gpus[0].source == "integrated"
    assert source.gpus[0].power_watts == 30.0
    fake.set_watts(gpu, 50.0)
    reading = source.read(12.0)
    assert reading.joules == {"gpu": 80.0}  # (30 W + 50 W) / 2 x 2 s
    fake.set_watts(gpu, 250.0)
    source.read(12.5)
    assert source.gpus[0].joules == pytest.approx(75.0)  # (50 + 250) / 2 x 0.5 s
    assert source.gpus[0].joules_total == pytest.approx(155.0)
    assert source.read(12.0).joules == {"gpu": 0.0}  # time went back: nothing, not negative
    assert source.read(13.0).joules == {"gpu": 250.0}
    assert fake.calls["nvmlDeviceGetTotalEnergyConsumption"] == 1  # NotSupported once, at probe


def test_counter_reset_starts_a_new_baseline(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="footprint")
    gpu = h100()
    fake, source = started(gpu)
    gpu.energy_mj += 5_000
    source.read(1.0)
    fake.reset_counter(gpu, to_mj=1_000)  # driver reload
    reading = source.read(2.0)
    assert reading.up
    assert reading.joules == {"gpu": 0.0}
    assert source.gpus[0].joules_total == 5.0
    gpu.energy_mj = 1_700
    source.read(3.0)
    assert (source.gpus[0].joules, source.gpus[0].joules_total) == (0.7, 5.7)
    assert messages(caplog, "energy counter went back from 2173441 to 1000 mJ")


@given(steps=st.lists(st.one_of(st.integers(0, 10**7), st.just(-1)), max_size=30))
def test_totals_never_decrease(steps: list[int]) -> None:
    gpu = h100()
    fake, source = started(gpu)
    total = 0.0
    for i, step in enumerate(steps):
        if step < 0:
            fake.reset_counter(gpu, to_mj=0)
        else:
            gpu.energy_mj += step
        source.read(float(i))
        (g,) = source.gpus
        assert g.joules >= 0.0
        assert g.joules_total >= total
        assert g.joules_total == pytest.approx(total + g.joules)
        total = g.joules_total
    assert total == pytest.approx(sum(s for s in steps if s >= 0) / 1000.0)


# ---- faults ------------------------------------------------------------------------------

def test_lost_gpu_is_down_others_go_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="footprint")
    lost, old, mig = h100(), p100(), a100_mig()
    fake, source = started(lost, old, mig)
    source.read(1.0)
    lost.energy_mj += 10_000
    mig.energy_mj += 4_000
    source.read(2.0)
    assert by_uuid(source)[lost.uuid].joules_total == 10.0
    lost.lost = True
    for now in (3.0, 4.0, 5.0):
        lost.energy_mj += 1_000
        mig.energy_mj += 2_000
        fake.set_watts(old, 40.0)
        reading = source.read(now)
        assert not reading.up
        gpus = by_uuid(source)
        assert not gpus[lost.uuid].up
        assert gpus[lost.uuid].joules == 0.0
        assert gpus[lost.uuid].joules_total == 10.0  # kept
        assert gpus[lost.uuid].index == 0 and gpus[lost.uuid].product == lost.name
        assert gpus[lost.uuid].processes == ()
        assert gpus[mig.uuid].up and gpus[mig.uuid].joules == 2.0
        assert gpus[old.uuid].up
        assert reading.joules["gpu"] == pytest.approx(2.0 + gpus[old.uuid].joules)
    faults = messages(caplog, lost.uuid)
    assert len(faults) == 1, faults  # once, not per read
    assert "GPU 0 (NVIDIA H100 80GB HBM3, GPU-d2e6c512" in faults[0]
    assert "is lost" in faults[0] and "nvidia-smi -r" in faults[0]
    lost.lost = False
    lost.energy_mj += 500
    reading = source.read(6.0)
    assert reading.up
    # the counter kept counting while lost: that energy was really used
    assert by_uuid(source)[lost.uuid].joules == 3.5
    assert messages(caplog, "readable again")


def test_one_failing_call_marks_only_that_gpu_down(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="footprint")
    first, second = h100(), h100("GPU-11111111-2222-3333-4444-555555555555")
    fake, source = started(first, second)
    real = fake.nvmlDeviceGetTotalEnergyConsumption

    def flaky(handle: Any) -> int:
        if handle.gpu is second:
            raise NVMLError(fake_nvml.NVML_ERROR_UNKNOWN)
        return real(handle)

    fake.nvmlDeviceGetTotalEnergyConsumption = flaky  # type: ignore[method-assign]
    first.energy_mj += 1_000
    reading = source.read(1.0)
    assert not reading.up
    assert reading.joules == {"gpu": 1.0}
    assert [g.up for g in source.gpus] == [True, False]
    assert source.gpus[1].power_watts is None
    (fault,) = messages(caplog, second.uuid)
    assert "NVMLError_Unknown (Unknown Error)" in fault
    assert f"nvidia-smi -q -i {second.uuid}" in fault


def test_gpu_lost_before_probe_is_reported() -> None:
    ok, gone = h100(), p100()
    gone.lost = True
    source = NvmlSource(nvml=FakeNvml([ok, gone]))
    status = source.probe()
    assert status.enabled
    assert "GPU 1 cannot be identified: NVMLError_GpuIsLost (GPU is lost)" in status.detail
    assert source.read(1.0).up is False
    assert [g.uuid for g in source.gpus] == [ok.uuid]


def test_all_gpus_unreadable_disables() -> None:
    gpu = h100()
    gpu.lost = True
    status = NvmlSource(nvml=FakeNvml([gpu])).probe()
    assert (status.enabled, status.present) == (False, True)
    assert "GpuIsLost" in status.detail


def test_gpus_are_keyed_by_uuid_when_indexes_change() -> None:
    first, second = h100(), p100()
    fake, source = started(first, second)
    first.energy_mj += 3_000
    source.read(1.0)
    fake.gpus.reverse()
    first.energy_mj += 2_000
    source.read(2.0)
    gpus = by_uuid(source)
    assert (gpus[first.uuid].index, gpus[first.uuid].joules_total) == (1, 5.0)
    assert gpus[second.uuid].index == 0
    assert [g.uuid for g in source.gpus] == [second.uuid, first.uuid]


def test_vanished_gpu_keeps_its_total_and_is_down() -> None:
    first, second = h100(), h100("GPU-11111111-2222-3333-4444-555555555555")
    fake, source = started(first, second)
    second.energy_mj += 7_000
    source.read(1.0)
    fake.gpus.remove(second)
    reading = source.read(2.0)
    assert not reading.up
    assert by_uuid(source)[second.uuid].joules_total == 7.0
    assert not by_uuid(source)[second.uuid].up


def test_process_query_failure_keeps_energy(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="footprint")
    gpu = h100()
    gpu.processes = [FakeProcess(414)]
    fake, source = started(gpu)

    def denied(handle: Any) -> list[Any]:
        raise NVMLError(fake_nvml.NVML_ERROR_NO_PERMISSION)

    fake.nvmlDeviceGetComputeRunningProcesses = denied  # type: ignore[method-assign]
    gpu.energy_mj += 2_000
    for now in (1.0, 2.0):
        reading = source.read(now)
        assert reading.up and reading.joules == {"gpu": 2.0 if now == 1.0 else 0.0}
        assert source.gpus[0].processes == ()
    assert len(messages(caplog, "cannot list its MIG devices or processes")) == 1


def test_utilisation_failure_keeps_the_process_list(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="footprint")
    gpu = h100()
    gpu.processes = [FakeProcess(414, 10)]
    fake, source = started(gpu)

    def no_data(handle: Any, last_seen: int) -> list[Any]:
        raise NVMLError(fake_nvml.NVML_ERROR_NO_DATA)

    fake.nvmlDeviceGetProcessUtilization = no_data  # type: ignore[method-assign]
    source.read(1.0)
    source.read(2.0)
    assert source.gpus[0].up
    assert source.gpus[0].processes == (GpuProcessUse(414, None, 10, None),)
    assert len(messages(caplog, "no per-process utilisation: NVMLError_NoData")) == 1


def test_close_shuts_nvml_down_once() -> None:
    fake, source = started(h100())
    source.close()
    source.close()
    assert fake.calls["nvmlShutdown"] == 1
    assert fake.refcount == 0
    assert source.read(1.0).up is False


# ---- processes and utilisation -----------------------------------------------------------

def test_processes_memory_and_sm_util_with_last_seen() -> None:
    gpu = h100()
    gpu.processes = [FakeProcess(414, 1_151_336_448), FakeProcess(500, None)]
    fake, source = started(gpu, every=0)  # processes at every read
    asked: list[int] = []
    real = fake.nvmlDeviceGetProcessUtilization

    def spy(handle: Any, last_seen: int) -> list[Any]:
        asked.append(last_seen)
        return real(handle, last_seen)

    fake.nvmlDeviceGetProcessUtilization = spy  # type: ignore[method-assign]
    fake.advance(2.0)
    s1 = fake.add_sample(gpu, 414, 93, 30)
    fake.add_sample(gpu, 500, 4)
    source.read(2.0)
    assert source.gpus[0].processes == (
        GpuProcessUse(414, None, 1_151_336_448, 93.0),
        GpuProcessUse(500, None, None, 4.0),
    )
    assert asked == [0]
    source.read(2.1)  # nothing newer: NVMLError_NotFound, which is normal
    assert asked == [0, s1]  # both samples were taken at s1
    assert source.gpus[0].up
    assert [p.sm_util for p in source.gpus[0].processes] == [None, None]
    assert [p.used_memory_bytes for p in source.gpus[0].processes] == [1_151_336_448, None]
    fake.advance(2.0)
    s2 = fake.add_sample(gpu, 414, 99)
    source.read(4.1)
    assert asked[-1] == s1
    assert [p.sm_util for p in source.gpus[0].processes] == [99.0, None]
    source.read(4.2)
    assert asked[-1] == s2


def test_sm_util_is_the_mean_of_a_backlog() -> None:
    gpu = h100()
    gpu.util_backlog = True
    gpu.processes = [FakeProcess(414)]
    fake, source = started(gpu)
    fake.advance(1.0)
    fake.add_sample(gpu, 414, 90, age_us=900_000)
    fake.add_sample(gpu, 414, 100, age_us=100_000)
    fake.add_sample(gpu, 77, 10)  # sampled but no longer listed
    source.read(1.0)
    assert source.gpus[0].processes == (
        GpuProcessUse(77, None, None, 10.0),
        GpuProcessUse(414, None, 1_050_673_152, 95.0),
    )


def test_no_processes_is_an_empty_list_and_not_available_memory_is_none() -> None:
    gpu = h100()
    _fake, source = started(gpu, every=0)  # processes at every read
    source.read(1.0)
    assert source.gpus[0].processes == ()
    gpu.processes = [FakeProcess(9, fake_nvml.NVML_VALUE_NOT_AVAILABLE_ulonglong),
                     FakeProcess(10, 0)]
    source.read(2.0)
    assert [(p.pid, p.used_memory_bytes) for p in source.gpus[0].processes] == [(9, None),
                                                                                 (10, 0)]


# ---- cadence: energy every read, processes every processes_every_s ----------------------

PER_REFRESH = ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetMPSComputeRunningProcesses",
               "nvmlDeviceGetProcessUtilization", "nvmlDeviceGetMigMode")
"""The calls a process refresh makes per GPU (MIG capable, MIG off: no enumeration)."""


def eight_busy_h100s() -> list[fake_nvml.FakeGpu]:
    gpus = [h100(f"GPU-00000000-0000-4000-8000-00000000000{i}") for i in range(8)]
    for i, gpu in enumerate(gpus):
        gpu.processes = [FakeProcess(1000 + i)]
    return gpus


def test_call_counts_over_50_reads_of_8_gpus() -> None:
    """The default cadence at the sampler's default 5 s tick: energy and power at each of the
    50 reads, processes, utilisation and MIG mode at the probe, the first read, then every
    30 s (reads at 35, 65, ..., 245 s): 10 refreshes per GPU instead of 51."""
    gpus = eight_busy_h100s()
    fake, source = started(*gpus)  # processes_every_s = PROCESSES_EVERY_S = 30
    assert source.processes_every_s == PROCESSES_EVERY_S == 30.0
    probe = fake.take_calls()
    assert all(probe[name] == 8 for name in PER_REFRESH)
    tick, reads = 5.0, 50
    refresh_at = [tick] + [t for t in range(35, 251, 30)]  # first read, then every 30 s
    assert len(refresh_at) == 9
    refreshed: list[float] = []
    for i in range(1, reads + 1):
        now = tick * i
        fake.advance(tick)
        for gpu in gpus:
            fake.add_sample(gpu, gpu.processes[0].pid, 40 + i)  # a sample per tick: complete
        before = fake.calls["nvmlDeviceGetComputeRunningProcesses"]
        reading = source.read(now)
        assert reading.up
        if fake.calls["nvmlDeviceGetComputeRunningProcesses"] > before:
            refreshed.append(now)
        assert all(len(g.processes) == 1 for g in source.gpus)  # held between refreshes
    calls = fake.take_calls()
    assert refreshed == refresh_at
    assert calls["nvmlDeviceGetCount"] == reads
    for name in ("nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetPowerUsage",
                 "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetUUID"):
        assert calls[name] == 8 * reads, name
    for name in PER_REFRESH:
        assert calls[name] == 8 * len(refresh_at), name
    assert calls["nvmlDeviceGetName"] == 0  # known GPUs are not named again
    assert sum(calls.values()) == reads + 8 * (4 * reads + 4 * len(refresh_at))  # 1,938
    # the energy is exact: each GPU's watts x 250 s, to the millijoule counter's resolution
    for gpu, reading_ in zip(gpus, source.gpus, strict=True):
        assert reading_.joules_total == pytest.approx(gpu.watts * tick * reads, abs=0.01)


def test_processes_at_every_read_when_asked() -> None:
    gpus = eight_busy_h100s()
    fake, source = started(*gpus, every=0)
    fake.take_calls()
    for i in range(1, 51):
        source.read(5.0 * i)
    calls = fake.take_calls()
    for name in (*PER_REFRESH, "nvmlDeviceGetTotalEnergyConsumption"):
        assert calls[name] == 8 * 50, name
    assert sum(calls.values()) == 50 + 8 * 8 * 50  # 3,250, against 1,938 at the default


def test_the_refresh_is_the_read_nearest_the_period() -> None:
    """Ticks jitter: a 5 s tick 2 ms early still refreshes at 30 s, not a tick later."""
    gpu = h100()
    gpu.processes = [FakeProcess(7)]
    fake, source = started(gpu, every=30.0)
    refreshed = []
    for i in range(1, 26):
        now = 5.0 * i + (-0.002 if i % 2 else 0.003)
        fake.add_sample(gpu, 7, 50)
        fake.advance(0.2)
        before = fake.calls["nvmlDeviceGetComputeRunningProcesses"]
        source.read(now)
        if fake.calls["nvmlDeviceGetComputeRunningProcesses"] > before:
            refreshed.append(i)
    assert refreshed == [1, 7, 13, 19, 25]  # every sixth tick, from the first read
    # time going back (a restarted clock) restarts the schedule at once
    before = fake.calls["nvmlDeviceGetComputeRunningProcesses"]
    source.read(1.0)
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses"] == before + 1


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_the_cadence_must_be_a_finite_number_of_seconds(bad: float) -> None:
    with pytest.raises(ValueError, match="processes_every_s"):
        NvmlSource(nvml=FakeNvml([h100()]), processes_every_s=bad)


def test_energy_is_the_same_whatever_the_cadence() -> None:
    """Two sources on the same GPUs, one refreshing at every read: identical joules."""
    gpus = [h100(), p100(), a100_mig()]
    gpus[0].processes = [FakeProcess(1), FakeProcess(2)]
    gpus[2].processes = [FakeProcess(3, 1 << 30, 2, 0)]
    fake = FakeNvml(gpus)
    every_read, slow = NvmlSource(nvml=fake, processes_every_s=0), NvmlSource(nvml=fake)
    assert every_read.probe().enabled and slow.probe().enabled
    for i in range(1, 40):
        fake.set_watts(gpus[i % 3], 100.0 + 17 * i)
        fake.advance(1.0)
        fake.add_sample(gpus[0], 1, i % 100)
        a, b = every_read.read(float(i)), slow.read(float(i))
        assert (a.up, a.joules) == (b.up, b.joules)
        assert [g.joules for g in every_read.gpus] == [g.joules for g in slow.gpus]
        assert [g.power_watts for g in every_read.gpus] == [g.power_watts for g in slow.gpus]
    # 3 GPUs: 40 lists for the one (probe + 39 reads), 3 for the other (probe, 1 s, 31 s)
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses"] == 3 * 40 + 3 * 3


def test_between_refreshes_the_latest_known_shares_hold() -> None:
    """The utilisation NVML returns at a refresh is every sample since lastSeen (the whole
    period, where the driver keeps a backlog); the shares then hold until the next one."""
    gpu = h100()
    gpu.util_backlog = True
    gpu.processes = [FakeProcess(10), FakeProcess(20)]
    fake, source = started(gpu, every=10.0)

    def shares() -> dict[int, float | None]:
        return {p.pid: p.sm_util for p in source.gpus[0].processes}

    for now in range(1, 12):  # 70/30 at first, 20/80 from 5 s on
        fake.advance(1.0)
        fake.add_sample(gpu, 10, 70 if now < 5 else 20)
        fake.add_sample(gpu, 20, 30 if now < 5 else 80)
        source.read(float(now))
        if now == 1:  # the first read refreshes: only its own second's samples
            assert shares() == {10: 70.0, 20: 30.0}
        elif now < 11:  # held: the latest known shares
            assert shares() == {10: 70.0, 20: 30.0}, now
    # at 11 s: every sample since the first read's newest, 2..11 s: 3 x 70 + 7 x 20, and so on
    assert shares() == {10: pytest.approx((3 * 70 + 7 * 20) / 10),
                        20: pytest.approx((3 * 30 + 7 * 80) / 10)}


def test_process_changes_show_within_the_period() -> None:
    gpu = h100()
    gpu.processes = [FakeProcess(10)]
    fake, source = started(gpu, every=10.0)
    fake.add_sample(gpu, 10, 50)
    source.read(1.0)
    assert [p.pid for p in source.gpus[0].processes] == [10]
    fake.advance(1.0)
    gpu.processes.append(FakeProcess(20))  # starts after the refresh ...
    fake.add_sample(gpu, 20, 60)
    for now in range(2, 11):
        fake.advance(1.0)
        source.read(float(now))
        assert [p.pid for p in source.gpus[0].processes] == [10], now  # ... unseen until
    fake.add_sample(gpu, 10, 40)
    fake.add_sample(gpu, 20, 60)
    source.read(11.0)  # ... the next refresh, 10 s after the last one
    assert source.gpus[0].processes == (GpuProcessUse(10, None, 1_050_673_152, 40.0),
                                        GpuProcessUse(20, None, 1_050_673_152, 60.0))
    # one that started and ended between two refreshes is seen only by its samples, at the
    # refresh; from the next read on, the listed processes are held without it
    gpu.processes = [FakeProcess(10)]
    fake.advance(1.0)
    fake.add_sample(gpu, 30, 90)
    fake.add_sample(gpu, 10, 10)
    for now in range(12, 22):
        source.read(float(now))
    assert [(p.pid, p.sm_util) for p in source.gpus[0].processes] == [(10, 10.0), (30, 90.0)]
    source.read(22.0)
    assert [(p.pid, p.sm_util) for p in source.gpus[0].processes] == [(10, 10.0)]


def test_an_incomplete_refresh_is_retried_once_at_the_next_read() -> None:
    """Processes listed but no utilisation sample yet (a refresh just before NVML's next
    sample, or a process just started): asked again at the next read, once."""
    gpu = h100()
    gpu.processes = [FakeProcess(10), FakeProcess(20)]
    fake, source = started(gpu, every=30.0)
    fake.take_calls()
    source.read(5.0)  # scheduled (first read); NotFound: no sample yet
    assert [p.sm_util for p in source.gpus[0].processes] == [None, None]
    source.read(10.0)  # the retry: still none
    for now in (15.0, 20.0, 25.0):
        source.read(now)  # no third try until the schedule says so
    assert fake.take_calls()["nvmlDeviceGetProcessUtilization"] == 2
    fake.add_sample(gpu, 10, 75)
    fake.add_sample(gpu, 20, 25)
    source.read(35.0)
    assert [p.sm_util for p in source.gpus[0].processes] == [75.0, 25.0]
    source.read(40.0)  # complete: no retry, the shares hold
    assert [p.sm_util for p in source.gpus[0].processes] == [75.0, 25.0]
    assert fake.take_calls()["nvmlDeviceGetProcessUtilization"] == 1
    # an idle GPU (nothing listed) is complete without samples; so is one without per-process
    # utilisation (MIG on)
    gpu.processes = []
    source.read(65.0)
    source.read(70.0)
    mig_fake, mig_source = started(a100_mig())
    mig_fake.take_calls()
    mig_source.read(5.0)
    mig_source.read(10.0)
    assert fake.take_calls()["nvmlDeviceGetComputeRunningProcesses"] == 1
    assert mig_fake.take_calls()["nvmlDeviceGetComputeRunningProcesses"] == 1


def test_a_failed_refresh_is_retried_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="footprint")
    gpu = h100()
    gpu.processes = [FakeProcess(10)]
    fake, source = started(gpu, every=30.0)
    real = fake.nvmlDeviceGetComputeRunningProcesses
    failures = [2]

    def flaky(handle: Any) -> list[Any]:
        if failures[0] > 0:
            failures[0] -= 1
            raise NVMLError(fake_nvml.NVML_ERROR_UNKNOWN)
        return real(handle)

    fake.nvmlDeviceGetComputeRunningProcesses = flaky  # type: ignore[method-assign]
    fake.add_sample(gpu, 10, 50)
    gpu.energy_mj += 1_000
    assert source.read(5.0).joules == {"gpu": 1.0}  # energy counts, processes unknown
    assert source.gpus[0].processes == ()
    source.read(10.0)  # the retry fails too: unknown until the schedule's next refresh
    source.read(15.0)
    assert source.gpus[0].processes == () and failures == [0]
    source.read(35.0)
    assert [p.pid for p in source.gpus[0].processes] == [10]
    assert len(messages(caplog, "cannot list its MIG devices or processes")) == 1
    assert len(messages(caplog, "processes readable again")) == 1


def test_a_gpu_back_from_down_lists_its_processes_at_once() -> None:
    gpu = h100()
    gpu.processes = [FakeProcess(10)]
    fake, source = started(gpu, every=30.0)
    fake.add_sample(gpu, 10, 50)
    source.read(5.0)
    gpu.lost = True
    source.read(10.0)
    assert source.gpus[0].processes == ()
    gpu.lost = False
    gpu.processes = [FakeProcess(11)]  # a new job after the reset
    fake.advance(5.0)
    fake.add_sample(gpu, 11, 60)
    source.read(15.0)
    assert [(p.pid, p.sm_util) for p in source.gpus[0].processes] == [(11, 60.0)]


def test_mig_layout_follows_the_refreshes() -> None:
    """MIG mode and slices are read at refreshes; a process in a slice not known yet has the
    slices enumerated again at the next read, not a period later."""
    gpu = a100_mig()
    fake, source = started(gpu, every=30.0)
    assert fake.take_calls()["nvmlDeviceGetMaxMigDeviceCount"] == 1
    source.read(5.0)  # first read: MIG mode read again, no enumeration (age 1)
    for now in (10.0, 15.0, 20.0):
        source.read(now)
    calls = fake.take_calls()
    assert (calls["nvmlDeviceGetMigMode"], calls["nvmlDeviceGetMaxMigDeviceCount"]) == (1, 0)
    gpu.mig_slots[2] = fake_nvml.FakeMigDevice("MIG-new", "1g.5gb", 9, 0, 4_864 * MIB)
    gpu.processes = [FakeProcess(7, 1, 9, 0)]
    source.read(35.0)  # scheduled: lists the process, its slice is unknown
    assert source.gpus[0].processes[0].mig_uuid is None
    source.read(40.0)  # the retry enumerates
    assert source.gpus[0].processes[0].mig_uuid == "MIG-new"
    assert fake.take_calls()["nvmlDeviceGetMaxMigDeviceCount"] == 1
    # re-carved without a process to say so: found within MIG_RESCAN_READS reads, at a refresh
    for i in range(MIG_RESCAN_READS + 6):
        source.read(45.0 + 5 * i)
    assert fake.take_calls()["nvmlDeviceGetMaxMigDeviceCount"] == 1


# ---- MIG ---------------------------------------------------------------------------------

def test_mig_slices_fractions_and_process_mapping() -> None:
    gpu = a100_mig()
    gpu.processes = [FakeProcess(1001, 5 << 30, 2, 0), FakeProcess(1002, 1 << 30, 5, 0),
                     FakeProcess(1003, 2 << 30, 3, 0)]
    fake, source = started(gpu)
    fake.advance(1.0)
    (g,) = source.gpus
    assert g.mig == (
        MigSlice("MIG-3c1d3a3e-5d33-5b8a-9a2e-000000000003", 2, 0, 19_968 / 40_960),
        MigSlice("MIG-3c1d3a3e-5d33-5b8a-9a2e-000000000002", 3, 0, 9_856 / 40_960),
        MigSlice("MIG-3c1d3a3e-5d33-5b8a-9a2e-000000000005", 5, 0, 9_856 / 40_960),
    )
    assert 0.95 < sum(s.fraction for s in g.mig) <= 1.0
    assert {p.pid: p.mig_uuid for p in g.processes} == {
        1001: "MIG-3c1d3a3e-5d33-5b8a-9a2e-000000000003",
        1002: "MIG-3c1d3a3e-5d33-5b8a-9a2e-000000000005",
        1003: "MIG-3c1d3a3e-5d33-5b8a-9a2e-000000000002",
    }
    assert all(p.sm_util is None for p in g.processes)  # no per-process utilisation under MIG
    assert g.source == "counter" and g.power_watts == 60.0


def test_mig_enumeration_is_occasional() -> None:
    gpu = a100_mig()
    fake, source = started(gpu, every=0)  # processes at every read
    enumerations = fake.calls["nvmlDeviceGetMaxMigDeviceCount"]
    assert enumerations == 1
    for i in range(MIG_RESCAN_READS - 1):
        source.read(float(i))
    assert fake.calls["nvmlDeviceGetMaxMigDeviceCount"] == 1
    source.read(100.0)
    assert fake.calls["nvmlDeviceGetMaxMigDeviceCount"] == 2
    # a process in a slice made since: enumerate at the next read
    gpu.mig_slots[2] = fake_nvml.FakeMigDevice("MIG-new", "1g.5gb", 9, 0, 4_864 * MIB)
    gpu.processes = [FakeProcess(7, 1, 9, 0)]
    source.read(101.0)
    assert source.gpus[0].processes[0].mig_uuid is None
    source.read(102.0)
    assert fake.calls["nvmlDeviceGetMaxMigDeviceCount"] == 3
    assert source.gpus[0].processes[0].mig_uuid == "MIG-new"
    assert len(source.gpus[0].mig) == 4


def test_mig_turned_off_empties_the_slices() -> None:
    gpu = a100_mig()
    gpu.processes = [FakeProcess(5)]
    fake, source = started(gpu, every=0)  # processes at every read
    assert len(source.gpus[0].mig) == 3
    gpu.mig_mode = fake_nvml.NVML_DEVICE_MIG_DISABLE
    fake.advance(1.0)
    fake.add_sample(gpu, 5, 42)
    source.read(1.0)
    (g,) = source.gpus
    assert g.mig == ()
    assert g.processes == (GpuProcessUse(5, None, 1_050_673_152, 42.0),)
    gpu.mig_mode = fake_nvml.NVML_DEVICE_MIG_ENABLE
    source.read(2.0)
    assert len(source.gpus[0].mig) == 3  # mode changed: enumerated at once


# ---- the fake itself ---------------------------------------------------------------------

def test_fake_errors_match_real_pynvml() -> None:
    pynvml = pytest.importorskip("pynvml")
    real = {name: getattr(pynvml, name) for name in dir(pynvml) if name.startswith("NVMLError_")}
    assert set(real) == set(fake_nvml.ERROR_CLASSES)
    for name, cls in fake_nvml.ERROR_CLASSES.items():
        assert cls().value == real[name]().value, name
        assert str(cls()) == str(real[name]()), name
    assert type(NVMLError(15)).__name__ == "NVMLError_GpuIsLost"
    assert isinstance(NVMLError(6), fake_nvml.NVMLError_NotFound)
    assert fake_nvml.NVML_FI_DEV_POWER_AVERAGE == pynvml.NVML_FI_DEV_POWER_AVERAGE
    assert fake_nvml.NVML_FI_DEV_POWER_INSTANT == pynvml.NVML_FI_DEV_POWER_INSTANT
    assert fake_nvml.NVML_DEVICE_MIG_ENABLE == pynvml.NVML_DEVICE_MIG_ENABLE
    assert NOT_MIG == 0xFFFFFFFF
    for name in ("nvmlDeviceGetProcessUtilization", "nvmlDeviceGetComputeRunningProcesses",
                 "nvmlDeviceGetMigDeviceHandleByIndex", "nvmlDeviceGetFieldValues"):
        assert hasattr(pynvml, name) and hasattr(FakeNvml, name)


def test_fake_util_and_lost_behave_as_the_real_driver() -> None:
    gpu = h100()
    fake = FakeNvml([gpu])
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    assert fake.nvmlDeviceGetComputeRunningProcesses(handle) == []
    with pytest.raises(fake_nvml.NVMLError_NotFound):
        fake.nvmlDeviceGetProcessUtilization(handle, 0)
    fake.add_sample(gpu, 414, 1)
    fake.advance(2.0)
    last = fake.add_sample(gpu, 414, 93)
    (sample,) = fake.nvmlDeviceGetProcessUtilization(handle, 0)  # only the latest
    assert (sample.timeStamp, sample.smUtil) == (last, 93)
    with pytest.raises(fake_nvml.NVMLError_NotFound):
        fake.nvmlDeviceGetProcessUtilization(handle, last)
    assert fake.nvmlDeviceGetMigMode(handle) == [0, 0]
    gpu.lost = True
    with pytest.raises(fake_nvml.NVMLError_GpuIsLost):
        fake.nvmlDeviceGetPowerUsage(handle)
    with pytest.raises(fake_nvml.NVMLError_GpuIsLost):
        fake.nvmlDeviceGetHandleByIndex(0)


def test_nvml_module_is_the_only_pynvml_importer() -> None:
    sources = [p for p in (ROOT / "exporter").rglob("*.py") if "pynvml" in p.read_text()]
    assert [p.name for p in sources] == ["nvml.py"]
    assert nvml_module.SPEC.label == "nvml"


@pytest.mark.parametrize("mode", ["env", "volume-mounts", "cdi"])
def test_no_driver_says_what_to_check_for_the_charts_gpu_injection(
        monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setenv("FOOTPRINT_GPU_INJECTION", mode)
    status = NvmlSource(nvml=FakeNvml(library_found=False)).probe()
    assert status.detail.startswith(f"{NO_DRIVER}; gpu.injection={mode}: ")
    others = {"env": "envvar-when-unprivileged", "volume-mounts": "as-volume-mounts",
              "cdi": "nvidia-ctk cdi list"}
    assert others[mode] in status.detail  # the row of docs/install.md's table it points to
    assert [m for m, word in others.items() if word in status.detail] == [mode]
