"""The metric contract (docs/metrics.md) and its rendering to bytes, once per tick."""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import ProcessCollector
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest as render_text
from prometheus_client.openmetrics.exposition import generate_latest as render_openmetrics
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

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
    "footprint_gpu_energy_joules_total": Spec(
        "counter", "Energy of each physical GPU (NVML's counter, or integrated power).",
        ("gpu", "uuid", "product")),
    "footprint_gpu_power_watts": Spec(
        "gauge", "NVML power reading of each GPU at the last tick.", ("gpu", "uuid", "product")),
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
    "footprint_grid_intensity_last_update_timestamp_seconds": Spec(
        "gauge", "Unix time the live intensity value in force is for (its age: time() - this).",
        ("provider",)),
    "footprint_embodied_grams": Spec(
        "gauge", "Manufacturing emissions of this node's hardware, grams CO2e.",
        ("component", "gpu")),
    "footprint_embodied_lifetime_seconds": Spec(
        "gauge", "Seconds of use the embodied emissions are spread over (life x usage)."),
    "footprint_pue": Spec(
        "gauge", "Power usage effectiveness of the data centre the node is in."),
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


def _number(value: float) -> str:
    """Go's float formatting, as Prometheus' own clients write sample values."""
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


def _escape_value(value: str) -> str:
    """A label value as the text formats write it. A lone surrogate (JSON allows `\\ud800`, so a
    hostile API server can send one) cannot be encoded as UTF-8: it becomes `?` here rather
    than failing every render; names are also cleaned where they enter (exporter.workloads)."""
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str, *, openmetrics: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if openmetrics else text


class Renderer:
    """Renders the ledger (and optionally this process's own metrics) to a Snapshot.

    The ledger's families are formatted here directly, byte for byte as prometheus_client
    would (tests/test_exposition.py holds it to that), because building its Metric objects for
    every series each tick costs more than the rest of the tick. Each series' name-and-labels
    prefix is formatted once and kept while the series lives.
    """

    def __init__(self, ledger: Ledger, *, node: str, process_metrics: bool) -> None:
        self._ledger = ledger
        self._node = node
        self._prefixes: dict[tuple[str, tuple[str, ...]], str] = {}
        self._process: CollectorRegistry | None = None
        if process_metrics:
            self._process = CollectorRegistry(auto_describe=False)
            self._process.register(_NodeLabelled(ProcessCollector(registry=None), node))

    def _prefix(self, name: str, names: tuple[str, ...], values: tuple[str, ...]) -> str:
        pairs = sorted(zip(names, values, strict=True))
        return name + "{" + ",".join(f'{k}="{_escape_value(v)}"' for k, v in pairs) + "}"

    def render(self, stats: TickStats) -> Snapshot:
        text: list[str] = []
        om: list[str] = []
        old, new = self._prefixes, {}
        node = self._node
        for name, spec in SPECS.items():
            store = self._ledger.counters if spec.kind == "counter" else self._ledger.gauges
            series = store.get(name)
            if not series:
                continue
            names = (NODE, *spec.labels)
            base = name.removesuffix("_total") if spec.kind == "counter" else name
            text.append(f"# HELP {name} {_escape_help(spec.help, openmetrics=False)}\n"
                        f"# TYPE {name} {spec.kind}\n")
            om.append(f"# HELP {base} {_escape_help(spec.help, openmetrics=True)}\n"
                      f"# TYPE {base} {spec.kind}\n")
            lines = []
            for labels, value in series.items():
                key = (name, labels)
                prefix = old.get(key) or self._prefix(name, names, (node, *labels))
                new[key] = prefix
                lines.append(f"{prefix} {_number(value)}\n")
            body = "".join(lines)
            text.append(body)
            om.append(body)  # a counter's samples keep `_total` in OpenMetrics too
        summary_labels = f'{{node="{_escape_value(node)}"}}'
        for out, is_om in ((text, False), (om, True)):
            out.append(f"# HELP {TICK_DURATION} "
                       f"{_escape_help(TICK_DURATION_HELP, openmetrics=is_om)}\n"
                       f"# TYPE {TICK_DURATION} summary\n"
                       f"{TICK_DURATION}_count{summary_labels} {_number(stats.count)}\n"
                       f"{TICK_DURATION}_sum{summary_labels} {_number(stats.seconds)}\n")
        self._prefixes = new
        text_bytes = "".join(text).encode()
        om_bytes = "".join(om).encode()
        if self._process is not None:
            text_bytes += render_text(self._process)
            process_om: bytes = render_openmetrics(self._process)  # type: ignore[no-untyped-call]
            om_bytes += process_om
        else:
            om_bytes += b"# EOF\n"
        return Snapshot(text=text_bytes, openmetrics=om_bytes)
