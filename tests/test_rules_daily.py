"""The daily rules integrate recorded 5-minute aggregates (`300 * sum_over_time(x:rate5m[1d:5m])`)
instead of reading every raw per-container sample of the day; on a synthetic churn day their
totals equal `increase(...[1d])` over the raw container counters within 0.5%, per model and per
node, namespace and model.

The day: three nodes' exporters scraped every 30 s (each target at its own offset, with a few
hundred milliseconds of jitter) for 24 h 40 min, the exporter's real container counters
(`footprint_container_energy_joules_total` and `footprint_container_co2e_grams_total`, cpu
dynamic and idle, gpu dynamic on GPU nodes) of containers whose power varies through the day
under an hourly grid intensity, with

- an exporter restart on node n1: no scrape for 50 s, then every counter of the node starts
  again from 0 (what was used while it was down is in neither figure);
- scrape gaps on node n2 (missing minutes, one straddling a 5-minute boundary);
- container churn: pods replaced under new names every few hours, containers that appear or
  leave mid-day, a deleted container's series flat for the exporter's 120 s grace period and
  then gone.

It is backfilled with `promtool tsdb create-blocks-from openmetrics` into Debian's Prometheus,
then the pack's own recording rules that the daily rules read are backfilled over the whole
range with `promtool tsdb create-blocks-from rules` at a 1-minute evaluation interval, in
dependency order (tests/backfill.py: node_namespace_model rate5m, from the exporter's sums per
namespace, model and phase written beside the container counters, then the model energy record
that model:footprint_energy_joules:increase1d integrates), and the daily rules' own
expressions (taken from rules/footprint.rules.yaml) are evaluated ad hoc at the day's end.
The server runs with a 59 s lookback, so backfilled records (which have no staleness markers)
are read as a live group's are (docs: tests/backfill.py).
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.backfill import (
    BlockPrometheus,
    OpenMetricsWriter,
    backfill_openmetrics,
    backfill_rules,
)
from tests.support import REPO, require_binary

pytestmark = pytest.mark.slow(seconds=5)  # the module's backfilled day: ~10 s for all

RULES = REPO / "rules" / "footprint.rules.yaml"
T0 = 1_699_999_200  # 2023-11-14T22:00:00Z, on the hour
SCRAPE = 30.0
SPAN = 24 * 3600 + 40 * 60
DAY = 86400
# The day's end: off the 5-minute grid (as 4 of 5 evaluations at a 1-minute interval are) and
# on it (where Prometheus 2.x's subquery also takes the point on the window's left edge).
END_OFF_GRID = T0 + DAY + 32 * 60 + 30
END_ON_GRID = T0 + DAY + 35 * 60
TOLERANCE = 0.005
GRACE = 120.0
NODES = {"n1": 3.1, "n2": 11.4, "n3": 23.7}  # scrape offset within the 30 s, per target
RESTART = ("n1", T0 + 9 * 3600 + 13 * 60 + 5, 50.0)  # node, exporter stops, seconds down
GAPS = {"n2": [(T0 + 3 * 3600 + 2 * 60, 60.0), (T0 + 11 * 3600 + 59 * 60 + 40, 60.0),
               (T0 + 17 * 3600 + 31 * 60, 90.0), (T0 + 20 * 3600 + 46 * 60 + 30, 120.0)]}
NNM = ("node", "namespace", "model", "phase")


@dataclass
class Container:
    node: str
    namespace: str
    pod: str
    container: str
    model: str
    phase: str
    gpu: bool
    watts: float
    start: float
    end: float  # when it is deleted; its series stay GRACE seconds longer, flat

    def power(self, t: float) -> tuple[float, float, float]:
        """Watts at t: cpu dynamic, cpu idle, gpu dynamic (0 without a GPU)."""
        day = math.sin(2 * math.pi * (t - T0) / DAY + len(self.pod))
        burst = 0.5 + 0.5 * math.sin(2 * math.pi * (t - T0) / 1700 + len(self.container))
        base = self.watts * (1 + 0.4 * day)
        return 0.3 * base * (0.5 + burst), 0.05 * self.watts, (3 * base * burst if self.gpu
                                                                   else 0.0)


def workloads(rng: random.Random) -> list[Container]:
    """A day of containers on three nodes, with pods replaced under new names."""
    out: list[Container] = []
    end_of_data = T0 + SPAN

    def pods(node: str, namespace: str, stem: str, container: str, model: str, phase: str,
             gpu: bool, watts: float, first: float, last: float, lifetime: float) -> None:
        t = first
        while t < last:
            life = lifetime * rng.uniform(0.6, 1.4)
            suffix = "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
            out.append(Container(node, namespace, f"{stem}-{suffix}", container, model, phase,
                                 gpu, watts * rng.uniform(0.8, 1.2), t, min(t + life, last)))
            t += life + rng.uniform(20, 240)  # the replacement starts a little later

    never = end_of_data + 3600
    # n1: a GPU node, its exporter restarts at 9h13m
    pods("n1", "serving", "llama-0", "vllm", "llama-3-8b", "inference", True, 250, T0 - 600,
         never, 1e9)
    pods("n1", "serving", "llama-0", "istio-proxy", "llama-3-8b", "inference", False, 8,
         T0 - 600, never, 1e9)
    pods("n1", "training", "ft", "trainer", "mistral-7b", "training", True, 300,
         T0 + 2 * 3600, T0 + 19 * 3600, 5 * 3600)
    pods("n1", "batch", "etl", "etl", "xgb-ranker", "training", False, 60, T0 - 600, never,
         3 * 3600)
    # n2: CPU only, scrape gaps
    pods("n2", "web", "embed", "embedder", "bge-small", "inference", False, 45, T0 - 600,
         never, 6 * 3600)
    pods("n2", "web", "embed-b", "embedder", "bge-small", "inference", False, 40, T0 - 600,
         never, 8 * 3600)
    pods("n2", "batch", "etl", "etl", "xgb-ranker", "training", False, 70, T0 + 600, never,
         3 * 3600)
    pods("n2", "serving", "llama-cpu", "vllm", "llama-3-8b", "inference", False, 90,
         T0 + 7 * 3600, T0 + 15 * 3600, 1e9)  # appears and leaves mid-day
    # n3: a GPU node with heavy churn
    pods("n3", "serving", "llama-1", "vllm", "llama-3-8b", "inference", True, 260, T0 - 600,
         never, 4 * 3600)
    pods("n3", "serving", "mistral", "vllm", "mistral-7b", "inference", True, 200, T0 - 600,
         never, 3 * 3600)
    pods("n3", "batch", "job", "worker", "xgb-ranker", "training", False, 55, T0 + 1800,
         never, 2 * 3600)
    return out


def scrape_times(node: str, rng: random.Random) -> list[float]:
    times = []
    t = T0 + NODES[node]
    while t < T0 + SPAN:
        times.append(t + rng.uniform(-0.3, 0.3))
        t += SCRAPE
    gaps = list(GAPS.get(node, []))
    if node == RESTART[0]:
        gaps.append((RESTART[1], RESTART[2]))
    return [t for t in times if not any(start <= t < start + length for start, length in gaps)]


def intensity(node: str, t: float) -> float:
    """Grid g/kWh in force at t: hourly steps, a different curve per node."""
    hour = int((t - T0) // 3600)
    return 300 + 150 * math.sin(hour / 3.0 + len(node) + ord(node[-1]))


def write_day(path: Path) -> int:
    """The synthetic day as OpenMetrics; the number of samples."""
    rng = random.Random(13)
    containers = workloads(rng)
    scrapes = {node: scrape_times(node, rng) for node in NODES}
    energy: dict[tuple[str, ...], list[tuple[float, float]]] = {}
    grams: dict[tuple[str, ...], list[tuple[float, float]]] = {}
    step = 5.0  # the exporter's tick, integrated exactly as a sum of ticks
    for c in containers:
        times = [t for t in scrapes[c.node] if c.start < t < c.end + GRACE]
        if not times:
            continue
        comps = [("cpu", "dynamic"), ("cpu", "idle")] + ([("gpu", "dynamic")] if c.gpu else [])
        joules = [0.0] * len(comps)
        co2e = [0.0] * len(comps)
        restarted = c.node == RESTART[0]
        back = RESTART[1] + RESTART[2]
        t = c.start
        keys = [(c.node, c.namespace, c.pod, c.container, c.model, c.phase, comp, mode)
                for comp, mode in comps]
        for key in keys:
            energy[key] = []
            grams[key] = []
        for when in times:
            while t + step <= min(when, c.end):
                if restarted and RESTART[1] <= t < back:
                    joules = [0.0] * len(comps)  # the exporter is down, then starts from 0
                    co2e = [0.0] * len(comps)
                else:
                    watts = c.power(t)
                    g_per_j = intensity(c.node, t) / 3.6e6
                    for i, (comp, mode) in enumerate(comps):
                        w = {"cpu": watts[1] if mode == "idle" else watts[0],
                             "gpu": watts[2]}[comp]
                        joules[i] += w * step
                        co2e[i] += w * step * g_per_j
                t += step
            for i, key in enumerate(keys):
                energy[key].append((when, joules[i]))
                grams[key].append((when, co2e[i]))
    names = ("node", "namespace", "pod", "container", "model", "phase", "component", "mode")
    work_names = ("node", "namespace", "model", "phase")
    lives = {(c.node, c.namespace, c.pod, c.container): (c.start, c.end) for c in containers}
    with path.open("w") as out:
        writer = OpenMetricsWriter(out)
        for family, data in (("footprint_container_energy_joules_total", energy),
                             ("footprint_container_co2e_grams_total", grams)):
            writer.family(family, "counter")
            for key, samples in data.items():
                labels = {**dict(zip(names, key, strict=True)), "job": "footprint-exporter",
                          "instance": f"{key[0]}:9102"}
                writer.series(family, labels, samples)
        for family, data in (("footprint_workload_energy_joules_total", energy),
                             ("footprint_workload_co2e_grams_total", grams)):
            writer.family(family, "counter")
            for key, samples in workload_sums(data, scrapes, lives).items():
                labels = {**dict(zip(work_names, key, strict=True)),
                          "job": "footprint-exporter", "instance": f"{key[0]}:9102"}
                writer.series(family, labels, samples)
        writer.close()
    return writer.samples


def workload_sums(data: dict[tuple[str, ...], list[tuple[float, float]]],
                  scrapes: dict[str, list[float]],
                  lives: dict[tuple[str, ...], tuple[float, float]]
                  ) -> dict[tuple[str, ...], list[tuple[float, float]]]:
    """The exporter's sums per (node, namespace, model, phase) (exporter.chargeback; every
    component and mode together) of the container counters `data`: at each scrape of the node
    while one of its containers' series is published, each container's last published value
    added up, an ended container's kept (its joules stay in the sum), none from before the
    exporter's restart on its node once it is back (the restart starts every sum from 0)."""
    members: dict[tuple[str, ...], list[tuple[tuple[str, ...], list[tuple[float, float]]]]] = {}
    for key, samples in data.items():
        node, namespace, pod, container, model, phase, _, _ = key
        members.setdefault((node, namespace, model, phase), []).append(
            ((node, namespace, pod, container), samples))
    back = RESTART[1] + RESTART[2]
    group_times = {key: [([t for t, _ in series], [v for _, v in series]) for _, series in group]
                   for key, group in members.items()}
    out = {}
    for key, group in members.items():
        node = key[0]
        samples = []
        for when in scrapes[node]:
            if not any(lives[c][0] < when < lives[c][1] + GRACE for c, _ in group):
                continue
            total = 0.0
            for times, values in group_times[key]:
                i = bisect.bisect_right(times, when) - 1  # its last sample by then
                lost = node == RESTART[0] and when >= back and (i < 0 or times[i] < back)
                total += values[i] if i >= 0 and not lost else 0.0
            samples.append((when, total))
        out[key] = samples
    return out


def pack_rules() -> dict[str, list[dict[str, Any]]]:
    """The pack's recording rules by name (a name may have one rule per scope)."""
    pack = yaml.safe_load(RULES.read_text())
    out: dict[str, list[dict[str, Any]]] = {}
    for group in pack["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                out.setdefault(rule["record"], []).append(rule)
    return out


def scoped(rules: list[dict[str, Any]], scope: str | None) -> dict[str, Any]:
    (rule,) = [r for r in rules if r.get("labels", {}).get("scope") == scope]
    return rule


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Any:
    require_binary("promtool")
    require_binary("prometheus")
    work = tmp_path_factory.mktemp("daily")
    source = work / "day.om"
    samples = write_day(source)
    assert samples > 100_000
    data = work / "data"
    backfill_openmetrics(source, data)
    source.unlink()
    rules = pack_rules()
    # What the daily operational and energy rules read, and what that reads in turn.
    needed = [scoped(rules["node_namespace_model:footprint_co2e_grams:rate5m"], "operational"),
              scoped(rules["node_namespace_model:footprint_energy_joules:rate5m"], None),
              scoped(rules["model:footprint_energy_joules:rate5m"], None),
              {**scoped(rules["model:footprint_co2e_grams:rate5m"], None), "expr": (
                  scoped(rules["model:footprint_co2e_grams:rate5m"], None)["expr"].replace(
                      "node_namespace_model:footprint_co2e_grams:rate5m",
                      'node_namespace_model:footprint_co2e_grams:rate5m{scope="operational"}'))}]
    with BlockPrometheus(data, lookback="59s") as prometheus:
        prometheus.start()
        levels = backfill_rules(prometheus, needed, T0 + 20, T0 + SPAN, work)
        assert levels == [2, 2]
        yield prometheus, rules


def deviations(got: dict[Any, float], want: dict[Any, float]) -> dict[Any, float]:
    assert set(got) == set(want), (set(got) ^ set(want))
    return {key: abs(got[key] - want[key]) / want[key] for key in want}


@pytest.mark.parametrize("end", [END_OFF_GRID, END_ON_GRID], ids=["off-grid", "on-grid"])
def test_daily_totals_equal_increase_over_the_raw_counters(day: Any, end: float) -> None:
    prometheus, rules = day
    # On the grid, Prometheus 2.x's subquery [1d:5m] also takes the point on the window's left
    # edge: 289 windows of 5 minutes, 24 h 5 min, what increase() is then compared over (off
    # the grid: 288 windows, 24 h, lagging the evaluation by under 5 minutes).
    window = "1d" if end == END_OFF_GRID else "1445m"
    (co2e,) = rules["model:footprint_co2e_grams:increase1d"]
    (energy,) = rules["model:footprint_energy_joules:increase1d"]
    by = ", ".join(NNM)
    cases = {
        "co2e per node, namespace, model": (  # a node's day, as docs/rules.md gives it
            co2e["expr"].replace("by (model, phase, scope)", f"by ({by})").replace(
                "model:footprint_co2e_grams:rate5m",
                'node_namespace_model:footprint_co2e_grams:rate5m{scope="operational"}'),
            f"sum by ({by}) (increase(footprint_container_co2e_grams_total[{window}]))"),
        "co2e per model": (
            co2e["expr"].replace("by (model, phase, scope)", "by (model, phase)").replace(
                "model:footprint_co2e_grams:rate5m",
                'model:footprint_co2e_grams:rate5m{scope="operational"}'),
            f"sum by (model, phase) (increase(footprint_container_co2e_grams_total[{window}]))"),
        "energy per model": (
            energy["expr"],
            f"sum by (model, phase) (increase(footprint_container_energy_joules_total[{window}]))"),
        "energy per node, namespace, model": (  # the same over the records it sums
            energy["expr"].replace("by (model, phase)", f"by ({by})").replace(
                "model:footprint_energy_joules:rate5m",
                "node_namespace_model:footprint_energy_joules:rate5m"),
            f"sum by ({by}) (increase(footprint_container_energy_joules_total[{window}]))"),
    }
    report = {}
    for name, (rule, reference) in cases.items():
        got, want = prometheus.vector(rule, end), prometheus.vector(reference, end)
        assert len(want) >= (4 if "per model" in name else 9), (name, want)
        dev = deviations(got, want)
        worst = max(dev, key=dev.__getitem__)
        report[name] = (dev[worst], dict(worst))
        assert dev[worst] <= TOLERANCE, (name, dict(worst), got[worst], want[worst])
    print({name: f"max {d:.4%} at {labels}" for name, (d, labels) in report.items()})


def test_the_day_has_restarts_gaps_and_churn(day: Any) -> None:
    prometheus, _ = day
    end = END_OFF_GRID
    resets = prometheus.vector(
        'sum by (node) (resets(footprint_container_energy_joules_total[1d]))', end)
    assert resets[(("node", "n1"),)] >= 5, resets  # the exporter restart, every series
    pods = prometheus.vector(
        "count by (node) (count by (node, pod) (last_over_time("
        "footprint_container_energy_joules_total[1d])))", end)
    assert all(v >= 4 for v in pods.values()) and pods[(("node", "n3"),)] >= 20, pods
    # the gaps: n2 misses scrapes for up to two minutes, n1 for the restart's 50 s
    rng = random.Random(0)
    for node, longest in (("n2", 110), ("n1", 55)):
        times = scrape_times(node, rng)
        assert max(b - a for a, b in itertools.pairwise(times)) > longest, node
