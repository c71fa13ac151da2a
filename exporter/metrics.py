"""The metric contract in code: every family's name, type, help, unit and label names, bound
once, and the one place that writes them (docs/metrics.md is the same table for people).

`Publisher` maps what a tick observed and accounted (`exporter.accounting.TickResult`) onto the
ledger; nothing else in the exporter names a metric. Each write goes through a `Family`, which
checks the number of label values, so a misplaced label fails at once in the tests instead of
producing a series nobody can query.
"""

from __future__ import annotations

import platform
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from exporter import __version__
from exporter.accounting import HOST_READS, PLATFORM, ContainerLike, SourceReading, TickResult
from exporter.attribution import MODES
from exporter.carbon import Intensity
from exporter.facts import LifecycleFacts
from exporter.intensity.forecast import ForecastView
from exporter.ledger import Labels, Ledger
from exporter.sources.base import Status
from exporter.sources.gpu import GpuReading


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: its type, help text, label names (besides `node`) and unit.

    `unit` is the OpenMetrics unit (`# UNIT`), given where it is the end of the name."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...] = ()
    unit: str = ""

    def __post_init__(self) -> None:
        base = self.name.removesuffix("_total") if self.kind == "counter" else self.name
        if self.unit and not base.endswith(f"_{self.unit}"):
            raise ValueError(f"{self.name}: unit {self.unit!r} is not the end of its name")

    def check(self, values: Labels) -> Labels:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name}: {len(values)} label values {values!r} for "
                             f"labels {self.labels!r}")
        return values


def _counter(name: str, help: str, labels: tuple[str, ...] = (), unit: str = "") -> Family:
    return Family(name, "counter", help, labels, unit)


def _gauge(name: str, help: str, labels: tuple[str, ...] = (), unit: str = "") -> Family:
    return Family(name, "gauge", help, labels, unit)


CONTAINER = ("namespace", "pod", "container", "model", "phase")
GPU = ("gpu", "uuid", "product")

NODE_ENERGY = _counter("footprint_node_energy_joules_total",
                       "Energy the node used, per component, without double counting.",
                       ("component", "source"), "joules")
NODE_PLATFORM_ENERGY = _counter("footprint_node_platform_energy_joules_total",
                                "Whole-platform energy (RAPL psys, a power meter); it overlaps "
                                "the components, so it is not among them.",
                                ("source",), "joules")
RAPL_ENERGY = _counter("footprint_rapl_energy_joules_total",
                       "Energy of each RAPL zone as read, wraparound corrected.",
                       ("zone", "domain"), "joules")
GPU_ENERGY = _counter("footprint_gpu_energy_joules_total",
                      "Energy of each physical GPU (NVML's counter, or integrated power).",
                      GPU, "joules")
GPU_POWER = _gauge("footprint_gpu_power_watts",
                   "NVML power reading of each GPU at the last tick.", GPU, "watts")
NODE_CO2E = _counter("footprint_node_co2e_grams_total",
                     "Operational emissions of the node's energy at the intensity in force.",
                     ("component", "source"), "grams")
UNATTRIBUTED_ENERGY = _counter("footprint_unattributed_energy_joules_total",
                               "Node energy no container was charged for.",
                               ("component", "mode"), "joules")
UNATTRIBUTED_CO2E = _counter("footprint_unattributed_co2e_grams_total",
                             "Operational emissions of unattributed energy.",
                             ("component", "mode"), "grams")
GRID_INTENSITY = _gauge("footprint_grid_intensity_grams_per_kwh",
                        "Grid carbon intensity in force for this node, gCO2e per kWh.",
                        ("grid_zone", "provider"), "grams_per_kwh")
GRID_INTENSITY_UPDATED = _gauge(
    "footprint_grid_intensity_last_update_timestamp_seconds",
    "Unix time the live intensity value in force is for (its age: time() - this).",
    ("provider",), "seconds")
GRID_FORECAST = _gauge(
    "footprint_grid_intensity_forecast_grams_per_kwh",
    "The live provider's forecast of the grid intensity at now + horizon, gCO2e per kWh; only "
    "while it supplies a forecast.", ("grid_zone", "provider", "horizon"), "grams_per_kwh")
GRID_FORECAST_MIN = _gauge(
    "footprint_grid_intensity_forecast_min_grams_per_kwh",
    "The lowest forecast grid intensity in the next window, gCO2e per kWh.",
    ("grid_zone", "provider", "window"), "grams_per_kwh")
GRID_FORECAST_MIN_TIME = _gauge(
    "footprint_grid_intensity_forecast_min_timestamp_seconds",
    "Unix time the lowest forecast intensity of the next window begins (now, or later).",
    ("grid_zone", "provider", "window"), "seconds")
EMBODIED = _gauge("footprint_embodied_grams",
                  "Manufacturing emissions of this node's hardware, grams CO2e.",
                  ("component", "gpu"), "grams")
EMBODIED_LIFETIME = _gauge("footprint_embodied_lifetime_seconds",
                           "Seconds of use the embodied emissions are spread over "
                           "(life x usage).", (), "seconds")
PUE = _gauge("footprint_pue", "Power usage effectiveness of the data centre the node is in.")
WUE = _gauge("footprint_wue_liters_per_kwh",
             "Water the data centre consumes on site (cooling) per kWh of IT energy, litres.",
             (), "liters_per_kwh")
GRID_WATER_INTENSITY = _gauge(
    "footprint_grid_water_intensity_liters_per_kwh",
    "Water consumed generating a kWh of the grid's electricity, litres.",
    ("grid_zone", "source"), "liters_per_kwh")
NODE_INFO = _gauge("footprint_node_info", "Facts about the node.",
                   ("topology_zone", "topology_region", "instance_type", "cpu_model",
                    "gpu_product", "gpu_count"))
SOURCE_UP = _gauge("footprint_source_up",
                   "Whether each input worked at the last tick (1) or not (0).", ("source",))
CONTAINER_ENERGY = _counter("footprint_container_energy_joules_total",
                            "Energy attributed to one container.",
                            (*CONTAINER, "component", "mode"), "joules")
CONTAINER_CO2E = _counter("footprint_container_co2e_grams_total",
                          "Operational emissions of the energy attributed to one container.",
                          (*CONTAINER, "component", "mode"), "grams")
CONTAINER_ALLOCATION = _gauge(
    "footprint_container_allocation_ratio",
    "The container's share of the node's resource (CPU requests / allocatable).",
    (*CONTAINER, "resource"), "ratio")
CONTAINER_INFO = _gauge("footprint_container_info", "How the container was matched to a model.",
                        ("namespace", "pod", "container", "model", "model_source", "phase",
                         "owner_kind", "owner_name", "container_id", "uid"))
ERRORS = _counter("footprint_exporter_errors_total",
                  "Faults by source and reason: failed reads, bad pods, missing cgroups.",
                  ("source", "reason"))
BUILD_INFO = _gauge("footprint_exporter_build_info", "The exporter's version.",
                    ("version", "python_version"))

FAMILIES: dict[str, Family] = {f.name: f for f in (
    NODE_ENERGY, NODE_PLATFORM_ENERGY, RAPL_ENERGY, GPU_ENERGY, GPU_POWER, NODE_CO2E,
    UNATTRIBUTED_ENERGY, UNATTRIBUTED_CO2E, GRID_INTENSITY, GRID_INTENSITY_UPDATED,
    GRID_FORECAST, GRID_FORECAST_MIN, GRID_FORECAST_MIN_TIME, EMBODIED,
    EMBODIED_LIFETIME, PUE, WUE, GRID_WATER_INTENSITY, NODE_INFO, SOURCE_UP, CONTAINER_ENERGY,
    CONTAINER_CO2E, CONTAINER_ALLOCATION, CONTAINER_INFO, ERRORS, BUILD_INFO)}
"""In exposition order."""
CONTAINER_FAMILIES = (CONTAINER_ENERGY, CONTAINER_CO2E, CONTAINER_ALLOCATION, CONTAINER_INFO)
"""Every family whose labels start with (namespace, pod, container)."""
CONTAINER_SERIES = tuple(f.name for f in CONTAINER_FAMILIES)

TICK_DURATION = Family("footprint_exporter_tick_duration_seconds", "summary",
                       "Time each tick took: read sources, attribute, render.", (), "seconds")




@dataclass(frozen=True, slots=True)
class _Published:
    """A container's info and CPU allocation series as last written."""

    container: object
    ratio: float
    info: Labels
    ratio_labels: Labels


class Publisher:
    """Writes the ledger; keeps what it published where a label set can change (a container's
    model, the GPU holders), so a changed series replaces the old one instead of adding one."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._containers: dict[tuple[str, str, str], _Published] = {}
        """Each container as last published: its object, ratio and the two label sets."""
        self._gpu_ratio_labels: set[Labels] = set()
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
        self.expire(result.expired)
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
        for zone in reading.zones:
            self.ledger.set_total(RAPL_ENERGY.name, RAPL_ENERGY.check((zone.zone, zone.domain)),
                                  zone.joules_total)
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
        tick (the common case) costs one lookup."""
        for c in containers:
            ratio_value = (min(c.cpu_request_cores / allocatable_cores, 1.0)
                           if allocatable_cores > 0 else 0.0)
            previous = self._containers.get(c.key)
            if previous is not None and previous.container is c and previous.ratio == ratio_value:
                continue  # the same Container object: labels and value unchanged
            info = (*c.key, c.model, c.model_source, c.phase, c.owner_kind, c.owner_name,
                    c.container_id, c.pod_uid)
            ratio = (*c.key, c.model, c.phase, "cpu")
            if previous is not None and (previous.info, previous.ratio_labels) != (info, ratio):
                self._drop(CONTAINER_INFO, previous.info)
                self._drop(CONTAINER_ALLOCATION, previous.ratio_labels)
            self._set(CONTAINER_INFO, info, 1.0)
            self._set(CONTAINER_ALLOCATION, ratio, ratio_value)
            self._containers[c.key] = _Published(c, ratio_value, info, ratio)

    def gpus(self, readings: Sequence[GpuReading]) -> None:
        for g in readings:
            labels = (str(g.index), g.uuid, g.product)
            self.ledger.set_total(GPU_ENERGY.name, GPU_ENERGY.check(labels), g.joules_total)
            if g.power_watts is not None:
                self._set(GPU_POWER, labels, g.power_watts)
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

    def gpu_ratios(self, ratios: Mapping[Hashable, float]) -> None:
        published: set[Labels] = set()
        for holder, ratio in ratios.items():
            c = cast(ContainerLike, holder)
            labels = (*c.key, c.model, c.phase, "gpu")
            self._set(CONTAINER_ALLOCATION, labels, ratio)
            published.add(labels)
        for stale in self._gpu_ratio_labels - published:
            self._drop(CONTAINER_ALLOCATION, stale)
        self._gpu_ratio_labels = published

    def attribution(self, result: TickResult) -> None:
        for key, component, mode, energy in result.containers:
            c = cast(ContainerLike, key)
            series = (*c.key, c.model, c.phase, component, mode)
            self._add(CONTAINER_ENERGY, series, energy.joules)
            self._add(CONTAINER_CO2E, series, energy.grams)
        for component, mode, energy in result.unattributed:
            self._add(UNATTRIBUTED_ENERGY, (component, mode), energy.joules)
            self._add(UNATTRIBUTED_CO2E, (component, mode), energy.grams)

    def expire(self, keys: Sequence[Hashable]) -> None:
        names = tuple(f.name for f in CONTAINER_FAMILIES)
        for key in keys:
            prefix = cast(tuple[str, str, str], key)
            self._containers.pop(prefix, None)
            self.ledger.retire(names, prefix)

    def facts(self, facts: LifecycleFacts) -> None:
        self._replace(EMBODIED, {("server", ""): facts.server_grams,
                                 **{("gpu", index): grams for index, grams in facts.gpu_grams}})
        self._set(EMBODIED_LIFETIME, (), facts.lifetime_seconds)
        self._set(PUE, (), facts.pue)
        self._set(WUE, (), facts.wue)
        self._replace(GRID_WATER_INTENSITY, {(facts.zone, facts.grid_water_source):
                                             facts.grid_water})
