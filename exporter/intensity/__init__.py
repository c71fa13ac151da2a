"""Grid carbon intensity from live APIs (Electricity Maps, WattTime), with fallbacks.

`FallbackChain.current()` is what the tick calls: the live value while fresh, else the static
per-zone value, else the world average; it reads a cache and never blocks. The live providers
refresh that cache from a daemon thread (`start()` / `stop()`). An answer above
`exporter.carbon.MAX_GRAMS_PER_KWH`, dated in the future, over 1 MiB or inflating past it is a
fault, never a value (`live.py`). See docs/carbon.md.
"""

from __future__ import annotations

from exporter.intensity.chain import (
    DEFAULT_MAX_AGE_SECONDS,
    FallbackChain,
    IntensitySource,
    LiveSource,
    world_average,
)
from exporter.intensity.credentials import Secret
from exporter.intensity.electricitymaps import ElectricityMaps
from exporter.intensity.forecast import HORIZONS, Forecast, ForecastView
from exporter.intensity.live import IntensityReading, LiveProvider
from exporter.intensity.watttime import WattTime
from exporter.intensity.zones import REGIONS, ZoneDefault, cloud_of, zone_for

__all__ = [
    "DEFAULT_MAX_AGE_SECONDS",
    "HORIZONS",
    "REGIONS",
    "ElectricityMaps",
    "FallbackChain",
    "Forecast",
    "ForecastView",
    "IntensityReading",
    "IntensitySource",
    "LiveProvider",
    "LiveSource",
    "Secret",
    "WattTime",
    "ZoneDefault",
    "cloud_of",
    "world_average",
    "zone_for",
]
