"""One tick: read every source once, attribute, convert to grams, update the ledger, render."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

from exporter import __version__, carbon, logs
from exporter.attribution import MODES, GpuUse, IdleBaseline, attribute_energy
from exporter.config import AttributionSettings, EmbodiedSettings, PueSettings
from exporter.exposition import CONTAINER_SERIES, Renderer, Snapshot, TickStats
from exporter.facts import node_facts
from exporter.gpus import Allocation, plan_gpus
from exporter.intensity.chain import FallbackChain
from exporter.kube.pods import PodView
from exporter.ledger import Labels, Ledger
from exporter.sources.base import EnergySource, Reading, Status
from exporter.sources.gpu import GpuReading
from exporter.watchdog import Guard
from exporter.workloads import Container, WorkloadSample, WorkloadTracker

log = logs.get("sampler")

ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")
REGION_LABELS = ("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region")
INSTANCE_TYPE_LABELS = ("node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type")


@dataclass(frozen=True, slots=True)
class SourceState:
    """A source as probed at start-up: the landing page and the log show this."""

    name: str
    status: Status


def read_cpu_model(procfs: Path) -> str:
    try:
        text = (procfs / "cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model"):
            return value.strip()
    return ""


class DeviceHolder(Protocol):
    """A device the kubelet gave a container (exporter.kube.podresources.DeviceHolder)."""

    @property
    def namespace(self) -> str: ...

    @property
    def pod(self) -> str: ...

    @property
    def container(self) -> str: ...

    @property
    def device(self) -> str: ...


class PodResources(Protocol):
    """The kubelet's device allocations (exporter.kube.podresources.PodResourcesClient)."""

    def holders(self) -> Sequence[DeviceHolder] | None: ...

    def close(self) -> None: ...


class Pods(Protocol):
    """The pods of this node as last known (exporter.kube.pods.PodWatcher)."""

    def view(self) -> PodView: ...

    def start(self) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...


@dataclass
class Kubernetes:
    """The pod watch and the tracker that turns its pods into workloads."""

    pods: Pods
    tracker: WorkloadTracker
    grace_seconds: float
    podresources: PodResources | None = None


def _first(labels: dict[str, str], keys: Sequence[str]) -> str:
    return next((labels[k] for k in keys if labels.get(k)), "")


class Sampler:
    """Owns the sources, the ledger and the renderer; `tick()` runs in a worker thread."""

    def __init__(self, *, sources: Sequence[EnergySource], statuses: Sequence[Status],
                 intensity: FallbackChain, attribution: AttributionSettings,
                 node: str, cpu_model: str, kubernetes: Kubernetes | None = None,
                 embodied: EmbodiedSettings | None = None, pue: PueSettings | None = None,
                 on_node: Callable[[dict[str, str], str], None] | None = None,
                 process_metrics: bool = True, read_timeout_seconds: float = 5.0,
                 clock: Callable[[], float] = time.monotonic,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        self._sources = [(s, st, Guard(s.name, s.read, timeout_seconds=read_timeout_seconds))
                         for s, st in zip(sources, statuses, strict=True) if st.enabled]
        self.states = tuple(SourceState(s.name, st) for s, st in zip(sources, statuses,
                                                                     strict=True))
        self._intensity = intensity
        self._attribution = attribution
        self._baseline = IdleBaseline(fixed_watts=attribution.idle_watts,
                                      percentile=attribution.idle_percentile,
                                      window_seconds=attribution.idle_window_seconds)
        self._kubernetes = kubernetes
        self._clock = clock
        self._timer = timer
        self._last_now: float | None = None
        self._stats = TickStats()
        self._cpu_model = cpu_model
        self._node_labels: dict[str, str] = {}
        self._provider_id = ""
        self._embodied = embodied or EmbodiedSettings()
        self._pue = pue or PueSettings()
        self._facts_key: object = None
        self._on_node = on_node
        self._node_seen: object = None
        self._gpu_products: tuple[tuple[str, str], ...] = ()
        self._last_seen: dict[tuple[str, str, str], float] = {}
        self._gauge_labels: dict[tuple[str, str, str], tuple[Labels, Labels]] = {}
        self._gpu_ratio_labels: set[Labels] = set()
        self._gpu_info: tuple[str, str] = ("", "0")
        self._api_errors = 0
        self._malformed = 0
        self._read_throttle = logs.Throttle(log)
        self.ledger = Ledger()
        self._renderer = Renderer(self.ledger, node=node, process_metrics=process_metrics)
        self._publish_static(statuses=statuses, sources=sources)

    def _publish_static(self, *, statuses: Sequence[Status],
                        sources: Sequence[EnergySource]) -> None:
        ledger = self.ledger
        ledger.set("footprint_exporter_build_info", (__version__, platform.python_version()), 1)
        self._set_node_info({})
        for source, status in zip(sources, statuses, strict=True):
            if status.present:
                ledger.set("footprint_source_up", (source.name,), 1.0 if status.enabled else 0.0)
                ledger.ensure("footprint_exporter_errors_total", (source.name, "read"))
            for component in sorted(status.components) if status.enabled else ():
                # Published from the start so a counter's first increase is never lost to rate().
                ledger.ensure("footprint_node_energy_joules_total", (component, source.name))
                ledger.ensure("footprint_node_co2e_grams_total", (component, source.name))
                for mode in MODES:
                    ledger.ensure("footprint_unattributed_energy_joules_total", (component, mode))
                    ledger.ensure("footprint_unattributed_co2e_grams_total", (component, mode))
        if self._kubernetes is not None:
            ledger.set("footprint_source_up", ("kubernetes",), 0.0)
            ledger.ensure("footprint_exporter_errors_total", ("kubernetes", "api"))

    def start(self) -> None:
        """Start what runs beside the ticks (the pod watch, a live intensity provider)."""
        self._intensity.start()
        if self._kubernetes is not None:
            self._kubernetes.pods.start()

    def close(self) -> None:
        self._intensity.stop()
        if self._kubernetes is not None:
            self._kubernetes.pods.stop()
            if self._kubernetes.podresources is not None:
                self._kubernetes.podresources.close()
        for source, _, guard in self._sources:
            guard.close()
            if guard.blocked:  # closing under a read that never returned could hang the exit
                log.warning(f"source {source.name}: a read is still blocked; not closed")
                continue
            closer = getattr(source, "close", None)
            if closer is not None:
                closer()

    def _set_node_info(self, labels: dict[str, str]) -> None:
        self._node_labels = labels
        self.ledger.gauges["footprint_node_info"] = {(
            _first(labels, ZONE_LABELS), _first(labels, REGION_LABELS),
            _first(labels, INSTANCE_TYPE_LABELS), self._cpu_model, *self._gpu_info): 1.0}

    def tick(self) -> Snapshot:
        started = self._timer()
        now = self._clock()
        seconds = now - self._last_now if self._last_now is not None else 0.0
        self._last_now = now
        ledger = self.ledger
        intensity = self._intensity.current()
        ledger.gauges["footprint_grid_intensity_grams_per_kwh"] = {
            (intensity.zone, intensity.provider): intensity.grams_per_kwh}
        live = self._intensity.live
        if live is not None:
            ledger.set("footprint_source_up", ("intensity",), 1.0 if self._intensity.up else 0.0)
            updated = self._intensity.last_update_unix
            if updated is not None:
                ledger.set("footprint_grid_intensity_last_update_timestamp_seconds",
                           (live.name,), updated)

        energy: dict[str, float] = {}
        gpu_readings: tuple[GpuReading, ...] = ()
        for source, status, guard in self._sources:
            reading = self._read(source, guard, now)
            if not guard.blocked:  # a blocked read's thread owns the source's state
                gpu_readings = getattr(source, "gpus", gpu_readings)
            ledger.set("footprint_source_up", (source.name,), 1.0 if reading.up else 0.0)
            if not reading.up:
                ledger.add("footprint_exporter_errors_total", (source.name, "read"), 1.0)
            for zone in reading.zones:
                ledger.set_total("footprint_rapl_energy_joules_total", (zone.zone, zone.domain),
                                 zone.joules_total)
            for component, joules in reading.joules.items():
                if component not in status.components:
                    continue  # another source owns it: never count a component twice
                labels = (component, source.name)
                ledger.add("footprint_node_energy_joules_total", labels, joules)
                ledger.add("footprint_node_co2e_grams_total", labels,
                           carbon.grams(joules, intensity))
                energy[component] = energy.get(component, 0.0) + joules

        idle: dict[str, float] = {}
        if seconds > 0:
            for component, joules in energy.items():
                self._baseline.observe(component, watts=joules / seconds, now=now)
                idle[component] = self._baseline.watts(component) * seconds

        sample, allocatable = self._sample_workloads(now)
        gpus: tuple[GpuUse, ...] = ()
        if gpu_readings:
            self._publish_gpus(gpu_readings)
            energy.pop("gpu", None)  # attributed GPU by GPU instead
            gpus = self._plan_gpus(gpu_readings, sample, now=now, seconds=seconds)
        shares = attribute_energy(
            energy_joules=energy, idle_joules=idle,
            workloads=sample.workloads if sample else (),
            node_busy_cpu_seconds=sample.node_busy_cpu_seconds if sample else 0.0,
            allocatable_cores=allocatable, idle_policy=self._attribution.idle_policy,
            gpus=gpus)
        for (key, component, mode), joules in shares.containers.items():
            c = cast(Container, key)
            series = (c.namespace, c.pod, c.container, c.model, c.phase, component, mode)
            ledger.add("footprint_container_energy_joules_total", series, joules)
            ledger.add("footprint_container_co2e_grams_total", series,
                       carbon.grams(joules, intensity))
        for (component, mode), joules in shares.unattributed.items():
            ledger.add("footprint_unattributed_energy_joules_total", (component, mode), joules)
            ledger.add("footprint_unattributed_co2e_grams_total", (component, mode),
                       carbon.grams(joules, intensity))
        self._expire(now)
        self._publish_facts(intensity.zone)

        snapshot = self._renderer.render(self._stats)
        self._stats = TickStats(self._stats.count + 1,
                                self._stats.seconds + (self._timer() - started))
        return snapshot

    def _read(self, source: EnergySource, guard: Guard[Reading], now: float) -> Reading:
        """The source's reading, or a down one when its read is blocked or raised."""
        outcome = guard.run(now)
        if outcome.started_hang:
            self.ledger.add("footprint_exporter_errors_total", (source.name, "timeout"), 1.0)
            log.warning(f"source {source.name}: a read did not return within "
                        f"{guard.timeout_seconds:g} s (a hung driver, or a FIFO or device "
                        "file where a counter should be?); the source is down and the tick "
                        "goes on without it until the read returns")
        elif outcome.late:
            log.info(f"source {source.name}: the blocked read returned; its energy is counted "
                     "at this tick")
        if outcome.error is not None:
            self._read_throttle.fault(source.name, f"source {source.name}: read failed with "
                                      f"{type(outcome.error).__name__}: {outcome.error}; the "
                                      "source is down this tick, the others go on (a bug: "
                                      "please report it)")
        elif outcome.value is not None:
            self._read_throttle.recovered(source.name, f"source {source.name}: reading again")
        return outcome.value if outcome.value is not None else Reading(up=False)

    def _sample_workloads(self, now: float) -> tuple[WorkloadSample | None, float]:
        """Containers and their CPU time this tick; (None, 0) without a cluster or before sync."""
        k = self._kubernetes
        if k is None:
            return None, 0.0
        view = k.pods.view()
        ledger = self.ledger
        ledger.set("footprint_source_up", ("kubernetes",), 1.0 if view.up else 0.0)
        if view.api_errors > self._api_errors:
            ledger.add("footprint_exporter_errors_total", ("kubernetes", "api"),
                       view.api_errors - self._api_errors)
            self._api_errors = view.api_errors
        if view.malformed > self._malformed:
            ledger.add("footprint_exporter_errors_total", ("kubernetes", "malformed_pod"),
                       view.malformed - self._malformed)
            self._malformed = view.malformed
        if view.node is not None:
            self._provider_id = view.node.provider_id
            self._set_node_info(dict(view.node.labels))
            seen = (tuple(sorted(view.node.labels.items())), view.node.provider_id)
            if seen != self._node_seen and self._on_node is not None:
                self._node_seen = seen
                self._on_node(dict(view.node.labels), view.node.provider_id)
        if not view.synced:
            return None, 0.0
        sample = k.tracker.sample(view)
        for problem in sample.problems:
            source = "cgroups" if problem.reason == "no_cgroup" else "kubernetes"
            ledger.add("footprint_exporter_errors_total", (source, problem.reason), 1.0)
        allocatable = view.node.allocatable_cores if view.node is not None else 0.0
        for c in sample.containers:
            self._last_seen[c.key] = now
            info = (*c.key, c.model, c.model_source, c.phase, c.owner_kind, c.owner_name)
            ratio = (*c.key, c.model, c.phase, "cpu")
            previous = self._gauge_labels.get(c.key)
            if previous is not None and previous != (info, ratio):
                ledger.gauges["footprint_container_info"].pop(previous[0], None)
                ledger.gauges["footprint_container_allocation_ratio"].pop(previous[1], None)
            self._gauge_labels[c.key] = (info, ratio)
            ledger.set("footprint_container_info", info, 1.0)
            ledger.set("footprint_container_allocation_ratio", ratio,
                       min(c.cpu_request_cores / allocatable, 1.0) if allocatable > 0 else 0.0)
        return sample, allocatable

    def _publish_facts(self, zone: str) -> None:
        """Embodied grams, their lifetime and the PUE, recomputed when their inputs change."""
        key = (tuple(sorted(self._node_labels.items())), self._provider_id, zone,
               self._gpu_products)
        if key == self._facts_key:
            return
        self._facts_key = key
        facts = node_facts(embodied=self._embodied, pue=self._pue, labels=self._node_labels,
                           provider_id=self._provider_id, zone=zone, gpus=self._gpu_products)
        self.ledger.gauges["footprint_embodied_grams"] = {
            ("server", ""): facts.server_grams,
            **{("gpu", index): grams for index, grams in facts.gpu_grams}}
        self.ledger.set("footprint_embodied_lifetime_seconds", (), facts.lifetime_seconds)
        self.ledger.set("footprint_pue", (), facts.pue)
        log.info(f"PUE {facts.pue:g} ({facts.pue_source}); embodied {facts.server_grams:g} g "
                 f"server + {len(facts.gpu_grams)} GPU(s) over {facts.lifetime_seconds:.0f} s")

    def _publish_gpus(self, readings: Sequence[GpuReading]) -> None:
        self._gpu_products = tuple((str(g.index), g.product) for g in readings)
        ledger = self.ledger
        for g in readings:
            labels = (str(g.index), g.uuid, g.product)
            ledger.set_total("footprint_gpu_energy_joules_total", labels, g.joules_total)
            if g.power_watts is not None:
                ledger.set("footprint_gpu_power_watts", labels, g.power_watts)
        products = sorted({g.product for g in readings})
        info = (", ".join(products), str(len(readings)))
        if info != self._gpu_info:
            self._gpu_info = info
            self._set_node_info(self._node_labels)

    def _plan_gpus(self, readings: Sequence[GpuReading], sample: WorkloadSample | None, *,
                   now: float, seconds: float) -> tuple[GpuUse, ...]:
        """Each GPU's energy, idle baseline and holders; sets the gpu allocation ratios."""
        fixed = self._attribution.idle_watts.get("gpu")
        idle: dict[str, float] = {}
        for g in readings:
            if seconds > 0 and g.up:
                key = f"gpu:{g.uuid}"
                self._baseline.observe(key, watts=g.joules / seconds, now=now)
                watts = fixed if fixed is not None else self._baseline.watts(key)
                idle[g.uuid] = watts * seconds
        allocations: list[Allocation] = []
        of_pid: dict[int, Container] = {}
        k = self._kubernetes
        if sample is not None and k is not None:
            by_key = {c.key: c for c in sample.containers}
            if k.podresources is not None:
                held = k.podresources.holders()
                self.ledger.set("footprint_source_up", ("podresources",),
                                0.0 if held is None else 1.0)
                for h in held or ():
                    container = by_key.get((h.namespace, h.pod, h.container))
                    if container is not None:
                        allocations.append(Allocation(container, h.device))
            pids = {p.pid for g in readings for p in g.processes}
            of_pid = k.tracker.containers_of_pids(pids, sample.containers)
        plan = plan_gpus(gpus=readings, idle_joules=idle, allocations=allocations,
                         container_of_pid=of_pid)
        ratios: set[Labels] = set()
        for holder, ratio in plan.allocation_ratio.items():
            c = cast(Container, holder)
            labels = (*c.key, c.model, c.phase, "gpu")
            self.ledger.set("footprint_container_allocation_ratio", labels, ratio)
            ratios.add(labels)
        for stale in self._gpu_ratio_labels - ratios:
            self.ledger.gauges["footprint_container_allocation_ratio"].pop(stale, None)
        self._gpu_ratio_labels = ratios
        return plan.uses

    def _expire(self, now: float) -> None:
        """Drop the series of containers unseen for longer than the grace period."""
        if self._kubernetes is None:
            return
        grace = self._kubernetes.grace_seconds
        for key in [k for k, seen in self._last_seen.items() if now - seen > grace]:
            del self._last_seen[key]
            self._gauge_labels.pop(key, None)
            self.ledger.retire(CONTAINER_SERIES, key)
