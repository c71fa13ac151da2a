"""Every energy source, declared once: its flag, what it can own, and how it is made.

`cli.build_sampler` is a loop over `SOURCES`: a source whose `--collector.<flag>` is on is made,
probed, and given the components it reports that no source before it took. The order of
`SOURCES` is the priority: a measured source (RAPL, NVML, hwmon) comes before the estimate,
which covers only what nothing measured. Adding a source is one module that follows
`exporter.sources.base.EnergySource` and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from exporter.config import FileConfig
from exporter.sources.base import EnergySource


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What a source's factory may use."""

    sysfs: Path
    procfs: Path
    file: FileConfig
    uncovered: frozenset[str]
    """Components no source earlier in `SOURCES` owns: the estimate covers only these."""
    nvml_module: ModuleType | None = None
    """A fake NVML module for tests; None: the real one."""


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """One energy source as the command line and the tick know it."""

    flag: str
    """`--collector.<flag>` turns it on or off."""
    help: str
    components: frozenset[str]
    """The components it can own (it owns those it reports at probe that are still free)."""
    create: Callable[[SourceContext], EnergySource]
    default: bool = True


def _rapl(ctx: SourceContext) -> EnergySource:
    from exporter.sources.rapl import RaplSource

    return RaplSource(ctx.sysfs)


def _nvml(ctx: SourceContext) -> EnergySource:
    from exporter.sources.nvml import NvmlSource

    return NvmlSource(nvml=ctx.nvml_module)


def _hwmon(ctx: SourceContext) -> EnergySource:
    from exporter.sources.hwmon import HwmonSource

    return HwmonSource(ctx.sysfs, components=ctx.uncovered)


def _estimate(ctx: SourceContext) -> EnergySource:
    from exporter.sources.estimate import ESTIMABLE, EstimateSource

    return EstimateSource(ctx.procfs, ctx.file.estimate, ESTIMABLE & ctx.uncovered)


SOURCES: tuple[SourceSpec, ...] = (
    SourceSpec("rapl", "RAPL energy counters from <path.sysfs>/class/powercap",
               frozenset({"cpu", "dram", "platform"}), _rapl),
    SourceSpec("nvml", "NVIDIA GPU energy, power and processes through NVML",
               frozenset({"gpu"}), _nvml),
    SourceSpec("hwmon", "power sensors in <path.sysfs>/class/hwmon (power*_input), for "
                        "platforms that publish them and have no RAPL",
               frozenset({"cpu", "dram", "platform"}), _hwmon),
    SourceSpec("estimate", "utilisation-based estimate for cpu/dram where no sensor covers them",
               frozenset({"cpu", "dram"}), _estimate),
)
"""In priority order: a component goes to the first source that reports it."""
