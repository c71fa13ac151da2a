"""The PromQL that `footprint-exporter report` runs (docs/report.md): the rule pack's recording
rules it reads, the exporter's own families it joins them with, and the instant queries, each
the Riemann sum of a rate over the period.

The recording rules' names are bound once, here (rules/footprint.rules.yaml records them); the
exporter's families come from `exporter.metrics`, the one module that names them."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

from exporter.metrics import (
    CONTAINER_ALLOCATION,
    CONTAINER_INFO,
    EMBODIED,
    EMBODIED_LIFETIME,
    GRID_WATER_INTENSITY,
    NODE_INFO,
    PUE,
    WUE,
)
from exporter.podlabels import is_label_key, label_name
from exporter.report.common import JOULES_PER_KWH

# --- the rule pack's recording rules that the report reads (rules/footprint.rules.yaml) -----

CO2E_RULE = "model:footprint_co2e_grams:rate5m"
"""Grams CO2e per second, labels model, phase, scope."""
ENERGY_RULE = "model:footprint_energy_joules:rate5m"
"""Joules per second (watts), labels model, phase."""
WATER_RULE = "model:footprint_water_liters:rate5m"
"""Litres per second by model, phase and scope (water_onsite, water_offsite)."""
CONTAINER_CO2E_RULE = "container:footprint_co2e_grams:rate5m"
"""Grams CO2e per second per container (node, namespace, pod, container, model, phase, scope):
operational only (infrastructure and embodied are derived where read: CONTAINER_CO2E_SCOPES)."""
CONTAINER_ENERGY_RULE = "container:footprint_energy_joules:rate5m"
"""Watts per container (node, namespace, pod, container, model, phase)."""
CLEANEST_HOUR_RULE = "node:footprint_grid_intensity_cleanest_hour_grams_per_kwh:min1d"
"""Each node's cleanest clock hour of the last day (the lowest hourly mean), gCO2e per kWh."""
NAMESPACE_CO2E_RULE = "namespace:footprint_co2e_grams:rate5m"
"""Grams CO2e per second, labels namespace, scope."""
NAMESPACE_ENERGY_RULE = "namespace:footprint_energy_joules:rate5m"
"""Watts, label namespace."""
NAMESPACE_WATER_RULE = "namespace:footprint_water_liters:rate5m"
"""Litres per second, labels namespace, scope (water_onsite, water_offsite)."""
TEAM_LABEL = "label_team"
"""The pack's chargeback key `team`, as the exporter publishes it (exporter.podlabels)."""
TEAM_CO2E_RULE = "label_team:footprint_co2e_grams:rate5m"
"""Grams CO2e per second, labels label_team, scope. The chart records the same for each key of
prometheusRule.chargeback.labels, named after its label (`label_rule`)."""
TEAM_ENERGY_RULE = "label_team:footprint_energy_joules:rate5m"
"""Watts, label label_team."""
TEAM_WATER_RULE = "label_team:footprint_water_liters:rate5m"
"""Litres per second, labels label_team, scope."""
RULES = (CO2E_RULE, ENERGY_RULE, WATER_RULE, CONTAINER_CO2E_RULE, CONTAINER_ENERGY_RULE,
         CLEANEST_HOUR_RULE, NAMESPACE_CO2E_RULE, NAMESPACE_ENERGY_RULE, NAMESPACE_WATER_RULE,
         TEAM_CO2E_RULE, TEAM_ENERGY_RULE, TEAM_WATER_RULE)
"""Every recording rule the report reads (the team's stand for every chargeback key's)."""


def label_rule(team_rule: str, label: str) -> str:
    """One of the TEAM_* records for another chargeback label: `label_team` replaced by `label`
    (`label_cost_center:footprint_co2e_grams:rate5m`), as the chart renders it."""
    return label + team_rule.removeprefix(TEAM_LABEL)

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


def duration_of_ms(ms: int) -> Duration:
    """`ms` milliseconds (> 0) as a Prometheus duration in days, hours, minutes, seconds and
    milliseconds: 2591999999 -> `29d23h59m59s999ms`."""
    if ms <= 0:
        raise ValueError(f"expected a duration above zero, got {ms} ms")
    parts, rest = [], ms
    for unit in ("d", "h", "m", "s", "ms"):
        count, rest = divmod(rest, _UNITS_MS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return Duration("".join(parts), ms / 1000)


# --- the period ------------------------------------------------------------------------------

DEFAULT_STEP = Duration("5m", 300.0)
"""The Riemann sum's step unless --step says otherwise (or --since is shorter)."""

_MONTH = re.compile(r"(\d{4})-(\d{2})")


def parse_month(text: str) -> tuple[int, int]:
    """`2026-11` as (2026, 11); ValueError for anything else."""
    match = _MONTH.fullmatch(text)
    if match is None or not 1 <= int(match[2]) <= 12 or int(match[1]) < 1970:
        raise ValueError(f"expected a calendar month as YYYY-MM, such as 2026-11; got {text!r}")
    return int(match[1]), int(match[2])


def month_bounds(year: int, month: int) -> tuple[int, int]:
    """The month's first and last instant in UTC, as Unix milliseconds: [start, end)."""
    start = datetime.datetime(year, month, 1, tzinfo=datetime.UTC)
    after = datetime.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=datetime.UTC)
    return int(start.timestamp()) * 1000, int(after.timestamp()) * 1000


@dataclass(frozen=True)
class Period:
    """What every query of one report covers: the Riemann sum's points at the multiples of
    `step` in `[until - since, until]`, evaluated at `until` (Unix seconds)."""

    since: Duration
    step: Duration
    until: float
    until_given: bool = False
    """Whether --until (or --month) set `until` (the title then shows it)."""
    month: str | None = None
    """--month's YYYY-MM: the points in (the month's start, `until`]."""
    to_date: bool = False
    """The month is not over: `until` is now."""


def month_period(year: int, month: int, step: Duration | None, now: float) -> Period:
    """The calendar month in UTC: evaluated at its end (or now, where it is not over), over
    its length less a millisecond, so that the point at its first instant, which holds the 5
    minutes before it, is left out on every Prometheus (2.x includes a range's left edge):
    consecutive months then add up to their span exactly. ValueError for a month that has not
    begun."""
    start, end = month_bounds(year, month)
    name = f"{year:04d}-{month:02d}"
    now_ms = int(now * 1000)
    if now_ms - start <= 1:
        raise ValueError(f"--month {name} has not begun yet; give a month up to the current "
                         "one")
    until = min(end, now_ms)
    since = duration_of_ms(until - start - 1)
    return Period(since, step or min(DEFAULT_STEP, since, key=lambda d: d.seconds),
                  until / 1000, until_given=True, month=name, to_date=until < end)


# --- per model and phase (--by model), namespace and label ----------------------------------

def _model_sum(rule: str, by: str, since: Duration, step: Duration) -> str:
    """The Riemann sum of `rule`, per `by`, over the period."""
    return (f"sum by ({by}) (sum_over_time({rule}[{since.text}:{step.text}]))"
            f" * {step.promql_seconds()}")


@dataclass(frozen=True)
class Grouping:
    """What a life-cycle table is per (--by model, namespace or label:KEY): the three records
    it sums and the labels that key its rows."""

    labels: tuple[str, ...]
    """The labels a row is per: (model, phase), (namespace,), (label_team,)."""
    co2e: str
    energy: str
    water: str
    key: str | None = None
    """For --by label:KEY, the pod label key as given (team, cost-center)."""

    @property
    def noun(self) -> str:
        """What a row is, for titles and messages: model and phase, namespace, team."""
        return self.key if self.key is not None else " and ".join(self.labels)


BY_MODEL = Grouping(("model", "phase"), CO2E_RULE, ENERGY_RULE, WATER_RULE)
BY_NAMESPACE = Grouping(("namespace",), NAMESPACE_CO2E_RULE, NAMESPACE_ENERGY_RULE,
                        NAMESPACE_WATER_RULE)


def by_label(key: str) -> Grouping:
    """--by label:KEY: the records of the pod label `key` (a Kubernetes label key), named after
    its label as the exporter and kube-state-metrics name it (`cost-center` ->
    `label_cost_center`); ValueError for a string that is no label key."""
    if not is_label_key(key):
        raise ValueError(f"expected label:KEY with a pod label key (label:team, "
                         f"label:cost-center, label:example.com/team); got {key!r}")
    name = label_name(key)
    return Grouping((name,), label_rule(TEAM_CO2E_RULE, name),
                    label_rule(TEAM_ENERGY_RULE, name), label_rule(TEAM_WATER_RULE, name), key)


def grouped_queries(grouping: Grouping, since: Duration, step: Duration) -> dict[str, str]:
    """The instant queries of a life-cycle table, by name: grams per row and scope, joules per
    row, litres per row and scope."""
    by = ", ".join(grouping.labels)
    return {"co2e": _model_sum(grouping.co2e, f"{by}, scope", since, step),
            "energy": _model_sum(grouping.energy, by, since, step),
            "water": _model_sum(grouping.water, f"{by}, scope", since, step)}


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


def _per_embodied_second(grams: str) -> str:
    """Per node, its embodied grams (`grams` selects the components: one series per component
    and GPU) over its lifetime: grams per second."""
    return (f"(sum by (node) (max by (node, component, gpu) ({EMBODIED.name}{grams})) "
            f"/ on (node) max by (node) ({EMBODIED_LIFETIME.name} > 0))")


_GPU_RATIO = f'({CONTAINER_ALLOCATION.name}{{resource="gpu"}} > 0)'
_CPU_RATIO = f'{CONTAINER_ALLOCATION.name}{{resource="cpu"}}'
_SERVER = '{component="server"}'
CONTAINER_EMBODIED = (
    "sum by (node, namespace, pod, container, model, phase) ("
    f"{_GPU_RATIO} * on (node) group_left () {_per_embodied_second('')} "
    "or on (node, namespace, pod, container) "
    f"{_CPU_RATIO} * on (node) group_left () "
    f"{_per_embodied_second(_SERVER)})")
"""Each container's embodied grams per second, as docs/rules.md derives it (no record per
container since issue 23): a GPU holder's GPU ratio x the server and all its GPUs, any other
container's CPU ratio x the server."""

CONTAINER_CO2E_SCOPES = (
    f"{CONTAINER_CO2E_RULE}{{scope=\"operational\"}} or label_replace({CONTAINER_CO2E_RULE}"
    f"{{scope=\"operational\"}} * on (node) group_left () (max by (node) ({PUE.name}) - 1), "
    '"scope", "infrastructure", "", "") '
    f'or label_replace({CONTAINER_EMBODIED}, "scope", "embodied", "", "")')
"""Each container's grams per second in the three scopes: the recorded operational, and
infrastructure and embodied derived as the pack derives them for its sums: operational x (the
node's PUE - 1), and CONTAINER_EMBODIED (no record of either per container since issue 23,
docs/rules.md); the total is their sum (rows._scoped_grams)."""


def run_queries(since: Duration, step: Duration) -> dict[str, str]:
    """The instant queries of --by run, by name (docs/report.md, "Per training run")."""
    span = f"[{since.text}:{step.text}]"
    kwh = f" / {JOULES_PER_KWH:g}"
    return {
        "co2e": run_sum_query(CONTAINER_CO2E_SCOPES, since, step, "scope"),
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
