"""Grid carbon intensity and the conversion of energy to grams of CO2e."""

from __future__ import annotations

from dataclasses import dataclass

JOULES_PER_KWH = 3_600_000.0

MAX_GRAMS_PER_KWH = 5000.0
"""The highest grid intensity Footprint accepts, static or live, in gCO2e/kWh.

No real grid comes near it. The dirtiest electricity, from lignite, is about 1,100-1,300
gCO2e/kWh over its life cycle, and a grid's average (Electricity Maps) is a mix that is never
dirtier than its dirtiest plant; WattTime's marginal rate (MOER, in lbs CO2/MWh, x 0.453592 to
g/kWh) is at most about 1,000-1,500 g/kWh, for the least efficient coal and oil units at the
margin. So 5,000 leaves room for any grid while refusing the absurd values a broken or
compromised API could send: 1e12 once added 2.8e7 g to the CO2e counters in one tick, kept
until the exporter restarts (issue 10). The config's static `intensity_grams_per_kwh` has the
same maximum."""


@dataclass(frozen=True, slots=True)
class Intensity:
    """The grid intensity in force: grams of CO2e per kWh, for a zone, from a provider."""

    grams_per_kwh: float
    zone: str
    provider: str


def grams(joules: float, intensity: Intensity) -> float:
    """Operational emissions of `joules` at `intensity`: kWh x g/kWh."""
    return joules / JOULES_PER_KWH * intensity.grams_per_kwh
