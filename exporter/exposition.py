"""The metric contract (docs/metrics.md) and its rendering to bytes, once per tick."""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import generate_latest as render_text
from prometheus_client.openmetrics.exposition import generate_latest as render_openmetrics
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from exporter.ledger import Ledger

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

NODE = "node"


@dataclass(frozen=True, slots=True)
class Spec:
    """One metric family: its type, help text and label names (besides `node`)."""

    kind: str
    help: str
    labels: tuple[str, ...] = ()


SPECS: dict[str, Spec] = {
    "footprint_node_energy_joules_total": Spec(
        "counter", "Energy the node used, per component, without double counting.",
        ("component", "source")),
    "footprint_rapl_energy_joules_total": Spec(
        "counter", "Energy of each RAPL zone as read, wraparound corrected.", ("zone", "domain")),
    "footprint_node_co2e_grams_total": Spec(
        "counter", "Operational emissions of the node's energy at the intensity in force.",
        ("component", "source")),
    "footprint_unattributed_energy_joules_total": Spec(
        "counter", "Node energy no container was charged for.", ("component", "mode")),
    "footprint_unattributed_co2e_grams_total": Spec(
        "counter", "Operational emissions of unattributed energy.", ("component", "mode")),
    "footprint_grid_intensity_grams_per_kwh": Spec(
        "gauge", "Grid carbon intensity in force for this node, gCO2e per kWh.",
        ("zone", "provider")),
    "footprint_node_info": Spec(
        "gauge", "Facts about the node.",
        ("zone", "region", "instance_type", "cpu_model", "gpu_product", "gpu_count")),
    "footprint_source_up": Spec(
        "gauge", "Whether each input worked at the last tick (1) or not (0).", ("source",)),
    "footprint_container_energy_joules_total": Spec(
        "counter", "Energy attributed to one container.",
        ("namespace", "pod", "container", "model", "phase", "component", "mode")),
    "footprint_container_co2e_grams_total": Spec(
        "counter", "Operational emissions of the energy attributed to one container.",
        ("namespace", "pod", "container", "model", "phase", "component", "mode")),
    "footprint_container_allocation_ratio": Spec(
        "gauge", "The container's share of the node's resource (CPU requests / allocatable).",
        ("namespace", "pod", "container", "model", "phase", "resource")),
    "footprint_container_info": Spec(
        "gauge", "How the container was matched to a model.",
        ("namespace", "pod", "container", "model", "model_source", "phase", "owner_kind",
         "owner_name")),
    "footprint_exporter_errors_total": Spec(
        "counter", "Faults by source and reason: failed reads, bad pods, missing cgroups.",
        ("source", "reason")),
    "footprint_exporter_build_info": Spec(
        "gauge", "The exporter's version.", ("version", "python_version")),
}
CONTAINER_SERIES = ("footprint_container_energy_joules_total",
                    "footprint_container_co2e_grams_total",
                    "footprint_container_allocation_ratio", "footprint_container_info")
"""Every family whose labels start with (namespace, pod, container)."""
TICK_DURATION = "footprint_exporter_tick_duration_seconds"
TICK_DURATION_HELP = "Time each tick took: read sources, attribute, render."


@dataclass(frozen=True)
class TickStats:
    """The self-metrics a tick reports about the ticks before it."""

    count: int = 0
    seconds: float = 0.0


class _LedgerCollector(Collector):
    def __init__(self, ledger: Ledger, node: str) -> None:
        self._ledger = ledger
        self._node = node
        self.stats = TickStats()

    def collect(self) -> Iterator[Metric]:
        for name, spec in SPECS.items():
            source = self._ledger.counters if spec.kind == "counter" else self._ledger.gauges
            series = source.get(name)
            if not series:
                continue
            family: CounterMetricFamily | GaugeMetricFamily
            if spec.kind == "counter":
                family = CounterMetricFamily(name, spec.help, labels=(NODE, *spec.labels))
            else:
                family = GaugeMetricFamily(name, spec.help, labels=(NODE, *spec.labels))
            for labels, value in series.items():
                family.add_metric((self._node, *labels), value)
            yield family
        summary = SummaryMetricFamily(TICK_DURATION, TICK_DURATION_HELP, labels=(NODE,))
        summary.add_metric((self._node,), count_value=self.stats.count,
                           sum_value=self.stats.seconds)
        yield summary


class _NodeLabelled(Collector):
    """Another collector's families with the `node` label added (every series carries it)."""

    def __init__(self, inner: Collector, node: str) -> None:
        self._inner = inner
        self._node = node

    def collect(self) -> Iterable[Metric]:
        for family in self._inner.collect():
            out = Metric(family.name, family.documentation, family.type, family.unit)
            out.samples = [Sample(s.name, {NODE: self._node, **s.labels}, s.value, s.timestamp,
                                  s.exemplar) for s in family.samples]
            yield out


@dataclass
class Snapshot:
    """The bytes of one tick's exposition; a scrape serves these and nothing else."""

    text: bytes
    openmetrics: bytes
    _gzipped: dict[bool, bytes] = field(default_factory=dict, repr=False)

    def body(self, *, openmetrics: bool, gzipped: bool) -> bytes:
        raw = self.openmetrics if openmetrics else self.text
        if not gzipped:
            return raw
        cached = self._gzipped.get(openmetrics)
        if cached is None:
            # Two scrapers may race here; both compute the same bytes, so no lock is needed.
            cached = gzip.compress(raw, compresslevel=6, mtime=0)
            self._gzipped[openmetrics] = cached
        return cached


class Renderer:
    """Renders the ledger (and optionally this process's own metrics) to a Snapshot."""

    def __init__(self, ledger: Ledger, *, node: str, process_metrics: bool) -> None:
        self._ledger_collector = _LedgerCollector(ledger, node)
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self._ledger_collector)
        if process_metrics:
            self._registry.register(_NodeLabelled(ProcessCollector(registry=None), node))

    def render(self, stats: TickStats) -> Snapshot:
        self._ledger_collector.stats = stats
        openmetrics: bytes = render_openmetrics(self._registry)  # type: ignore[no-untyped-call]
        return Snapshot(text=render_text(self._registry), openmetrics=openmetrics)
