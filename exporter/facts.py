"""Facts the rule pack needs: the node's embodied emissions, their lifetime, its PUE, and the
water its data centre (WUE) and its grid consume per kWh.

Pure: settings, the node's labels and cloud, and its GPUs' products in; numbers out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from exporter.config import EmbodiedSettings, PueSettings, WaterSettings
from exporter.intensity.zones import cloud_of

SECONDS_PER_YEAR = 8760 * 3600.0
"""BLOOM spreads embodied emissions over 6 x 8,760 hours x 85%: years of 365 days."""

CLOUD_PUE = {"aws": 1.135, "gcp": 1.1, "azure": 1.185}
"""Cloud Carbon Footprint's PUE coefficients per cloud (docs/lifecycle.md)."""

CLOUD_WUE = {"aws": 0.12, "azure": 0.27}
"""On-site WUE, litres per kWh of IT energy, the fleet averages the clouds publish: AWS 2025,
Microsoft FY2025 (docs/lifecycle.md, "Water"). Google publishes no WUE: GCP gets the default."""


@dataclass(frozen=True, slots=True)
class LifecycleFacts:
    """The numbers published as footprint_embodied_*, footprint_pue, footprint_wue_*,
    footprint_grid_water_intensity_*."""

    server_grams: float
    gpu_grams: tuple[tuple[str, float], ...]
    """(GPU index, grams) per GPU."""
    lifetime_seconds: float
    pue: float
    pue_source: str
    wue: float
    """On-site litres per kWh of IT energy (footprint_wue_liters_per_kwh)."""
    wue_source: str
    grid_water: float
    """Litres consumed generating a kWh of the grid's electricity."""
    grid_water_source: str
    """configured, zone or default (footprint_grid_water_intensity_liters_per_kwh{source})."""
    zone: str


def lifecycle_facts(*, embodied: EmbodiedSettings, pue: PueSettings, labels: Mapping[str, str],
               provider_id: str, zone: str, gpus: Sequence[tuple[str, str]],
               water: WaterSettings | None = None) -> LifecycleFacts:
    """`gpus` is (index, product) per GPU. An override whose node_labels all match wins."""
    server, per_gpu = embodied.server_grams, None
    for override in embodied.overrides:
        if all(labels.get(k) == v for k, v in override["node_labels"].items()):
            server = override.get("server_grams", server)
            per_gpu = override.get("gpu_grams", per_gpu)
            break
    grams = []
    for index, product in gpus:
        by_product = next((g for name, g in embodied.gpu_grams_by_product.items()
                           if name and name in product), embodied.gpu_grams)
        grams.append((index, per_gpu if per_gpu is not None else by_product))
    cloud = cloud_of(labels, provider_id) or ""
    if pue.value is not None:
        value, source = pue.value, "configured"
    elif zone in pue.by_zone:
        value, source = pue.by_zone[zone], f"zone {zone}"
    elif cloud:
        value, source = CLOUD_PUE[cloud], f"{cloud} (Cloud Carbon Footprint)"
    else:
        value, source = pue.default, "default"
    wue, wue_source, grid_water, grid_water_source = _water(water or WaterSettings(), zone,
                                                            cloud)
    return LifecycleFacts(server_grams=server, gpu_grams=tuple(grams),
                     lifetime_seconds=embodied.lifetime_years * embodied.usage_ratio
                     * SECONDS_PER_YEAR, pue=value, pue_source=source, wue=wue,
                     wue_source=wue_source, grid_water=grid_water,
                     grid_water_source=grid_water_source, zone=zone)


def _water(water: WaterSettings, zone: str, cloud: str) -> tuple[float, str, float, str]:
    """(WUE, its source, grid litres per kWh, its source), in the order PUE is resolved."""
    if water.wue_liters_per_kwh is not None:
        wue, wue_source = water.wue_liters_per_kwh, "configured"
    elif zone in water.wue_by_zone:
        wue, wue_source = water.wue_by_zone[zone], f"zone {zone}"
    elif cloud in CLOUD_WUE:
        wue, wue_source = CLOUD_WUE[cloud], f"{cloud} (published fleet average)"
    else:
        wue, wue_source = water.wue_default, "default"
    if water.grid_liters_per_kwh is not None:
        grid, grid_source = water.grid_liters_per_kwh, "configured"
    elif zone in water.grid_by_zone:
        grid, grid_source = water.grid_by_zone[zone], "zone"
    else:
        grid, grid_source = water.grid_default, "default"
    return wue, wue_source, grid, grid_source
