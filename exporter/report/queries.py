"""The PromQL that `footprint-exporter report` runs (docs/report.md): the rule pack's recording
rules it reads, the exporter's own families it joins them with, and the instant queries, each
the Riemann sum of a rate over the period.

The recording rules' names are bound once, here (rules/footprint.rules.yaml records them); the
exporter's families come from `exporter.metrics`, the one module that names them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from exporter.metrics import (
    CONTAINER_ALLOCATION,
    CONTAINER_INFO,
    GRID_WATER_INTENSITY,
    NODE_INFO,
    PUE,
    WUE,
)
from exporter.report.common import JOULES_PER_KWH

# --- the rule pack's recording rules that the report reads (rules/footprint.rules.yaml) -----

CO2E_RULE = "model:footprint_co2e_grams:rate5m"
"""Grams CO2e per second, labels model, phase, scope."""
ENERGY_RULE = "model:footprint_energy_joules:rate5m"
"""Joules per second (watts), labels model, phase."""
WATER_RULE = "model:footprint_water_liters:rate5m"
"""Litres per second by model, phase and scope (water_onsite, water_offsite)."""
CONTAINER_CO2E_RULE = "container:footprint_co2e_grams:rate5m"
"""Grams CO2e per second per container (node, namespace, pod, container, model, phase, scope)."""
CONTAINER_ENERGY_RULE = "container:footprint_energy_joules:rate5m"
"""Watts per container (node, namespace, pod, container, model, phase)."""
CLEANEST_HOUR_RULE = "node:footprint_grid_intensity_cleanest_hour_grams_per_kwh:min1d"
"""Each node's cleanest clock hour of the last day (the lowest hourly mean), gCO2e per kWh."""
RULES = (CO2E_RULE, ENERGY_RULE, WATER_RULE, CONTAINER_CO2E_RULE, CONTAINER_ENERGY_RULE,
         CLEANEST_HOUR_RULE)
"""Every recording rule the report reads."""

# --- durations --------------------------------------------------------------------------------

_UNITS_MS = {"y": 365 * 86_400_000, "w": 7 * 86_400_000, "d": 86_400_000, "h": 3_600_000,
             "m": 60_000, "s": 1000, "ms": 1}
_DURATION = re.compile(r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?"
                       r"(?:(\d+)ms)?")
"""Prometheus' duration syntax (model.ParseDuration): units in this order, each at most once."""


@dataclass(frozen=True)
class Duration:
    """A Prometheus duration as the user wrote it (it goes into PromQL verbatim)."""

    text: str
    seconds: float

    def promql_seconds(self) -> str:
        """`300`, or `0.5` for sub-second steps: a PromQL number literal."""
        return str(int(self.seconds)) if self.seconds.is_integer() else repr(self.seconds)


def parse_duration(text: str) -> Duration:
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"expected a Prometheus duration such as 90s, 15m, 7d; got {text!r}")
    ms = sum(int(n) * _UNITS_MS[u] for n, u in zip(match.groups(), _UNITS_MS, strict=True)
             if n is not None)
    if ms <= 0:
        raise ValueError(f"expected a duration above zero, got {text!r}")
    return Duration(text, ms / 1000)


# --- per model and phase (--by model) --------------------------------------------------------

def _model_sum(rule: str, by: str, since: Duration, step: Duration) -> str:
    """The Riemann sum of `rule`, per `by`, over the period."""
    return (f"sum by ({by}) (sum_over_time({rule}[{since.text}:{step.text}]))"
            f" * {step.promql_seconds()}")


def co2e_query(since: Duration, step: Duration) -> str:
    """Grams per (model, phase, scope): the Riemann sum of the grams-per-second rule."""
    return _model_sum(CO2E_RULE, "model, phase, scope", since, step)


def energy_query(since: Duration, step: Duration) -> str:
    """Joules per (model, phase): the Riemann sum of the watts rule."""
    return _model_sum(ENERGY_RULE, "model, phase", since, step)


def water_query(since: Duration, step: Duration) -> str:
    """Litres per (model, phase, scope): the Riemann sum of the litres-per-second rule."""
    return _model_sum(WATER_RULE, "model, phase, scope", since, step)


# --- per training run (--by run) -------------------------------------------------------------

TRAINING_INFO = f'{CONTAINER_INFO.name}{{phase="training",owner_name!=""}}'
"""The containers of training runs: phase training (the kubeflow-training model rule, or the
footprint.dev/phase label) and a controlling owner (the run)."""
RUN_LABELS = ("namespace", "owner_kind", "owner_name", "model")
OWNERS = ("group by (namespace, pod, owner_kind, owner_name) "
          f"(last_over_time({TRAINING_INFO}[5m]))")
"""Each training pod's owner. last_over_time keeps it for 5 minutes after the pod's last
scrape, as long as the rate5m records of its counters last."""


def _owned(expr: str) -> str:
    """`expr` (labelled namespace, pod) restricted to training pods, with their owner."""
    return (f"({expr}) * on (namespace, pod) group_left (owner_kind, owner_name) {OWNERS}")


def run_sum_query(expr: str, since: Duration, step: Duration, *extra: str,
                  scale: str = "") -> str:
    """The Riemann sum, per run, of a per-container rate or gauge over the period."""
    by = ", ".join((*RUN_LABELS, *extra))
    return (f"sum by ({by}) (sum_over_time(({_owned(expr)})[{since.text}:{step.text}]))"
            f" * {step.promql_seconds()}{scale}")


def run_queries(since: Duration, step: Duration) -> dict[str, str]:
    """The instant queries of --by run, by name (docs/report.md, "Per training run")."""
    span = f"[{since.text}:{step.text}]"
    kwh = f" / {JOULES_PER_KWH:g}"
    return {
        "co2e": run_sum_query(CONTAINER_CO2E_RULE, since, step, "scope"),
        "energy": run_sum_query(CONTAINER_ENERGY_RULE, since, step),
        "gpu": run_sum_query(
            'sum by (node, namespace, pod, model) '
            f'({CONTAINER_ALLOCATION.name}{{resource="gpu"}})', since, step, "node"),
        "gpu_count": f'max by (node, gpu_count) (max_over_time({NODE_INFO.name}{span}))',
        "start": f"min by ({', '.join(RUN_LABELS)}) (min_over_time(timestamp({TRAINING_INFO})"
                 f"{span}))",
        "end": f"max by ({', '.join(RUN_LABELS)}) (max_over_time(timestamp({TRAINING_INFO})"
               f"{span}))",
        "water_onsite": run_sum_query(
            f"{CONTAINER_ENERGY_RULE} * on (node) group_left () "
            f"max by (node) ({WUE.name})", since, step, scale=kwh),
        "water_offsite": run_sum_query(
            f"{CONTAINER_ENERGY_RULE} * on (node) group_left () (max by (node) ({PUE.name})"
            f" * on (node) max by (node) ({GRID_WATER_INTENSITY.name}))",
            since, step, scale=kwh),
        "shiftable": run_sum_query(
            f'sum without (scope) ({CONTAINER_CO2E_RULE}{{scope="operational"}}) '
            f"- on (node, namespace, pod, container, model, phase) "
            f"{CONTAINER_ENERGY_RULE}{kwh} * on (node) group_left () {CLEANEST_HOUR_RULE}",
            since, step),
    }
