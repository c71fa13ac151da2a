"""What the GPU source reads per GPU: plain data, importable without NVML."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MigSlice:
    """One MIG device (a compute instance inside a GPU instance) of a board."""

    uuid: str
    """`MIG-...`, as NVML and `NVIDIA_VISIBLE_DEVICES` name it."""
    gpu_instance_id: int
    compute_instance_id: int
    fraction: float
    """Its share of the board, in (0, 1]: the MIG device's memory total over the board's
    (`nvmlDeviceGetMemoryInfo` on both handles), e.g. about 0.49 for 3g.20gb on an A100 40GB
    (4 of 8 memory slices, less what the driver reserves). Fractions of a fully carved board
    add up to a little under 1."""


@dataclass(frozen=True, slots=True)
class GpuProcessUse:
    """One process on one GPU, as the last process refresh saw it."""

    pid: int
    """A host PID (NVML reports the host PID namespace's numbers)."""
    mig_uuid: str | None
    """The MIG device it runs on (from its GPU and compute instance ids); None when not MIG."""
    used_memory_bytes: int | None
    """None where NVML cannot tell (and for a process seen only in utilisation samples)."""
    sm_util: float | None
    """Mean SM utilisation (percent) over the samples NVML gave at the last process refresh
    (those since the refresh before); None when there was no new sample or the GPU does not
    report per-process utilisation (MIG). Held between refreshes (docs/gpus.md#cadence)."""


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU at one read, keyed by its UUID."""

    uuid: str
    index: int
    """NVML's index at the last successful read (it can change across reboots: use uuid)."""
    product: str
    up: bool
    """Every energy and power query for this GPU succeeded at this read."""
    joules: float
    """Energy since the previous read, >= 0 (0 when down and at a new baseline)."""
    joules_total: float
    """Energy since the exporter started; never decreases, kept while the GPU is down."""
    power_watts: float | None
    """`nvmlDeviceGetPowerUsage` at this read (a 1 s average on H100); None if unreadable."""
    source: str
    """How joules were obtained: "counter" (total energy counter) or "integrated" (power);
    "unknown" for a GPU that has never been read."""
    mig: tuple[MigSlice, ...] = ()
    """The board's MIG devices; empty when MIG is off."""
    processes: tuple[GpuProcessUse, ...] = ()
    """Its processes as of the last refresh (every `processes_every_s`), empty when down."""

    @property
    def component(self) -> str:
        return "gpu"

    @property
    def device(self) -> str:
        return self.uuid

    @property
    def labels(self) -> tuple[tuple[str, str], ...]:
        """Its series' labels (footprint_gpu_energy_joules_total)."""
        return (("gpu", str(self.index)), ("uuid", self.uuid), ("product", self.product))


def gpus_of(measurements: tuple[object, ...]) -> tuple[GpuReading, ...]:
    """The GPUs among a reading's measurements."""
    return tuple(m for m in measurements if isinstance(m, GpuReading))
