"""The source contract: what every energy source declares, what it returns, how it is read.

A source is one module under `exporter/sources/` that ends with a `SPEC` (its flag, its label,
what it can measure, its settings section and its factory) and one line in
`exporter.sources.registry.SOURCES`. Its factory gets only its own settings; its reading is
its energy per component plus a list of typed per-device measurements. Nothing else in the
exporter names a source.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Measurement(Protocol):
    """One device's reading in a source's `Reading` (a RAPL zone, a GPU, a sensor)."""

    @property
    def component(self) -> str | None:
        """What its energy is part of (cpu, dram, gpu, platform); None for a part of another
        measurement (RAPL's core and uncore zones lie inside their package)."""
        ...

    @property
    def device(self) -> str:
        """Its identity on this node: a RAPL zone, a GPU's UUID."""
        ...

    @property
    def joules_total(self) -> float:
        """Its energy since the exporter started; never decreases."""
        ...

    @property
    def labels(self) -> tuple[tuple[str, str], ...]:
        """(name, value) of the labels of its per-device series, by the family's label names
        (exporter.metrics.DEVICE_FAMILIES)."""
        ...


@dataclass(frozen=True, slots=True)
class DeviceEnergy:
    """The plain measurement: one device's running total (a RAPL zone: zone, domain)."""

    component: str | None
    device: str
    joules_total: float
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Reading:
    """What one source saw at one read."""

    up: bool
    """Every part of the source was read; False when any zone or file failed."""
    joules: Mapping[str, float] = field(default_factory=dict)
    """Energy per component (cpu, dram, gpu, platform) since the previous read, computed by
    the source itself (RAPL sums its packages' microjoules exactly before dividing)."""
    measurements: tuple[Measurement, ...] = ()
    """Its devices at this read, down ones included (a GPU source's are
    `exporter.sources.gpu.GpuReading`s, which attribution reads further)."""


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

    def probe(self) -> Status:
        """Take the first reading (the baseline) and say what was found."""
        ...

    def read(self, now: float) -> Reading:
        """Energy since the previous read; never negative."""
        ...


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What a source's factory gets: the host's paths, its own settings, nothing else."""

    sysfs: Path
    procfs: Path
    settings: Any = None
    """Its own settings section (an instance of `SourceSpec.settings`); None without one."""
    uncovered: frozenset[str] = frozenset()
    """Components no source earlier in the registry owns: the estimate covers only these."""
    nvml_module: ModuleType | None = None
    """A fake NVML module for tests; None: the real one."""


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """One energy source as the command line, the config file and the metrics know it."""

    flag: str
    """`--collector.<flag>` turns it on or off; its config file section has the same name."""
    label: str
    """Its `source` label on the metrics and its name in the logs and the landing page."""
    help: str
    components: frozenset[str]
    """The components it can own (it owns those it reports at probe that are still free)."""
    create: Callable[[SourceContext], EnergySource]
    settings: type | None = None
    """A frozen dataclass of `exporter.schema.setting` fields: the section `<flag>:` of
    `--config.file` (validated at start-up, in the chart's values schema, documented)."""
    default: bool = True


@dataclass(frozen=True, slots=True)
class Probed:
    """A source as made and probed at start-up, under its spec's label."""

    name: str
    source: EnergySource
    status: Status
