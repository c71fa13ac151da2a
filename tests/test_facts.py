"""Embodied emissions, their lifetime and the PUE for the rule pack."""

from __future__ import annotations

import pytest

from exporter.config import ConfigError, parse_file_config
from exporter.facts import SECONDS_PER_YEAR, lifecycle_facts
from exporter.intensity.zones import cloud_of


def facts(config: object = None, *, labels: dict[str, str] | None = None,
          provider_id: str = "", zone: str = "unknown",
          gpus: tuple[tuple[str, str], ...] = ()):  # type: ignore[no-untyped-def]
    file = parse_file_config(config)
    return lifecycle_facts(embodied=file.embodied, pue=file.pue, labels=labels or {},
                      provider_id=provider_id, zone=zone, gpus=gpus, water=file.water)


def test_defaults_follow_bloom() -> None:
    f = facts(gpus=(("0", "NVIDIA H100 80GB HBM3"), ("1", "NVIDIA A100-SXM4-80GB")))
    assert f.server_grams == 2_500_000.0
    assert f.gpu_grams == (("0", 150_000.0), ("1", 318_000.0))  # A100: Chien et al. 2023
    assert f.lifetime_seconds == pytest.approx(6 * 0.85 * SECONDS_PER_YEAR)
    assert f.lifetime_seconds == 160_833_600.0  # BLOOM: 6 x 8,760 h x 85%
    assert (f.pue, f.pue_source) == (1.58, "default")


@pytest.mark.parametrize(("provider_id", "labels", "pue"), [
    ("aws:///us-east-1a/i-0abc", {}, 1.135),
    ("gce://proj/europe-west4-a/node-1", {}, 1.1),
    ("azure:///subscriptions/x/resourceGroups/y", {}, 1.185),
    ("", {"eks.amazonaws.com/nodegroup": "gpu"}, 1.135),
    ("kind://docker/kind/node", {}, 1.58),
])
def test_pue_by_cloud(provider_id: str, labels: dict[str, str], pue: float) -> None:
    assert facts(provider_id=provider_id, labels=labels).pue == pue
    assert cloud_of(labels, provider_id) in ("aws", "gcp", "azure", None)


def test_configured_and_per_zone_pue_win() -> None:
    assert facts({"pue": {"by_zone": {"FR": 1.2}}}, zone="FR",
                 provider_id="aws:///x").pue == 1.2
    assert facts({"pue": {"value": 1.05, "by_zone": {"FR": 1.2}}}, zone="FR").pue == 1.05


def test_water_defaults_lbnl_and_by_cloud() -> None:
    f = facts()
    assert (f.wue, f.wue_source) == (1.8, "default")  # Shehabi et al. 2016 (LBNL)
    assert (f.grid_water, f.grid_water_source, f.zone) == (7.6, "default", "unknown")
    assert facts(provider_id="aws:///us-east-1a/i-0abc").wue == 0.12
    assert facts(provider_id="azure:///subscriptions/x/resourceGroups/y").wue == 0.27
    assert facts(provider_id="gce://proj/europe-west4-a/node-1").wue == 1.8  # none published


def test_configured_and_per_zone_water_win() -> None:
    by_zone = {"water": {"wue_by_zone": {"FR": 0.4}, "grid_by_zone": {"FR": 2.5}}}
    f = facts(by_zone, zone="FR", provider_id="aws:///x")
    assert (f.wue, f.wue_source, f.grid_water, f.grid_water_source) == (0.4, "zone FR", 2.5,
                                                                        "zone")
    f = facts({"water": {"wue_liters_per_kwh": 0, "grid_liters_per_kwh": 3.1,
                         **by_zone["water"]}}, zone="FR")
    assert (f.wue, f.wue_source, f.grid_water, f.grid_water_source) == (0.0, "configured", 3.1,
                                                                        "configured")
    f = facts({"water": {"wue_default": 1.0, "grid_default": 4.0}}, zone="DE")
    assert (f.wue, f.grid_water) == (1.0, 4.0)


def test_overrides_by_node_label() -> None:
    config = {"embodied": {"overrides": [
        {"node_labels": {"node.kubernetes.io/instance-type": "p5.48xlarge"},
         "server_grams": 4_000_000, "gpu_grams": 250_000}]}}
    f = facts(config, labels={"node.kubernetes.io/instance-type": "p5.48xlarge"},
              gpus=(("0", "NVIDIA H100 80GB HBM3"),))
    assert (f.server_grams, f.gpu_grams) == (4_000_000.0, (("0", 250_000.0),))
    other = facts(config, labels={"node.kubernetes.io/instance-type": "m5.large"})
    assert other.server_grams == 2_500_000.0


@pytest.mark.parametrize(("config", "message"), [
    ({"embodied": {"overrides": [{"node_labels": {}}]}},
     "embodied.overrides[0].node_labels: expected a mapping of label to value"),
    ({"embodied": {"overrides": [{"node_labels": {"a": "b"}, "cpu_grams": 1}]}},
     "embodied.overrides[0].cpu_grams: unknown key"),
    ({"pue": {"value": 0.9}}, "pue.value: expected a number >= 1 and <= 5, got 0.9"),
    ({"water": {"wue_liters_per_kwh": -1}},
     "water.wue_liters_per_kwh: expected a number >= 0 and <= 100, got -1"),
    ({"water": {"grid_by_zone": {"FR": "wet"}}}, "water.grid_by_zone.FR: expected a number"),
    ({"water": {"grid_by_zone": ["FR", 2]}},
     "water.grid_by_zone: expected a mapping of zone to litres per kWh"),
    ({"water": {"wue": 1.8}}, "water.wue: unknown key"),
    ({"embodied": {"gpu_grams_by_product": {"H100": "heavy"}}},
     "embodied.gpu_grams_by_product.H100: expected a number"),
])
def test_bad_facts_config(config: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_file_config(config)
