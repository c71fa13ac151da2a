"""Who used which GPU this tick: device-plugin allocations, MIG slices and GPU processes.

Pure: NVML's readings, the kubelet's allocations and the pid -> container map go in; each
GPU's energy with its holders (for attribution) and each container's GPU allocation ratio
come out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic

from exporter.attribution import GpuHolder, GpuUse, K, K_co
from exporter.sources.gpu import GpuReading


@dataclass(frozen=True, slots=True)
class Allocation(Generic[K_co]):
    """The kubelet gave this container this device (a GPU or MIG UUID, `::N` stripped)."""

    key: K_co
    device: str


@dataclass(frozen=True, slots=True)
class GpuPlan(Generic[K_co]):
    """Each GPU's energy and holders, and each holder's share of the node's GPUs."""

    uses: tuple[GpuUse[K_co], ...]
    allocation_ratio: Mapping[K_co, float]


@dataclass
class _Hold:
    fraction: float = 0.0
    sm_util: float | None = None
    memory_bytes: float | None = None
    migs: set[str] = field(default_factory=set)


def _add(total: float | None, value: float | None) -> float | None:
    if value is None:
        return total
    return value if total is None else total + value


def plan_gpus(*, gpus: Sequence[GpuReading], idle_joules: Mapping[str, float],
              allocations: Sequence[Allocation[K]],
              container_of_pid: Mapping[int, K]) -> GpuPlan[K]:
    """Holders of each GPU: allocated by the kubelet, or running processes on it (so a GPU
    used without a device-plugin request is still charged); a host process is nobody's."""
    by_device: dict[str, list[K]] = {}
    for allocation in allocations:
        by_device.setdefault(allocation.device, []).append(allocation.key)
    uses = []
    ratio: dict[K, float] = {}
    for gpu in gpus:
        fraction_of = {m.uuid: m.fraction for m in gpu.mig}
        holds: dict[K, _Hold] = {}

        def hold(key: K, mig: str | None,
                 holds: dict[K, _Hold] = holds,
                 fraction_of: dict[str, float] = fraction_of) -> _Hold:
            h = holds.setdefault(key, _Hold())
            if mig is not None and mig in fraction_of and mig not in h.migs:
                h.migs.add(mig)
                h.fraction += fraction_of[mig]
            return h

        for key in by_device.get(gpu.uuid, ()):
            hold(key, None)
        for mig in gpu.mig:
            for key in by_device.get(mig.uuid, ()):
                hold(key, mig.uuid)
        for process in gpu.processes:
            holder = container_of_pid.get(process.pid)
            if holder is None:
                continue  # a host process, or one whose container is unknown: unattributed
            h = hold(holder, process.mig_uuid)
            h.sm_util = _add(h.sm_util, process.sm_util)
            h.memory_bytes = _add(h.memory_bytes, process.used_memory_bytes)
        mig_mode = bool(gpu.mig)
        holders = [GpuHolder(key, slice_fraction=h.fraction if mig_mode else None,
                             sm_util=h.sm_util, memory_bytes=h.memory_bytes)
                   for key, h in holds.items() if h.fraction > 0 or not mig_mode]
        uses.append(GpuUse(joules=gpu.joules, idle_joules=idle_joules.get(gpu.uuid, 0.0),
                           holders=holders))
        for g in holders:
            share = g.slice_fraction if mig_mode else 1.0 / len(holders)
            ratio[g.key] = ratio.get(g.key, 0.0) + (share or 0.0) / len(gpus)
    return GpuPlan(uses=tuple(uses), allocation_ratio=ratio)
