"""The metric contract in code: every family's name, type, help, unit and label names, bound
once, and the one place that writes them. Each family's `Doc` is its row in the tables of
docs/metrics.md and the README, which scripts/gen_metric_tables.py writes from it.

`Publisher` maps what a tick observed and accounted (`exporter.accounting.TickResult`) onto the
ledger; nothing else in the exporter names a metric. Each write goes through a `Family`, which
checks the number of label values, so a misplaced label fails at once in the tests instead of
producing a series nobody can query.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import add

from exporter import __version__
from exporter.accounting import (
    HOST_READS,
    PLATFORM,
    ContainerColumn,
    ContainerKey,
    ContainerLike,
    SourceReading,
    TickResult,
)
from exporter.attribution import MODES, counted
from exporter.carbon import Intensity
from exporter.chargeback import KeysOf, SumKey, SumPart, label_keys, workload_keys
from exporter.chargeback import ratios as sum_ratios
from exporter.config import ATTRIBUTED, COMPONENTS
from exporter.facts import LifecycleFacts
from exporter.intensity.forecast import HORIZONS, MIN_WINDOW, ForecastView
from exporter.ledger import Labels, Ledger
from exporter.podlabels import MAX_VALUE_BYTES
from exporter.sources.base import Status
from exporter.sources.gpu import GpuReading
from exporter.sources.registry import SOURCES


@dataclass(frozen=True, slots=True)
class Doc:
    """A family's row in the metric tables of docs/metrics.md and the README, which
    scripts/gen_metric_tables.py writes from these fields."""

    meaning: str = ""
    """docs/metrics.md's "meaning": the full account (Markdown, one paragraph)."""
    summary: str = ""
    """The README's "meaning": a line."""
    since: str = ""
    """docs/metrics.md's "since": the release that first published it, and later changes."""
    hints: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Per label name, what goes in parentheses after it in the labels cell: its values
    (`cpu, dram, gpu`) or what it holds (`index`). Labels without one are listed bare."""
    type: str = ""
    """The type cell where it says more than the kind (`gauge = 1`, `gauge 0/1`)."""


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: its type, help text, label names (besides `node`), unit and its
    documentation (`doc`, the tables' row).

    `unit` is the OpenMetrics unit (`# UNIT`), given where it is the end of the name.
    `extra_labels`: where not empty, a series may follow its label values with (name, value)
    pairs of labels of its own, each name this prefix then [a-z0-9_] (the pod labels of
    `footprint_container_info`, exporter.podlabels); the renderer writes them beside the
    others."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...] = ()
    unit: str = ""
    doc: Doc = field(default_factory=Doc, kw_only=True)
    extra_labels: str = field(default="", kw_only=True)

    def __post_init__(self) -> None:
        base = self.name.removesuffix("_total") if self.kind == "counter" else self.name
        if self.unit and not base.endswith(f"_{self.unit}"):
            raise ValueError(f"{self.name}: unit {self.unit!r} is not the end of its name")
        unknown = set(self.doc.hints) - set(self.labels)
        if unknown:
            raise ValueError(f"{self.name}: doc hints for labels it lacks: {sorted(unknown)}")

    def check(self, values: Labels) -> Labels:
        if len(values) != len(self.labels):
            self._check_extra(values)
        return values

    def _check_extra(self, values: Labels) -> None:
        """Values beyond the family's labels: (name, value) pairs, where it takes them."""
        fixed = len(self.labels)
        if not (self.extra_labels and len(values) > fixed and (len(values) - fixed) % 2 == 0):
            raise ValueError(f"{self.name}: {len(values)} label values {values!r} for "
                             f"labels {self.labels!r}")
        extra = values[fixed::2]
        if len(set(extra)) != len(extra) or not all(
                _EXTRA_NAME.fullmatch(n) and n.startswith(self.extra_labels) for n in extra):
            raise ValueError(f"{self.name}: extra label names {extra!r} are not unique "
                             f"names starting {self.extra_labels!r}")

    def labels_of(self, **values: str) -> Labels:
        """The label values in this family's order, given by name: `labels_of(component="cpu",
        source="rapl")`. A missing or unknown name raises ValueError."""
        missing = [name for name in self.labels if name not in values]
        unknown = sorted(set(values) - set(self.labels))
        if missing or unknown:
            raise ValueError(f"{self.name}: labels {self.labels!r}; missing {missing!r}, "
                             f"unknown {unknown!r}")
        return tuple(values[name] for name in self.labels)


_EXTRA_NAME = re.compile(r"[a-z][a-z0-9_]*")
"""A name `Family.extra_labels` allows after its prefix: a valid Prometheus label name that
cannot start with the reserved `__`."""


def _counter(name: str, help: str, labels: tuple[str, ...] = (), unit: str = "", *,
             doc: Doc) -> Family:
    return Family(name, "counter", help, labels, unit, doc=doc)


def _gauge(name: str, help: str, labels: tuple[str, ...] = (), unit: str = "", *,
           doc: Doc) -> Family:
    return Family(name, "gauge", help, labels, unit, doc=doc)


def _labels(components: Collection[str]) -> str:
    """The `source` labels of the registry's sources that can measure any of `components`."""
    return ", ".join(s.label for s in SOURCES if s.components & set(components))


CONTAINER = ("namespace", "pod", "container", "model", "phase")
GPU = ("gpu", "uuid", "product")
MODE_VALUES = {"mode": ", ".join(MODES)}
"""The `mode` hint of the families split by mode."""

NODE_ENERGY = _counter(
    "footprint_node_energy_joules_total",
    "Energy the node used, per component, without double counting.",
    ("component", "source"), "joules", doc=Doc(
        since="0.1 (platform moved out in 0.5.0)",
        hints={"component": "cpu, dram, gpu", "source": _labels(ATTRIBUTED)},
        meaning="energy the node used per component. Each component comes from exactly one "
        "source, chosen at start-up (a sensor when one covers it, else the estimate). "
        "core/uncore are inside package. `sum by (node)` is the node's measured energy, cpu + "
        "dram + gpu, nothing counted twice",
        summary="node energy per component, each component from exactly one source; the sum "
        "over components is the node's energy"))
NODE_PLATFORM_ENERGY = _counter(
    "footprint_node_platform_energy_joules_total",
    "Whole-platform energy (RAPL psys, a power meter); it overlaps the components, so it is "
    "not among them.", ("source",), "joules", doc=Doc(
        since="0.5", hints={"source": _labels({PLATFORM})},
        meaning="whole-platform energy where the hardware reports it: RAPL psys, an ACPI or "
        "BMC power meter, a GH200 module sensor. It overlaps cpu and dram (and on a GH200 the "
        "GPU), so it is not a component, is never summed with them and never charged to "
        "containers; platform minus cpu + dram + gpu is what the components do not see (fans, "
        "disks, NICs, supply losses). Absent where no such sensor exists",
        summary="whole-platform energy (RAPL psys, a power meter) where the hardware has it; "
        "it overlaps the components, so it lives apart"))
RAPL_ENERGY = _counter(
    "footprint_rapl_energy_joules_total",
    "Energy of each RAPL zone as read, wraparound corrected.", ("zone", "domain"), "joules",
    doc=Doc(since="0.1",
            hints={"zone": "`intel-rapl:0`", "domain": "package, core, uncore, dram, psys"},
            meaning="each RAPL zone as read, wraparound corrected; a zone that vanishes keeps "
            "its last value",
            summary="each RAPL zone as read, wraparound corrected"))
GPU_ENERGY = _counter(
    "footprint_gpu_energy_joules_total",
    "Energy of each physical GPU (NVML's counter, or integrated power).", GPU, "joules",
    doc=Doc(since="0.3", hints={"gpu": "index"},
            meaning="per physical GPU, keyed by UUID: NVML's total energy counter (Volta and "
            "newer), or `nvmlDeviceGetPowerUsage` integrated over time where the counter is "
            "missing; a counter that goes down (driver reload) starts a new baseline, a lost "
            "GPU stops adding (docs/gpus.md)",
            summary="each physical GPU: NVML's energy counter, or integrated power on GPUs "
            "without one"))
GPU_POWER = _gauge(
    "footprint_gpu_power_watts", "NVML power reading of each GPU at the last tick.", GPU,
    "watts", doc=Doc(
        since="0.3",
        meaning="NVML power at the last tick (a 1 s average on Hopper, docs/gpu-readings.md)",
        summary="NVML power at the last tick"))
NODE_CO2E = _counter(
    "footprint_node_co2e_grams_total",
    "Operational emissions of the node's energy at the intensity in force.",
    ("component", "source"), "grams", doc=Doc(
        since="0.1", meaning="each tick's energy x the intensity in force at that tick",
        summary="each tick's energy x the grid intensity in force at that tick"))
UNATTRIBUTED_ENERGY = _counter(
    "footprint_unattributed_energy_joules_total", "Node energy no container was charged for.",
    ("component", "mode"), "joules", doc=Doc(
        since="0.1", hints=MODE_VALUES,
        meaning="node energy charged to no container: what system processes used, idle "
        "energy of unrequested CPU (or all idle under policy `none`), unheld GPUs and MIG "
        "slices, and everything while no cluster is found",
        summary="energy charged to no container (system processes, unrequested idle, no "
        "cluster)"))
UNATTRIBUTED_CO2E = _counter(
    "footprint_unattributed_co2e_grams_total", "Operational emissions of unattributed energy.",
    ("component", "mode"), "grams", doc=Doc(
        since="0.1", meaning="operational emissions of unattributed energy",
        summary="its emissions"))
GRID_INTENSITY = _gauge(
    "footprint_grid_intensity_grams_per_kwh",
    "Grid carbon intensity in force for this node, gCO2e per kWh.",
    ("grid_zone", "provider"), "grams_per_kwh", doc=Doc(
        since="0.1 (`zone` renamed `grid_zone` in 0.5.0)",
        hints={"provider": "electricitymaps, watttime, static, default"},
        meaning="grid intensity in force: a live provider's value while fresh (Electricity "
        "Maps: average, lifecycle; WattTime: marginal), else the static one (configured, or "
        "the node's cloud region's default), else the world average 475 (`default`). "
        "`grid_zone` (an Electricity Maps zone or WattTime region: FR, US-CAL-CISO) is "
        "`unknown` until configured or found from the node's region (docs/carbon.md)",
        summary="grid intensity in force ([docs/carbon.md](docs/carbon.md))"))
GRID_INTENSITY_UPDATED = _gauge(
    "footprint_grid_intensity_last_update_timestamp_seconds",
    "Unix time the live intensity value in force is for (its age: time() - this).",
    ("provider",), "seconds", doc=Doc(
        since="0.4",
        meaning="Unix time the latest live value is for (`time() - this` is its age; the "
        "stale alert reads it); only with a live provider",
        summary="when the live value in force was produced"))
GRID_FORECAST = _gauge(
    "footprint_grid_intensity_forecast_grams_per_kwh",
    "The live provider's forecast of the grid intensity at now + horizon, gCO2e per kWh; only "
    "while it supplies a forecast.", ("grid_zone", "provider", "horizon"), "grams_per_kwh",
    doc=Doc(
        since="0.5",
        hints={"provider": "electricitymaps, watttime",
               "horizon": ", ".join(label for label, _ in HORIZONS)},
        meaning="the live provider's forecast of the intensity at now + `horizon` (the value "
        "of the forecast period holding that time); only while it supplies a forecast: none "
        "with a static intensity, on a plan or zone without forecasts, or once the forecast is "
        "6 h old or over (docs/carbon-aware.md)",
        summary="forecast intensity at now + horizon, where the provider offers one "
        "([docs/carbon-aware.md](docs/carbon-aware.md))"))
GRID_FORECAST_MIN = _gauge(
    "footprint_grid_intensity_forecast_min_grams_per_kwh",
    "The lowest forecast grid intensity in the next window, gCO2e per kWh.",
    ("grid_zone", "provider", "window"), "grams_per_kwh", doc=Doc(
        since="0.5", hints={"window": MIN_WINDOW[0]},
        meaning="the lowest forecast intensity in the next `window`; same presence as the "
        "forecast",
        summary="lowest forecast intensity in the next 24 h"))
GRID_FORECAST_MIN_TIME = _gauge(
    "footprint_grid_intensity_forecast_min_timestamp_seconds",
    "Unix time the lowest forecast intensity of the next window begins (now, or later).",
    ("grid_zone", "provider", "window"), "seconds", doc=Doc(
        since="0.5", hints={"window": MIN_WINDOW[0]},
        meaning="Unix time that lowest value begins (now, or later): \"when is the cleanest "
        "hour\"; same presence as the forecast",
        summary="when that lowest forecast value begins"))
EMBODIED = _gauge(
    "footprint_embodied_grams", "Manufacturing emissions of this node's hardware, grams CO2e.",
    ("component", "gpu"), "grams", doc=Doc(
        since="0.4", hints={"component": "server, gpu", "gpu": "index; \"\" for server"},
        meaning="manufacturing emissions of this node's hardware: the server without GPUs, "
        "and each GPU, from configuration or defaults (docs/lifecycle.md)",
        summary="manufacturing emissions of the node's hardware "
        "([docs/lifecycle.md](docs/lifecycle.md))"))
EMBODIED_LIFETIME = _gauge(
    "footprint_embodied_lifetime_seconds",
    "Seconds of use the embodied emissions are spread over (life x usage).", (), "seconds",
    doc=Doc(since="0.4",
            meaning="the seconds of use the embodied emissions are spread over: service life "
            "x usage (BLOOM: 6 years x 85%)",
            summary="service life x usage the embodied grams are spread over"))
PUE = _gauge(
    "footprint_pue", "Power usage effectiveness of the data centre the node is in.", doc=Doc(
        since="0.4",
        meaning="power usage effectiveness of the data centre: configured, per zone, per cloud "
        "(AWS 1.135, GCP 1.1, Azure 1.185), else 1.58",
        summary="power usage effectiveness of the data centre"))
WUE = _gauge(
    "footprint_wue_liters_per_kwh",
    "Water the data centre consumes on site (cooling) per kWh of IT energy, litres.", (),
    "liters_per_kwh", doc=Doc(
        since="0.5",
        meaning="on-site water usage effectiveness of the data centre, litres per kWh of IT "
        "energy: `water.wue_liters_per_kwh`, per zone, per cloud (AWS 0.12, Azure 0.27), else "
        "1.8 (docs/lifecycle.md, Water)",
        summary="on-site water usage effectiveness of the data centre, litres per kWh of IT "
        "energy ([docs/lifecycle.md](docs/lifecycle.md#water))"))
GRID_WATER_INTENSITY = _gauge(
    "footprint_grid_water_intensity_liters_per_kwh",
    "Water consumed generating a kWh of the grid's electricity, litres.",
    ("grid_zone", "source"), "liters_per_kwh", doc=Doc(
        since="0.5", hints={"source": "configured, zone, default"},
        meaning="litres of water consumed generating a kWh of the grid's electricity: "
        "`water.grid_liters_per_kwh`, per zone (`water.grid_by_zone`), else 7.6 (`default`)",
        summary="litres of water consumed generating a kWh of the grid's electricity"))
NODE_INFO = _gauge(
    "footprint_node_info", "Facts about the node.",
    ("topology_zone", "topology_region", "instance_type", "cpu_model", "gpu_product",
     "gpu_count"), doc=Doc(
        type="gauge = 1", since="0.1 (`zone`, `region` renamed in 0.5.0)",
        meaning="facts about the node: `topology_zone`, `topology_region` and `instance_type` "
        "from the Node's `topology.kubernetes.io/zone`, `topology.kubernetes.io/region` and "
        "`node.kubernetes.io/instance-type` labels (empty without a cluster); `gpu_product` "
        "(products, comma-separated) and `gpu_count` from NVML",
        summary="facts about the node"))
SOURCE_UP = _gauge(
    "footprint_source_up", "Whether each input worked at the last tick (1) or not (0).",
    ("source",), doc=Doc(
        type="gauge 0/1", since="0.1",
        hints={"source": _labels(COMPONENTS) + ", kubernetes, podresources, resourceslices, "
                                                "intensity"},
        meaning="whether the source's last read worked in full. Published for each source "
        "whose hardware or files exist: a host without RAPL has no `source=\"rapl\"` series "
        "(nothing to alert on), a host whose RAPL is unreadable has `0`",
        summary="1 when the source's last read worked, for each source whose hardware exists"))
CONTAINER_ENERGY = _counter(
    "footprint_container_energy_joules_total", "Energy attributed to one container.",
    (*CONTAINER, "component", "mode"), "joules", doc=Doc(
        since="0.2", hints=MODE_VALUES,
        meaning="energy attributed to one container: dynamic by its share of busy CPU time, "
        "idle by its share of allocatable CPU in requests (docs/attribution.md). A series "
        "appears when the container first uses that component",
        summary="energy attributed to one container "
        "([docs/attribution.md](docs/attribution.md))"))
CONTAINER_CO2E = _counter(
    "footprint_container_co2e_grams_total",
    "Operational emissions of the energy attributed to one container.",
    (*CONTAINER, "component", "mode"), "grams", doc=Doc(
        since="0.2", hints=MODE_VALUES,
        meaning="each tick's attributed energy x the intensity in force at that tick",
        summary="its operational emissions"))
CONTAINER_ALLOCATION = _gauge(
    "footprint_container_allocation_ratio",
    "The container's share of the node's resource (CPU requests / allocatable).",
    (*CONTAINER, "resource"), "ratio", doc=Doc(
        since="0.2 (gpu 0.3)", hints={"resource": "cpu, gpu"},
        meaning="the container's share of the node's resource: CPU requests / allocatable "
        "CPU; for gpu, (1 per whole GPU, the slice fraction per MIG slice, 1/n per GPU shared "
        "by n) / GPUs on the node",
        summary="CPU requests / the node's allocatable CPU; the container's share of the "
        "node's GPUs"))
CONTAINER_INFO = Family(
    "footprint_container_info", "gauge", "How the container was matched to a model.",
    ("namespace", "pod", "container", "model", "model_source", "phase", "owner_kind",
     "owner_name", "container_id", "uid"), extra_labels="label_", doc=Doc(
        type="gauge = 1", since="0.2 (`container_id`, `uid`, `label_<key>` 0.5.0)",
        meaning="how the container was matched to a model (docs/models.md); `model_source` is "
        "the winning rule's name, `owner` or `none`. `container_id` is the runtime's id "
        "without its `containerd://` prefix (Kepler's `container_id`; it changes when the "
        "container restarts) and `uid` the pod's `metadata.uid` (kube-state-metrics' `uid`), "
        "to join with cAdvisor and kube-state-metrics series. Also `label_<key>` for each of "
        "the pod's labels that `kubernetes.pod_label_allowlist` allows (none by default), "
        "named as kube-state-metrics' `kube_pod_labels` names them (`team` -> `label_team`) "
        f"and cut to {MAX_VALUE_BYTES} bytes; a relabelled pod's series is replaced "
        "(docs/chargeback.md)",
        summary="which model a container serves or trains, and which rule said so "
        "([docs/models.md](docs/models.md)); `label_<key>` for each allow-listed pod label "
        "([docs/chargeback.md](docs/chargeback.md))"))
CHARGEBACK_HINTS = {
    "label": "`label_<key>` of each key of `kubernetes.chargeback_labels`",
    "value": "the pod label's value; `\"\"` for the containers whose pod lacks it"}
CHARGEBACK_ENERGY = _counter(
    "footprint_chargeback_energy_joules_total",
    "Energy attributed to the node's containers whose pod label `label` has the value `value`.",
    ("label", "value", "component", "mode"), "joules", doc=Doc(
        since="0.5.0", hints={**CHARGEBACK_HINTS, "component": "cpu, dram, gpu", **MODE_VALUES},
        meaning="the sum of `footprint_container_energy_joules_total` over the node's "
        "containers whose pod's `label` has that `value` at each tick, kept after they end: "
        "the values of one `label` add up to the node's attributed energy, and a relabelled "
        "pod's joules go to its new value from the tick that sees it. A value no container "
        "held for the grace period is retired (docs/chargeback.md)",
        summary="energy per value of a charged pod label, per node "
        "([docs/chargeback.md](docs/chargeback.md))"))
CHARGEBACK_CO2E = _counter(
    "footprint_chargeback_co2e_grams_total",
    "Operational emissions of the energy attributed per pod label value.",
    ("label", "value", "component", "mode"), "grams", doc=Doc(
        since="0.5.0", hints={**CHARGEBACK_HINTS, "component": "cpu, dram, gpu", **MODE_VALUES},
        meaning="the same sum of `footprint_container_co2e_grams_total`",
        summary="its operational emissions"))
CHARGEBACK_ALLOCATION = _gauge(
    "footprint_chargeback_allocation_ratio",
    "The summed allocation ratios that carry embodied emissions, per pod label value.",
    ("label", "value", "resource"), "ratio", doc=Doc(
        since="0.5.0", hints={**CHARGEBACK_HINTS, "resource": "cpu, gpu"},
        meaning="summed over the node's containers with that `value` (as "
        "`footprint_container_allocation_ratio` publishes them), as the rule pack's embodied "
        "grams read them: `gpu`, the GPU ratios of the containers that hold a GPU; `cpu`, the "
        "CPU ratios of those that hold none",
        summary="the ratios the embodied grams are shared by, summed per value"))
CHARGEBACK_FAMILIES = (CHARGEBACK_ENERGY, CHARGEBACK_CO2E, CHARGEBACK_ALLOCATION)
"""Every family whose labels start with (label, value)."""
WORKLOAD = ("namespace", "model", "phase")
WORKLOAD_HINTS = {"model": "`\"\"` for the containers no model rule matched",
                  "phase": "inference, training, other"}
WORKLOAD_ENERGY = _counter(
    "footprint_workload_energy_joules_total",
    "Energy attributed to the node's containers of one namespace, model and phase.",
    WORKLOAD, "joules", doc=Doc(
        since="0.5.0", hints=WORKLOAD_HINTS,
        meaning="the sum of `footprint_container_energy_joules_total` over the node's "
        "containers with that `namespace`, `model` and `phase` at each tick, all components "
        "and modes together, kept after they end: what the rule pack's per node, namespace "
        "and model records read (docs/rules.md; no `component` or `mode`, which they do not "
        "read, since a node can run as many workloads as pods: the owner rule makes each "
        "Deployment a model). Exact at a container's start and end, where "
        "`rate()` of the container's own series extrapolates. A (namespace, model, phase) no "
        "container held for the grace period is retired",
        summary="energy per namespace, model and phase, per node ([docs/rules.md](docs/rules.md))"))
WORKLOAD_CO2E = _counter(
    "footprint_workload_co2e_grams_total",
    "Operational emissions of the energy attributed per namespace, model and phase.",
    WORKLOAD, "grams", doc=Doc(
        since="0.5.0", hints=WORKLOAD_HINTS,
        meaning="the same sum of `footprint_container_co2e_grams_total`",
        summary="its operational emissions"))
WORKLOAD_ALLOCATION = _gauge(
    "footprint_workload_allocation_ratio",
    "The summed allocation ratios that carry embodied emissions, per namespace, model and "
    "phase.", (*WORKLOAD, "resource"), "ratio", doc=Doc(
        since="0.5.0", hints={**WORKLOAD_HINTS, "resource": "cpu, gpu"},
        meaning="summed over the node's containers with that `namespace`, `model` and `phase` "
        "as `footprint_chargeback_allocation_ratio` sums them per value: `gpu`, the GPU ratios "
        "of the containers that hold a GPU; `cpu`, the CPU ratios of those that hold none",
        summary="the ratios the embodied grams are shared by, summed per workload"))
ERRORS = _counter(
    "footprint_exporter_errors_total",
    "Faults by source and reason: failed reads, bad pods, missing cgroups.", ("source", "reason"),
    doc=Doc(
        meaning="faults: `read` (a RAPL zone or `/proc/stat` unreadable at a tick, or a source "
        "down for any reason at a tick), `timeout` (a source's read did not return within the "
        "read timeout: counted once per blocked read, docs/sources.md), `api` (a failed "
        "Kubernetes request), `malformed_pod`, `no_container_id`, `unknown_runtime` (source "
        "kubernetes), `no_cgroup` (source cgroups), `api` and `unresolved_device` (source "
        "resourceslices: a failed ResourceSlice request; a DRA-claimed device that no "
        "ResourceSlice of the node resolves to an NVML UUID, podresources.md#dra); pod and "
        "container faults count once per container, claimed-device faults once per device "
        "while they last, not per tick",
        summary="faults: failed reads, reads that hung (`timeout`), API errors, malformed pods, "
        "containers without a cgroup, DRA-claimed GPUs no ResourceSlice resolves"))
BUILD_INFO = _gauge("footprint_exporter_build_info", "The exporter's version.",
                    ("version", "python_version"), doc=Doc(type="gauge = 1"))

FAMILIES: dict[str, Family] = {f.name: f for f in (
    NODE_ENERGY, NODE_PLATFORM_ENERGY, RAPL_ENERGY, GPU_ENERGY, GPU_POWER, NODE_CO2E,
    UNATTRIBUTED_ENERGY, UNATTRIBUTED_CO2E, GRID_INTENSITY, GRID_INTENSITY_UPDATED,
    GRID_FORECAST, GRID_FORECAST_MIN, GRID_FORECAST_MIN_TIME, EMBODIED,
    EMBODIED_LIFETIME, PUE, WUE, GRID_WATER_INTENSITY, NODE_INFO, SOURCE_UP, CONTAINER_ENERGY,
    CONTAINER_CO2E, CONTAINER_ALLOCATION, CONTAINER_INFO, WORKLOAD_ENERGY, WORKLOAD_CO2E,
    WORKLOAD_ALLOCATION, CHARGEBACK_ENERGY, CHARGEBACK_CO2E, CHARGEBACK_ALLOCATION, ERRORS,
    BUILD_INFO)}
"""In exposition order."""
DEVICE_FAMILIES: Mapping[str, Family] = {"rapl": RAPL_ENERGY, "nvml": GPU_ENERGY}
"""The family of each source's per-device counters (`Reading.measurements`), by its `source`
label; a source not named here publishes its energy on the node's families only."""
CONTAINER_FAMILIES = (CONTAINER_ENERGY, CONTAINER_CO2E, CONTAINER_ALLOCATION, CONTAINER_INFO)
"""Every family whose labels start with (namespace, pod, container)."""
CONTAINER_SERIES = tuple(f.name for f in CONTAINER_FAMILIES)

TICK_DURATION = Family(
    "footprint_exporter_tick_duration_seconds", "summary",
    "Time each tick took: read sources, attribute, render.", (), "seconds", doc=Doc(
        type="summary (`_count`, `_sum`)",
        meaning="ticks done and the time they took; `rate(_sum) / rate(_count)` is the mean "
        "tick time",
        summary="time each tick took"))

CONTRACT_TABLES: tuple[tuple[str, tuple[Family, ...]], ...] = (
    ("hardware", (NODE_ENERGY, NODE_PLATFORM_ENERGY, RAPL_ENERGY, GPU_ENERGY, GPU_POWER,
                  NODE_CO2E, NODE_INFO, SOURCE_UP)),
    ("attribution", (CONTAINER_ENERGY, UNATTRIBUTED_ENERGY, CONTAINER_ALLOCATION,
                     CONTAINER_INFO, WORKLOAD_ENERGY, WORKLOAD_ALLOCATION, CHARGEBACK_ENERGY,
                     CHARGEBACK_ALLOCATION)),
    ("carbon", (GRID_INTENSITY, GRID_INTENSITY_UPDATED, GRID_FORECAST, GRID_FORECAST_MIN,
                GRID_FORECAST_MIN_TIME, CONTAINER_CO2E, WORKLOAD_CO2E, CHARGEBACK_CO2E,
                UNATTRIBUTED_CO2E,
                EMBODIED,
                EMBODIED_LIFETIME, PUE, WUE, GRID_WATER_INTENSITY)),
    ("exporter", (TICK_DURATION, ERRORS, BUILD_INFO)))
"""docs/metrics.md's tables (Hardware, Attribution, Carbon, The exporter itself): each one's
families in row order. A table whose families state `since` has that column."""
README_TABLE: tuple[Family, ...] = (
    NODE_ENERGY, NODE_PLATFORM_ENERGY, RAPL_ENERGY, GPU_ENERGY, GPU_POWER, NODE_CO2E,
    CONTAINER_ENERGY, CONTAINER_CO2E, CONTAINER_ALLOCATION, CONTAINER_INFO,
    WORKLOAD_ENERGY, WORKLOAD_CO2E, WORKLOAD_ALLOCATION,
    CHARGEBACK_ENERGY, CHARGEBACK_CO2E, CHARGEBACK_ALLOCATION, UNATTRIBUTED_ENERGY,
    UNATTRIBUTED_CO2E, GRID_INTENSITY, GRID_INTENSITY_UPDATED,
    GRID_FORECAST, GRID_FORECAST_MIN, GRID_FORECAST_MIN_TIME, EMBODIED, EMBODIED_LIFETIME, PUE,
    WUE, GRID_WATER_INTENSITY, NODE_INFO, SOURCE_UP, ERRORS, TICK_DURATION, BUILD_INFO)
"""The README's metric table, in row order."""
UNDOCUMENTED: frozenset[str] = frozenset()
"""Families deliberately in neither table (none: every published family is in both)."""



@dataclass(frozen=True, slots=True)
class _Published:
    """A container's info and CPU allocation series as last written."""

    container: ContainerLike
    ratio: float
    info: Labels
    ratio_labels: Labels


@dataclass(slots=True)
class _SumsPublished:
    """What the publisher keeps of one kind of sum (exporter.chargeback): its families, the keys
    whose series are published, the parts of keys first seen last tick (published at 0 then),
    and what the ratios were last summed from (the containers' version, the GPU ratios, the
    keys)."""

    energy: Family
    co2e: Family
    ratio: Family
    known: set[SumKey] = field(default_factory=set)
    pending: list[SumPart] = field(default_factory=list)
    ratios_from: tuple[int, Mapping[ContainerLike, float], object] = (-1, {}, None)
    split: bool = True
    """Whether the counters carry `component` and `mode` (else a key's parts add up to one
    series per counter)."""


class Publisher:
    """Writes the ledger; keeps what it published where a label set can change (a container's
    model, the GPU holders), so a changed series replaces the old one instead of adding one."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._containers: dict[tuple[str, str, str], _Published] = {}
        """Each container as last published: its object, ratio and the two label sets."""
        self._containers_seen: tuple[object, float] = (None, 0.0)
        """The containers (the very tuple) and allocatable cores last published."""
        self._gpu_ratio_labels: set[Labels] = set()
        self._column_labels: dict[tuple[str, str], tuple[object, list[Labels]]] = {}
        """Per (component, mode): the keys of the last column and their series' labels."""
        self._devices: dict[tuple[str, tuple[tuple[str, str], ...]], Labels] = {}
        """(family, a device's label pairs) -> its series' label values (`_device`)."""
        self._chargeback = _SumsPublished(CHARGEBACK_ENERGY, CHARGEBACK_CO2E,
                                          CHARGEBACK_ALLOCATION)
        """The sums per pod label value (exporter.chargeback)."""
        self._workloads = _SumsPublished(WORKLOAD_ENERGY, WORKLOAD_CO2E, WORKLOAD_ALLOCATION,
                                         split=False)
        """The sums per (namespace, model, phase)."""
        self._containers_version = 0
        """Bumped whenever `_containers` changes."""
        self._gpu_info: tuple[str, str] = ("", "0")
        self._node_info: tuple[str, str, str, str] = ("", "", "", "")

    # -- the ledger's API, through a family --------------------------------------------------

    def _add(self, family: Family, labels: Labels, value: float) -> None:
        self.ledger.add(family.name, family.check(labels), value)

    def _ensure(self, family: Family, labels: Labels) -> None:
        self.ledger.ensure(family.name, family.check(labels))

    def _set(self, family: Family, labels: Labels, value: float) -> None:
        self.ledger.set(family.name, family.check(labels), value)

    def _replace(self, family: Family, series: Mapping[Labels, float]) -> None:
        """A gauge family that holds exactly these series."""
        self.ledger.gauges[family.name] = {family.check(k): v for k, v in series.items()}

    def _drop(self, family: Family, labels: Labels) -> None:
        self.ledger.gauges[family.name].pop(labels, None)

    # -- start-up ----------------------------------------------------------------------------

    def static(self, sources: Sequence[tuple[str, Status]], *, kubernetes: bool,
               cpu_model: str) -> None:
        self._set(BUILD_INFO, (__version__, platform.python_version()), 1.0)
        self._node_info = ("", "", "", cpu_model)
        self._publish_node_info()
        for name, s in sources:
            if s.present:
                self._set(SOURCE_UP, (name,), 1.0 if s.enabled else 0.0)
                self._ensure(ERRORS, (name, "read"))
            for component in sorted(s.components) if s.enabled else ():
                # Published from the start so a counter's first increase is never lost to rate().
                if component == PLATFORM:
                    self._ensure(NODE_PLATFORM_ENERGY, (name,))
                    continue
                self._ensure(NODE_ENERGY, (component, name))
                self._ensure(NODE_CO2E, (component, name))
                for mode in MODES:
                    self._ensure(UNATTRIBUTED_ENERGY, (component, mode))
                    self._ensure(UNATTRIBUTED_CO2E, (component, mode))
        if kubernetes:
            self._set(SOURCE_UP, ("kubernetes",), 0.0)
            self._ensure(ERRORS, ("kubernetes", "api"))

    def publish(self, result: TickResult) -> None:
        """One tick: what was read (states, errors, info) and where its energy went."""
        inputs = result.inputs
        assert inputs is not None, "publish takes the result of account(), which sets inputs"
        live = inputs.live
        self.intensity(inputs.intensity, live=live.live, live_up=live.up,
                       last_update_unix=live.last_update_unix)
        self.forecast(live.forecast)
        if inputs.host_timed_out:
            self.read_timeout(HOST_READS)
        for reading in inputs.sources:
            if reading.timed_out:
                self.read_timeout(reading.name)
            self.source(reading, result)
        k = inputs.kubernetes
        if k is not None:
            self.kubernetes(up=k.up, api_errors=k.api_errors, malformed=k.malformed)
            if k.node is not None:
                self.node(zone=k.node[0], region=k.node[1], instance_type=k.node[2])
            if k.containers is not None:
                self.problems(k.problems)
                self.containers(k.containers, k.allocatable_cores)
        if inputs.unresolved_devices:
            self.problems([("resourceslices", "unresolved_device")] * inputs.unresolved_devices)
        if result.gpus:
            self.gpus(result.gpus)
            if inputs.podresources_up is not None:
                self.podresources(inputs.podresources_up)
            if inputs.slices is not None:
                self.slices(up=inputs.slices[0], api_errors=inputs.slices[1])
            self.gpu_ratios(result.gpu_allocation_ratio)
        self.attribution(result)
        self.sums(self._chargeback, result.chargeback, result.chargeback_expired)
        self.sums(self._workloads, result.workloads, result.workloads_expired)
        self.expire(result.expired)
        names = result.chargeback_labels
        self.sum_ratios(self._chargeback, result, label_keys(names), names)
        self.sum_ratios(self._workloads, result, workload_keys, ())
        if result.facts is not None:
            self.facts(result.facts)

    # -- each tick, in this order (publish) ---------------------------------------------------

    def intensity(self, intensity: Intensity, *, live: str | None, live_up: bool,
                  last_update_unix: float | None) -> None:
        self._replace(GRID_INTENSITY, {(intensity.zone, intensity.provider):
                                       intensity.grams_per_kwh})
        if live is not None:
            self._set(SOURCE_UP, ("intensity",), 1.0 if live_up else 0.0)
            if last_update_unix is not None:
                self._set(GRID_INTENSITY_UPDATED, (live,), last_update_unix)

    def forecast(self, view: ForecastView | None) -> None:
        """The forecast gauges: exactly the view's series, none without one."""
        horizons: dict[Labels, float] = {}
        lowest: dict[Labels, float] = {}
        lowest_at: dict[Labels, float] = {}
        if view is not None:
            horizons = {(view.zone, view.provider, label): grams
                        for label, grams in view.horizons}
            if view.minimum is not None:
                window, grams, when = view.minimum
                lowest = {(view.zone, view.provider, window): grams}
                lowest_at = {(view.zone, view.provider, window): when}
        self._replace(GRID_FORECAST, horizons)
        self._replace(GRID_FORECAST_MIN, lowest)
        self._replace(GRID_FORECAST_MIN_TIME, lowest_at)

    def read_timeout(self, source: str) -> None:
        self._add(ERRORS, (source, "timeout"), 1.0)

    def source(self, reading: SourceReading, result: TickResult) -> None:
        """One source's state, zones and owned energy (from the accounted result)."""
        self._set(SOURCE_UP, (reading.name,), 1.0 if reading.up else 0.0)
        if not reading.up:
            self._add(ERRORS, (reading.name, "read"), 1.0)
        family = DEVICE_FAMILIES.get(reading.name)
        if family is not None:
            for m in reading.measurements:
                self.ledger.set_total(family.name, self._device(family, m.labels),
                                      m.joules_total)
        for component, source, energy in result.node:
            if source == reading.name:
                self._add(NODE_ENERGY, (component, source), energy.joules)
                self._add(NODE_CO2E, (component, source), energy.grams)
        for source, joules in result.platform:
            if source == reading.name:
                self._add(NODE_PLATFORM_ENERGY, (source,), joules)

    def kubernetes(self, *, up: bool, api_errors: int, malformed: int) -> None:
        """The pod watch's state; `api_errors` and `malformed` are increments since the last."""
        self._set(SOURCE_UP, ("kubernetes",), 1.0 if up else 0.0)
        if api_errors:
            self._add(ERRORS, ("kubernetes", "api"), float(api_errors))
        if malformed:
            self._add(ERRORS, ("kubernetes", "malformed_pod"), float(malformed))

    def node(self, *, zone: str, region: str, instance_type: str) -> None:
        self._node_info = (zone, region, instance_type, self._node_info[3])
        self._publish_node_info()

    def _publish_node_info(self) -> None:
        self._replace(NODE_INFO, {(*self._node_info, *self._gpu_info): 1.0})

    def problems(self, reasons: Sequence[tuple[str, str]]) -> None:
        """(source, reason) of each problem newly found this tick."""
        for source, reason in reasons:
            self._add(ERRORS, (source, reason), 1.0)

    def containers(self, containers: Sequence[ContainerLike], allocatable_cores: float) -> None:
        """Each container's info and CPU allocation ratio; a container seen as it was last
        tick (the common case) costs one lookup, and the same tuple of them nothing."""
        if containers is self._containers_seen[0] and allocatable_cores == \
                self._containers_seen[1]:
            return
        self._containers_seen = (containers, allocatable_cores)
        for c in containers:
            ratio_value = (min(c.cpu_request_cores / allocatable_cores, 1.0)
                           if allocatable_cores > 0 else 0.0)
            previous = self._containers.get(c.key)
            if previous is not None and previous.container is c and previous.ratio == ratio_value:
                continue  # the same Container object: labels and value unchanged
            info = (*c.key, c.model, c.model_source, c.phase, c.owner_kind, c.owner_name,
                    c.container_id, c.pod_uid, *(x for pair in c.pod_labels for x in pair))
            ratio = (*c.key, c.model, c.phase, "cpu")
            if previous is not None and (previous.info, previous.ratio_labels) != (info, ratio):
                self._drop(CONTAINER_INFO, previous.info)
                self._drop(CONTAINER_ALLOCATION, previous.ratio_labels)
            self._set(CONTAINER_INFO, info, 1.0)
            self._set(CONTAINER_ALLOCATION, ratio, ratio_value)
            self._containers[c.key] = _Published(c, ratio_value, info, ratio)
            self._containers_version += 1

    def gpus(self, readings: Sequence[GpuReading]) -> None:
        for g in readings:  # their energy counters are their source's devices (`source`)
            if g.power_watts is not None:
                self._set(GPU_POWER, self._device(GPU_POWER, g.labels), g.power_watts)
        info = (", ".join(sorted({g.product for g in readings})), str(len(readings)))
        if info != self._gpu_info:
            self._gpu_info = info
            self._publish_node_info()

    def podresources(self, up: bool) -> None:
        self._set(SOURCE_UP, ("podresources",), 1.0 if up else 0.0)

    def slices(self, *, up: bool, api_errors: int) -> None:
        """The ResourceSlice watch's state; `api_errors` is the increment since the last."""
        self._set(SOURCE_UP, ("resourceslices",), 1.0 if up else 0.0)
        if api_errors:
            self._add(ERRORS, ("resourceslices", "api"), float(api_errors))

    def gpu_ratios(self, ratios: Mapping[ContainerLike, float]) -> None:
        published: set[Labels] = set()
        for c, ratio in ratios.items():
            labels = (*c.key, c.model, c.phase, "gpu")
            self._set(CONTAINER_ALLOCATION, labels, ratio)
            published.add(labels)
        for stale in self._gpu_ratio_labels - published:
            self._drop(CONTAINER_ALLOCATION, stale)
        self._gpu_ratio_labels = published

    def attribution(self, result: TickResult) -> None:
        """Each container's joules and grams: the tick's largest write (two series per
        container, component and mode). Column by column, in C (`compress`, `map`,
        `dict.update`): the parts with a share, each added to its series in the two
        families' dicts, in order (a series twice in a column gets both parts). A column with
        a negative or non-finite part goes row by row through `Ledger.add`, which raises
        naming the series."""
        joules = self.ledger.counters[CONTAINER_ENERGY.name]
        grams = self.ledger.counters[CONTAINER_CO2E.name]
        for col in result.columns:
            shares = col.shares
            series = list(compress(self._labels_of(col), shares))
            js, gs = list(compress(col.joules, shares)), list(compress(col.grams, shares))
            if not (counted(js) and counted(gs)):
                for labels, j, g in zip(series, js, gs, strict=True):
                    self._add(CONTAINER_ENERGY, labels, j)
                    self._add(CONTAINER_CO2E, labels, g)
                continue
            zero = repeat(0.0)
            joules.update(zip(series, map(add, map(joules.get, series, zero), js), strict=True))
            grams.update(zip(series, map(add, map(grams.get, series, zero), gs), strict=True))
        for component, mode, energy in result.unattributed:
            self._add(UNATTRIBUTED_ENERGY, (component, mode), energy.joules)
            self._add(UNATTRIBUTED_CO2E, (component, mode), energy.grams)

    def sums(self, kind: _SumsPublished, parts: Sequence[SumPart],
             expired: Sequence[SumKey]) -> None:
        """Each key's joules and grams this tick (exporter.chargeback). A key's series appear
        at 0 first, its first tick's parts added a tick later: Prometheus takes a series'
        first sample as its baseline, and would lose them. The keys whose grace period ended
        go."""
        pending, kind.pending = kind.pending, []
        known = kind.known
        for p in (*pending, *parts):
            labels = (*p.key, p.component, p.mode) if kind.split else p.key
            if p.key not in known:
                self._ensure(kind.energy, labels)
                self._ensure(kind.co2e, labels)
                kind.pending.append(p)
                continue
            self._add(kind.energy, labels, p.joules)
            self._add(kind.co2e, labels, p.grams)
        known.update(p.key for p in kind.pending)
        for key in expired:
            known.discard(key)
            self.ledger.retire((kind.energy.name, kind.co2e.name), key)

    def sum_ratios(self, kind: _SumsPublished, result: TickResult, keys_of: KeysOf,
                   what: object) -> None:
        """The allocation ratios of the published containers (those in their grace period
        too, as their own series) summed per key, when they, the GPU ratios or `what` (what
        the keys are made of: the charged labels) changed."""
        gpu = result.gpu_allocation_ratio
        version, last_gpu, last_what = kind.ratios_from
        if (version, last_what) == (self._containers_version, what) and gpu == last_gpu:
            return
        kind.ratios_from = (self._containers_version, dict(gpu), what)
        self._replace(kind.ratio, sum_ratios(
            ((p.container, p.ratio, gpu.get(p.container, 0.0))
             for p in self._containers.values()), keys_of))

    def _device(self, family: Family, pairs: tuple[tuple[str, str], ...]) -> Labels:
        """`family.labels_of(**dict(pairs))` for a device's (name, value) label pairs, made
        once per device (a node has a few dozen; the cache is emptied past 1,024)."""
        key = (family.name, pairs)
        labels = self._devices.get(key)
        if labels is None:
            if len(self._devices) >= 1024:
                self._devices.clear()
            labels = self._devices[key] = family.labels_of(**dict(pairs))
        return labels

    def _labels_of(self, col: ContainerColumn) -> list[Labels]:
        """The container series' labels of a column's keys, made once per component and
        mode while the keys are the same tuple (the pods unchanged)."""
        kept = self._column_labels.get((col.component, col.mode))
        if kept is not None and kept[0] is col.keys:
            return kept[1]
        labels = [CONTAINER_ENERGY.check((*c.key, c.model, c.phase, col.component, col.mode))
                  for c in col.keys]
        self._column_labels[(col.component, col.mode)] = (col.keys, labels)
        return labels

    def expire(self, keys: Sequence[ContainerKey]) -> None:
        names = tuple(f.name for f in CONTAINER_FAMILIES)
        if keys:
            self._containers_seen = (None, 0.0)
        for key in keys:
            self._containers.pop(key, None)
            self.ledger.retire(names, key)
            self._containers_version += 1

    def facts(self, facts: LifecycleFacts) -> None:
        self._replace(EMBODIED, {("server", ""): facts.server_grams,
                                 **{("gpu", index): grams for index, grams in facts.gpu_grams}})
        self._set(EMBODIED_LIFETIME, (), facts.lifetime_seconds)
        self._set(PUE, (), facts.pue)
        self._set(WUE, (), facts.wue)
        self._replace(GRID_WATER_INTENSITY, {(facts.zone, facts.grid_water_source):
                                             facts.grid_water})
