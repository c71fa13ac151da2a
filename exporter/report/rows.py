"""The answers of `footprint-exporter report`'s queries turned into life-cycle rows: per model
and phase, namespace or pod label value, or per training run, the operational, infrastructure
and embodied grams, their total, each scope's share, the energy and the water; and the totals
row of each."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from exporter.metrics import NODE_INFO
from exporter.report.client import Sample
from exporter.report.common import JOULES_PER_KWH, PROG, eprint

SCOPES = ("operational", "infrastructure", "embodied")
"""The scopes summed into the total, in the order of the table's columns."""
TOTAL_SCOPE = "total"
WATER_SCOPES = ("water_onsite", "water_offsite")


def _sum_or_none(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return math.fsum(present) if present else None


def _scoped_grams(by_scope: Mapping[str, float]) -> tuple[dict[str, float], float]:
    """Grams per scope in SCOPES (0 where none), and the total: the rule pack's scope="total"
    where it is there, else the sum of the three scopes."""
    grams = {scope: by_scope.get(scope, 0.0) for scope in SCOPES}
    return grams, by_scope.get(TOTAL_SCOPE, math.fsum(grams.values()))


# --- per model and phase, namespace or label value ------------------------------------------

MODEL_LABELS = ("model", "phase")


@dataclass
class Row:
    """One row of a life-cycle table: the values of its labels (model and phase, namespace, or
    a pod label's value), or the totals (key None)."""

    key: tuple[str, ...] | None
    grams: dict[str, float]
    """Per scope in SCOPES."""
    total_grams: float
    energy_joules: float
    water_liters: dict[str, float | None] = field(
        default_factory=lambda: dict.fromkeys(WATER_SCOPES))
    """Per scope in WATER_SCOPES; None where the rule pack recorded no water (no gauges)."""

    @property
    def model(self) -> str | None:
        """The first label's value (the model, with --by model); None for the totals."""
        return None if self.key is None else self.key[0]

    @property
    def phase(self) -> str | None:
        """The second label's value (the phase, with --by model)."""
        return None if self.key is None or len(self.key) < 2 else self.key[1]

    @property
    def energy_kwh(self) -> float:
        return self.energy_joules / JOULES_PER_KWH

    def share(self, scope: str) -> float | None:
        """The scope's fraction of the total; None where the total is zero."""
        return self.grams[scope] / self.total_grams if self.total_grams else None


def build_rows(co2e: Iterable[Sample], energy: Iterable[Sample], *,
               model: str | None = None, water: Iterable[Sample] = (),
               labels: Sequence[str] = MODEL_LABELS) -> list[Row]:
    """Rows per value of `labels`, sorted; `model` keeps only that model's (with --by model).
    The total is the rule pack's scope="total" where it is there, else the sum of the three
    scopes. Non-finite values are left out, with a warning."""
    scoped: dict[tuple[str, ...], dict[str, float]] = {}
    joules: dict[tuple[str, ...], float] = {}

    def keep(series: Mapping[str, str], value: float) -> tuple[str, ...] | None:
        key = tuple(series.get(name, "") for name in labels)
        if model is not None and series.get("model", "") != model:
            return None
        if not math.isfinite(value):
            which = " ".join(f"{name}={v!r}" for name, v in zip(labels, key, strict=True))
            eprint(f"{PROG}: warning: leaving out {value} for {which} {dict(series)}")
            return None
        return key

    for series, value in co2e:
        key = keep(series, value)
        scope = series.get("scope", "")
        if key is not None and scope in (*SCOPES, TOTAL_SCOPE):
            scoped.setdefault(key, {})[scope] = value
    for series, value in energy:
        key = keep(series, value)
        if key is not None:
            joules[key] = value
    liters: dict[tuple[str, ...], dict[str, float]] = {}
    for series, value in water:
        key = keep(series, value)
        if key is not None and series.get("scope") in WATER_SCOPES:
            liters.setdefault(key, {})[series["scope"]] = value
    rows = []
    for key in sorted(scoped.keys() | joules.keys()):
        grams, total = _scoped_grams(scoped.get(key, {}))
        rows.append(Row(key, grams, total, joules.get(key, 0.0),
                        {s: liters.get(key, {}).get(s) for s in WATER_SCOPES}))
    return rows


def totals(rows: Sequence[Row]) -> Row:
    return Row(None, {s: math.fsum(r.grams[s] for r in rows) for s in SCOPES},
               math.fsum(r.total_grams for r in rows), math.fsum(r.energy_joules for r in rows),
               {s: _sum_or_none(r.water_liters[s] for r in rows) for s in WATER_SCOPES})


# --- per training run (--by run) -------------------------------------------------------------

RunKey = tuple[str, str, str, str]


@dataclass
class RunRow:
    """One training run, or the totals (kind and name None)."""

    namespace: str | None
    kind: str | None
    name: str | None
    model: str | None
    start: float | None
    end: float | None
    gpu_hours: float | None
    energy_joules: float
    grams: dict[str, float]
    total_grams: float
    water_onsite_liters: float | None = None
    water_offsite_liters: float | None = None
    shiftable_grams: float | None = None

    @property
    def energy_kwh(self) -> float:
        return self.energy_joules / JOULES_PER_KWH

    @property
    def grams_per_gpu_hour(self) -> float | None:
        return self.total_grams / self.gpu_hours if self.gpu_hours else None

    @property
    def duration_seconds(self) -> float | None:
        return None if self.start is None or self.end is None else self.end - self.start


def _run_key(labels: Mapping[str, str]) -> RunKey:
    return (labels.get("namespace", ""), labels.get("owner_kind", ""),
            labels.get("owner_name", ""), labels.get("model", ""))


def _finite(samples: Iterable[Sample], what: str) -> Iterator[Sample]:
    for labels, value in samples:
        if math.isfinite(value):
            yield labels, value
        else:
            eprint(f"{PROG}: warning: leaving out {value} ({what}) for {dict(labels)}")


def build_run_rows(results: Mapping[str, Sequence[Sample]], *,
                   model: str | None = None) -> list[RunRow]:
    """Rows sorted by namespace, kind, name and model, from the answers to run_queries."""
    def by_run(name: str) -> dict[RunKey, float]:
        out: dict[RunKey, float] = {}
        for labels, value in _finite(results.get(name, ()), name):
            out[_run_key(labels)] = out.get(_run_key(labels), 0.0) + value
        return out

    scoped: dict[RunKey, dict[str, float]] = {}
    for labels, value in _finite(results.get("co2e", ()), "co2e"):
        scope = labels.get("scope", "")
        if scope in (*SCOPES, TOTAL_SCOPE):
            scoped.setdefault(_run_key(labels), {})[scope] = value
    gpu_counts: dict[str, float] = {}
    for labels, _ in results.get("gpu_count", ()):
        try:
            count = float(labels.get("gpu_count", ""))
        except ValueError:
            continue
        node = labels.get("node", "")
        gpu_counts[node] = max(count, gpu_counts.get(node, 0.0))
    gpu_hours: dict[RunKey, float] = {}
    for labels, ratio_seconds in _finite(results.get("gpu", ()), "gpu"):
        key, node = _run_key(labels), labels.get("node", "")
        if ratio_seconds and node not in gpu_counts:
            eprint(f"{PROG}: warning: node {node!r} publishes no "
                   f"{NODE_INFO.name}{{gpu_count}}; its GPU-hours are left out of "
                   f"{key[1]}/{key[2]}")
            continue
        gpu_hours[key] = gpu_hours.get(key, 0.0) + ratio_seconds * gpu_counts.get(node, 0) / 3600
    energy, start, end = by_run("energy"), by_run("start"), by_run("end")
    water_on, water_off, shiftable = (by_run("water_onsite"), by_run("water_offsite"),
                                      by_run("shiftable"))
    for key, value in shiftable.items():  # the difference of two equal sums: float noise
        if abs(value) < 1e-9 * max(1.0, scoped.get(key, {}).get("operational", 0.0)):
            shiftable[key] = 0.0
    rows = []
    for key in sorted(scoped.keys() | energy.keys() | start.keys()):
        if model is not None and key[3] != model:
            continue
        grams, total = _scoped_grams(scoped.get(key, {}))
        rows.append(RunRow(
            key[0], key[1], key[2], key[3], start.get(key), end.get(key), gpu_hours.get(key),
            energy.get(key, 0.0), grams, total, water_on.get(key), water_off.get(key),
            shiftable.get(key)))
    return rows


def run_totals(rows: Sequence[RunRow]) -> RunRow:
    starts = [r.start for r in rows if r.start is not None]
    ends = [r.end for r in rows if r.end is not None]
    return RunRow(
        None, None, None, None, min(starts, default=None), max(ends, default=None),
        _sum_or_none(r.gpu_hours for r in rows), math.fsum(r.energy_joules for r in rows),
        {s: math.fsum(r.grams[s] for r in rows) for s in SCOPES},
        math.fsum(r.total_grams for r in rows),
        _sum_or_none(r.water_onsite_liters for r in rows),
        _sum_or_none(r.water_offsite_liters for r in rows),
        _sum_or_none(r.shiftable_grams for r in rows))
