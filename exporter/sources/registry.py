"""Every energy source, one line each, in priority order.

Each source module declares its `SPEC` (exporter.sources.base.SourceSpec): its flag, its
`source` label, the components it can own, its settings section and its factory.
`cli.build_sampler` is a loop over `SOURCES`: a source whose `--collector.<flag>` is on is made
with its own settings, probed, and given the components it reports that no source before it
took. A measured source (RAPL, NVML, hwmon) comes before the estimate, which covers only what
nothing measured. Adding a source is its module and one line here (docs/sources.md#adding).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exporter.sources import estimate, hwmon, nvml, rapl
from exporter.sources.base import SourceSpec

SOURCES: tuple[SourceSpec, ...] = (
    rapl.SPEC,
    nvml.SPEC,
    hwmon.SPEC,
    estimate.SPEC,
)
"""In priority order: a component goes to the first source that reports it."""

SECTIONS: Mapping[str, type[Any]] = {s.flag: s.settings for s in SOURCES
                                     if s.settings is not None}
"""The config file sections the sources declare, by name (`estimate:`)."""
