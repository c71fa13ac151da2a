"""Grid carbon intensity and the conversion of energy to grams of CO2e."""

from __future__ import annotations

from dataclasses import dataclass

JOULES_PER_KWH = 3_600_000.0


@dataclass(frozen=True, slots=True)
class Intensity:
    """The grid intensity in force: grams of CO2e per kWh, for a zone, from a provider."""

    grams_per_kwh: float
    zone: str
    provider: str


def grams(joules: float, intensity: Intensity) -> float:
    """Operational emissions of `joules` at `intensity`: kWh x g/kWh."""
    return joules / JOULES_PER_KWH * intensity.grams_per_kwh
