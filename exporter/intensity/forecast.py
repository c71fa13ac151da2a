"""Grid intensity forecasts: a provider's future points, bounded, and what the gauges show.

Electricity Maps (`/v3/carbon-intensity/forecast`, plans that include it) and WattTime
(`/v3/forecast` with `horizon_hours=24`) answer a list of points, each the start of a period and
the intensity forecast for it. `build_forecast` refuses what no real forecast looks like (too
many points, values outside 0 to `MAX_GRAMS_PER_KWH`, times out of order, a last point more than
`MAX_FORECAST_AHEAD_SECONDS` ahead or already over): a `malformed` fault, as for the current
value. `view()` turns a forecast into the published numbers at a given time: the value in force
at now + each of `HORIZONS` (the point at or just before that time, as each point holds for its
period; no interpolation), and the lowest value over the next `MIN_WINDOW` with the time it
starts. Nothing is published for a forecast fetched more than `FORECAST_MAX_AGE_SECONDS` ago or
whose last period is over, nor for a horizon it does not reach. See docs/carbon-aware.md.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from exporter.carbon import MAX_GRAMS_PER_KWH
from exporter.intensity.faults import Fault
from exporter.intensity.faults import iso as _iso

FORECAST_REFRESH_SECONDS = 1800.0
"""A forecast is fetched every 30 minutes (or every refresh period, if that is longer): both APIs
update theirs about hourly, and each fetch counts against the plan's quota."""
FORECAST_REFUSED_RETRY_SECONDS = 86_400.0
"""After the API refused the forecast (a plan or zone without one), ask again a day later."""
FORECAST_MAX_AGE_SECONDS = 6 * 3600.0
"""A forecast fetched longer ago than this (the API has failed since) is no longer published."""
MAX_FORECAST_POINTS = 2000
"""72 hours at 5 minutes is 865 points, the most either API answers."""
MAX_FORECAST_AHEAD_SECONDS = 8 * 86_400.0
"""The last point may be at most this far ahead: both APIs forecast at most 72 hours."""
DEFAULT_PERIOD_SECONDS = 3600.0
"""The period of a forecast of a single point."""
HORIZONS: tuple[tuple[str, float], ...] = (
    ("1h", 3600.0), ("3h", 3 * 3600.0), ("6h", 6 * 3600.0), ("12h", 12 * 3600.0),
    ("24h", 24 * 3600.0))
"""The `horizon` label values and their seconds ahead of now."""
MIN_WINDOW: tuple[str, float] = ("24h", 24 * 3600.0)
"""The `window` label of the minimum, and its seconds from now."""


@dataclass(frozen=True, slots=True)
class Forecast:
    """One good forecast: `points` are (period start, gCO2e/kWh), strictly increasing in time."""

    zone: str
    provider: str
    points: tuple[tuple[float, float], ...]
    period_seconds: float
    fetched_unix: float

    @property
    def end_unix(self) -> float:
        """When the last point's period ends."""
        return self.points[-1][0] + self.period_seconds

    def at(self, when: float) -> float | None:
        """The value of the period holding `when`; None before the first point or after the
        last period."""
        if not self.points[0][0] <= when < self.end_unix:
            return None
        index = bisect.bisect_right([t for t, _ in self.points], when) - 1
        return self.points[index][1]

    def minimum(self, start: float, end: float) -> tuple[float, float] | None:
        """The lowest value of the periods overlapping [start, end), and when it begins (not
        before `start`; the earliest such period on a tie); None when none overlaps."""
        best: tuple[float, float] | None = None
        for when, grams in self.points:
            if when >= end or when + self.period_seconds <= start:
                continue
            if best is None or grams < best[0]:
                best = (grams, max(when, start))
        return best


@dataclass(frozen=True, slots=True)
class ForecastView:
    """What the forecast gauges publish at one moment."""

    zone: str
    provider: str
    horizons: tuple[tuple[str, float], ...]
    """(horizon label, gCO2e/kWh) for each horizon the forecast reaches."""
    minimum: tuple[str, float, float] | None
    """(window label, gCO2e/kWh, Unix time it begins) of the lowest value in the window."""


def build_forecast(points: Sequence[tuple[float, float]], *, zone: str, provider: str,
                   now_unix: float) -> Forecast:
    """A Forecast of `points` (period start, gCO2e/kWh), or Fault (malformed) when they are
    not plausible."""
    if not points:
        raise Fault("malformed", "answered a forecast without points")
    if len(points) > MAX_FORECAST_POINTS:
        raise Fault("malformed", f"answered a forecast of {len(points)} points (at most "
                                 f"{MAX_FORECAST_POINTS})")
    for _, grams in points:
        if not (math.isfinite(grams) and 0.0 <= grams <= MAX_GRAMS_PER_KWH):
            raise Fault("malformed", f"forecast {grams:g} gCO2e/kWh, outside the 0 to "
                                     f"{MAX_GRAMS_PER_KWH:g} gCO2e/kWh bound (no grid emits that)")
    times = [when for when, _ in points]
    if any(b <= a for a, b in itertools.pairwise(times)):
        raise Fault("malformed", "answered forecast points out of time order")
    period = (min(b - a for a, b in itertools.pairwise(times)) if len(times) > 1
              else DEFAULT_PERIOD_SECONDS)
    ahead = times[-1] - now_unix
    if not ahead <= MAX_FORECAST_AHEAD_SECONDS:
        raise Fault("malformed", f"answered a forecast point dated {_iso(times[-1])}, "
                                 f"{ahead:.0f} s ahead of this node's clock (at most "
                                 f"{MAX_FORECAST_AHEAD_SECONDS:g} s allowed; is the clock "
                                 "right?)")
    if times[-1] + period <= now_unix:
        raise Fault("malformed", f"answered a forecast that ended at "
                                 f"{_iso(times[-1] + period)}, before this node's clock")
    return Forecast(zone, provider, tuple(points), period, now_unix)


def view(forecast: Forecast | None, now_unix: float) -> ForecastView | None:
    """The numbers to publish now; None (no series) without a forecast, for one fetched more
    than `FORECAST_MAX_AGE_SECONDS` ago, or one whose last period is over."""
    if forecast is None:
        return None
    if not now_unix - forecast.fetched_unix <= FORECAST_MAX_AGE_SECONDS:
        return None
    if forecast.end_unix <= now_unix:
        return None
    horizons = tuple((label, grams) for label, ahead in HORIZONS
                     if (grams := forecast.at(now_unix + ahead)) is not None)
    window, seconds = MIN_WINDOW
    lowest = forecast.minimum(now_unix, now_unix + seconds)
    return ForecastView(forecast.zone, forecast.provider, horizons,
                        None if lowest is None else (window, *lowest))
