"""Facts the rule pack needs: the node's embodied emissions, their lifetime, and its PUE.

Pure: settings, the node's labels and cloud, and its GPUs' products in; numbers out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from exporter.config import EmbodiedSettings, PueSettings
from exporter.intensity.zones import cloud_of

SECONDS_PER_YEAR = 8760 * 3600.0
"""BLOOM spreads embodied emissions over 6 x 8,760 hours x 85%: years of 365 days."""

CLOUD_PUE = {"aws": 1.135, "gcp": 1.1, "azure": 1.185}
"""Cloud Carbon Footprint's PUE coefficients per cloud (docs/lifecycle.md)."""


@dataclass(frozen=True, slots=True)
class LifecycleFacts:
    """The numbers published as footprint_embodied_*, footprint_pue."""

    server_grams: float
    gpu_grams: tuple[tuple[str, float], ...]
    """(GPU index, grams) per GPU."""
    lifetime_seconds: float
    pue: float
    pue_source: str


def lifecycle_facts(*, embodied: EmbodiedSettings, pue: PueSettings, labels: Mapping[str, str],
               provider_id: str, zone: str, gpus: Sequence[tuple[str, str]]) -> LifecycleFacts:
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
    return LifecycleFacts(server_grams=server, gpu_grams=tuple(grams),
                     lifetime_seconds=embodied.lifetime_years * embodied.usage_ratio
                     * SECONDS_PER_YEAR, pue=value, pue_source=source)
