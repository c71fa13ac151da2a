"""What every energy source returns, and the protocol it follows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from exporter.sources.gpu import GpuReading


@dataclass(frozen=True, slots=True)
class ZoneTotal:
    """One hardware zone's energy since the exporter started, wraparound corrected."""

    zone: str
    domain: str
    joules_total: float


@dataclass(frozen=True, slots=True)
class Reading:
    """What one source saw at one tick."""

    up: bool
    """Every part of the source was read; False when any zone or file failed."""
    joules: Mapping[str, float] = field(default_factory=dict)
    """Energy per component (cpu, dram, gpu, platform) since the previous tick."""
    zones: tuple[ZoneTotal, ...] = ()
    gpus: tuple[GpuReading, ...] = ()
    """Per-GPU readings (energy, MIG slices, processes) of a GPU source, down GPUs included."""


@dataclass(frozen=True, slots=True)
class Status:
    """Whether a source is in use, and why (shown in the start-up log and on the landing page)."""

    enabled: bool
    detail: str
    components: frozenset[str] = frozenset()
    present: bool = True
    """The hardware or file exists (so `footprint_source_up` is published for it)."""


class EnergySource(Protocol):
    """A source of node energy: probed once at start-up, then read once per tick."""

    name: str

    def probe(self) -> Status:
        """Take the first reading (the baseline) and say what was found."""
        ...

    def read(self, now: float) -> Reading:
        """Energy since the previous read; never negative."""
        ...
