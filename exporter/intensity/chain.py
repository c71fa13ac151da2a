"""The intensity in force: a live value while fresh, else the static one, else the default."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from exporter import logs
from exporter.carbon import MAX_GRAMS_PER_KWH, Intensity
from exporter.config import WORLD_AVERAGE_GRAMS_PER_KWH, CarbonSettings
from exporter.intensity.forecast import Forecast, ForecastView, view
from exporter.intensity.live import FUTURE_TOLERANCE_SECONDS, IntensityReading
from exporter.intensity.zones import zone_for

DEFAULT_MAX_AGE_SECONDS = CarbonSettings().max_age_seconds
"""A live value older than this is no longer used: `carbon.max_age_seconds`' default, defined
in exporter.config (2 hours: Electricity Maps' data is hourly)."""


class IntensitySource(Protocol):
    """What the tick calls: the value in force now. Never blocks, never raises."""

    def current(self) -> Intensity: ...


class LiveSource(Protocol):
    """What the chain needs of a live provider (ElectricityMaps, WattTime)."""

    @property
    def name(self) -> str: ...

    @property
    def zone(self) -> str: ...

    @property
    def up(self) -> bool: ...

    def reading(self) -> IntensityReading | None: ...

    def forecast(self) -> Forecast | None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


def world_average(zone: str = "unknown") -> Intensity:
    """The last resort: CodeCarbon's world average, published as provider `default`."""
    return Intensity(WORLD_AVERAGE_GRAMS_PER_KWH, zone, "default")


class FallbackChain:
    """Live while fresh, else static, else default; the `provider` field says which."""

    def __init__(self, live: LiveSource | None, static: Intensity | None,
                 default: Intensity | None = None, *,
                 max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
                 clock: Callable[[], float] = time.time,
                 log: logging.Logger | None = None, zone: str | None = None) -> None:
        """`zone`: the configured `carbon.zone`, if any; a `static` given here is the
        configured `carbon.intensity_grams_per_kwh`. Neither is replaced by `follow_node`."""
        if not max_age_seconds > 0:
            raise ValueError("max_age_seconds must be positive")
        self.live = live
        self.static = static
        self._configured_zone = zone
        self._configured_static = static is not None
        self.default = default if default is not None else world_average()
        self.max_age_seconds = float(max_age_seconds)
        self._clock = clock
        self._log = log or logs.get("intensity")
        self._lock = threading.Lock()
        self._in_force: str | None = None

    def follow_node(self, labels: Mapping[str, str], provider_id: str) -> None:
        """The Node as read (its labels and providerID, an input of the tick): its cloud
        region's zone and static intensity, where the configuration names neither
        (docs/carbon.md)."""
        if self._configured_zone and self._configured_static:
            return
        found = zone_for(labels, provider_id)
        if found is None:
            return
        zone = self._configured_zone or found.zone
        if not self._configured_static:
            self.static = Intensity(found.grams_per_kwh, zone, "static")
            self._log.info(f"grid intensity for {found.cloud} {found.region}: zone {zone}, "
                           f"{found.grams_per_kwh:g} gCO2e/kWh static ({found.source})")
        self.default = world_average(zone)

    def current(self) -> Intensity:
        """The live value if it is younger than the max age, else static, else default.

        A live reading dated more than `FUTURE_TOLERANCE_SECONDS` ahead of the clock (the
        providers refuse those; the node's clock may have been set back since) or outside 0 to
        `MAX_GRAMS_PER_KWH` is never in force: it would never age out, or is absurd."""
        reading = self.live.reading() if self.live is not None else None
        why = None if reading is None else self._unusable(reading)
        if reading is not None and why is None:
            chosen = reading.intensity
        elif self.static is not None:
            chosen = self.static
        else:
            chosen = self.default
        self._note(chosen, reading, why)
        return chosen

    def _unusable(self, reading: IntensityReading) -> str | None:
        """Why a live reading cannot be in force now, or None when it can."""
        age = self._clock() - reading.observed_unix
        grams = reading.intensity.grams_per_kwh
        if not (math.isfinite(grams) and 0.0 <= grams <= MAX_GRAMS_PER_KWH):
            return f"is {grams:g} gCO2e/kWh, outside 0 to {MAX_GRAMS_PER_KWH:g}"
        if not age >= -FUTURE_TOLERANCE_SECONDS:
            return (f"is dated {-age:.0f} s ahead of this node's clock (more than "
                    f"{FUTURE_TOLERANCE_SECONDS:g} s)")
        if not age <= self.max_age_seconds:
            return f"is older than {self.max_age_seconds:g} s"
        return None

    @property
    def last_update_unix(self) -> float | None:
        """The time the latest live value is for (the API's own timestamp), whether or not it
        is still in force: `time() - this` is its age, for a staleness alert. None without a
        live provider or before its first good answer."""
        reading = self.live.reading() if self.live is not None else None
        return None if reading is None else reading.observed_unix

    def forecast(self) -> ForecastView | None:
        """The live provider's forecast as published now (exporter.intensity.forecast.view);
        None, and no forecast series, without a live provider, without a forecast from it, or
        when its forecast is too old or over."""
        return None if self.live is None else view(self.live.forecast(), self._clock())

    @property
    def up(self) -> bool:
        """The live provider's last fetch worked; always True without one."""
        return True if self.live is None else self.live.up

    def start(self) -> None:
        if self.live is not None:
            self.live.start()

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()

    def _note(self, chosen: Intensity, reading: IntensityReading | None, why: str | None) -> None:
        """Log each change of the provider in force, once."""
        with self._lock:
            if chosen.provider == self._in_force:
                return
            previous, self._in_force = self._in_force, chosen.provider
        if self.live is None or chosen.provider == self.live.name:
            if previous is not None:
                self._log.info(f"grid intensity: using {chosen.provider} for zone "
                               f"{chosen.zone} ({chosen.grams_per_kwh:g} gCO2e/kWh)")
            return
        if reading is None:  # at start-up, until the first answer
            self._log.info(f"grid intensity: {self.live.name} has not answered yet; using "
                           f"{chosen.provider} {chosen.grams_per_kwh:g} gCO2e/kWh for zone "
                           f"{chosen.zone}")
            return
        self._log.warning(f"grid intensity: the last {self.live.name} value {why}; using "
                          f"{chosen.provider} {chosen.grams_per_kwh:g} gCO2e/kWh for zone "
                          f"{chosen.zone}")
