"""One tick in three stages: read (every source, the pods, the GPU holders: all the I/O), account
(exporter.accounting: pure), publish (exporter.metrics: the only writer of the ledger), then
render the exposition bytes."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from exporter import logs
from exporter.accounting import AccountState, SourceReading, TickInputs, account
from exporter.attribution import IdleBaseline
from exporter.config import AttributionSettings, EmbodiedSettings, PueSettings, WaterSettings
from exporter.exposition import Renderer, Snapshot, TickStats
from exporter.facts import SECONDS_PER_YEAR, lifecycle_facts
from exporter.gpus import Allocation
from exporter.intensity.chain import FallbackChain
from exporter.kube.podresources import ClaimHolder
from exporter.kube.pods import PodView
from exporter.kube.slices import DeviceIndex
from exporter.ledger import Ledger
from exporter.metrics import Publisher
from exporter.sources.base import EnergySource, Reading, Status
from exporter.sources.gpu import GpuReading
from exporter.watchdog import Guard
from exporter.workloads import WorkloadSample, WorkloadTracker

log = logs.get("sampler")

HOST_READS = "cgroups"
"""The guard of the tick's host reads besides the sources' (container CPU time, /proc), and
its `source` label on footprint_exporter_errors_total{reason="timeout"}."""

ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")
REGION_LABELS = ("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region")
INSTANCE_TYPE_LABELS = ("node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type")


@dataclass(frozen=True, slots=True)
class SourceState:
    """A source as probed at start-up: the landing page and the log show this."""

    name: str
    status: Status


@dataclass(frozen=True, slots=True)
class InputState:
    """One row of the landing page's table of inputs."""

    name: str
    state: str
    """on (an energy source in use), up (a service that answered), off, down or unknown."""
    covers: str
    detail: str


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

    def holders(self, seen: Hashable = None) -> Sequence[DeviceHolder | ClaimHolder] | None: ...

    def close(self) -> None: ...


class Slices(Protocol):
    """This node's ResourceSlices (exporter.kube.slices.SliceWatcher)."""

    def index(self) -> DeviceIndex: ...

    def up(self) -> bool: ...

    def synced(self) -> bool: ...

    def errors(self) -> int: ...

    def start(self) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...


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
    slices: Slices | None = None
    """Where DRA-claimed devices are resolved to NVML UUIDs; None: DRA off."""


def _mass(grams: float) -> str:
    """Grams in the unit people read: g, kg or t."""
    if grams >= 1e6:
        return f"{grams / 1e6:.3g} t"
    if grams >= 1e3:
        return f"{grams / 1e3:.3g} kg"
    return f"{grams:.3g} g"


def _first(labels: Mapping[str, str], keys: Sequence[str]) -> str:
    return next((labels[k] for k in keys if labels.get(k)), "")


class Sampler:
    """Owns the sources, the accounting state, the ledger and the renderer; `tick()` runs in a
    worker thread."""

    def __init__(self, *, sources: Sequence[EnergySource], statuses: Sequence[Status],
                 intensity: FallbackChain, attribution: AttributionSettings,
                 node: str, cpu_model: str, kubernetes: Kubernetes | None = None,
                 embodied: EmbodiedSettings | None = None, pue: PueSettings | None = None,
                 water: WaterSettings | None = None,
                 on_node: Callable[[dict[str, str], str], None] | None = None,
                 process_metrics: bool = True, read_timeout_seconds: float = 5.0,
                 clock: Callable[[], float] = time.monotonic,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        self._sources = [(s, st, Guard(s.name, s.read, timeout_seconds=read_timeout_seconds))
                         for s, st in zip(sources, statuses, strict=True) if st.enabled]
        self._host_reads = Guard(HOST_READS, self._read_host,
                                 timeout_seconds=read_timeout_seconds)
        self.states = tuple(SourceState(s.name, st) for s, st in zip(sources, statuses,
                                                                     strict=True))
        self._intensity = intensity
        self._attribution = attribution
        self._state = AccountState(
            IdleBaseline(fixed_watts=attribution.idle_watts,
                         percentile=attribution.idle_percentile,
                         window_seconds=attribution.idle_window_seconds),
            grace_seconds=kubernetes.grace_seconds if kubernetes is not None else 0.0)
        self._kubernetes = kubernetes
        self._clock = clock
        self._timer = timer
        self._last_now: float | None = None
        self._stats = TickStats()
        self._node_labels: dict[str, str] = {}
        self._provider_id = ""
        self._embodied = embodied or EmbodiedSettings()
        self._pue = pue or PueSettings()
        self._water = water or WaterSettings()
        self._facts_key: object = None
        self._on_node = on_node
        self._node_seen: object = None
        self._gpu_products: tuple[tuple[str, str], ...] = ()
        self._api_errors = 0
        self._malformed = 0
        self._slice_errors = 0
        self._unresolved: set[tuple[ClaimHolder, str]] = set()
        """Claimed devices that could not be resolved, as last reported (logged once each)."""
        self._read_throttle = logs.Throttle(log)
        self.ledger = Ledger()
        self._publish = Publisher(self.ledger)
        self._renderer = Renderer(self.ledger, node=node, process_metrics=process_metrics)
        self._publish.static([(s.name, st) for s, st in zip(sources, statuses, strict=True)],
                             kubernetes=kubernetes is not None, cpu_model=cpu_model)

    def inputs(self) -> list[InputState]:
        """Every input and its state now, for the landing page: the energy sources (as probed,
        and up or down at the last tick), the pod watch, the pod-resources API, the grid
        intensity in force and the PUE. Cheap, and safe from the event loop's thread."""
        rows = []
        up = self.ledger.gauges.get("footprint_source_up", {})
        for s in self.states:
            state = ("off" if not s.status.enabled else
                     "on" if up.get((s.name,), 1.0) == 1.0 else "down")
            rows.append(InputState(s.name, state, ", ".join(sorted(s.status.components)),
                                   s.status.detail))
        k = self._kubernetes
        if k is None:
            rows.append(InputState("kubernetes", "off", "", "no cluster configured, or "
                                   "--no-collector.kubernetes: all energy stays unattributed"))
        else:
            view = k.pods.view()
            rows.append(InputState(
                "kubernetes", "up" if view.up else "down", "pods",
                f"{len(view.pods)} pods of this node known"
                + ("" if view.synced else "; waiting for the first list")
                + f"; {view.api_errors} failed API requests since start"))
            if k.podresources is not None:
                held = up.get(("podresources",))
                rows.append(InputState(
                    "podresources", "unknown" if held is None else
                    "up" if held == 1.0 else "down", "gpu holders",
                    "the kubelet's device allocations"))
            if k.slices is not None:
                index = k.slices.index()
                rows.append(InputState(
                    "resourceslices", "up" if k.slices.up() else "down", "dra gpu holders",
                    f"{index.devices} DRA devices in {index.pools} pools of this node"
                    + ("" if k.slices.synced() else "; waiting for the first list")))
        current = self._intensity.current()
        live = self._intensity.live
        rows.append(InputState(
            "intensity", "up" if live is None or self._intensity.up else "down", "carbon",
            f"{current.grams_per_kwh:g} gCO2e/kWh for zone {current.zone} from "
            f"{current.provider}" + (f"; live provider {live.name}" if live is not None
                                     else "; no live provider")))
        pue = self.ledger.gauges.get("footprint_pue", {}).get(())
        rows.append(InputState("pue", "on" if pue is not None else "unknown", "infrastructure",
                               f"PUE {pue:g}" if pue is not None else "not computed yet"))
        return rows

    def start(self) -> None:
        """Start what runs beside the ticks (the pod watch, a live intensity provider)."""
        self._intensity.start()
        if self._kubernetes is not None:
            self._kubernetes.pods.start()
            if self._kubernetes.slices is not None:
                self._kubernetes.slices.start()

    def close(self) -> None:
        self._intensity.stop()
        if self._kubernetes is not None:
            self._kubernetes.pods.stop()
            if self._kubernetes.slices is not None:
                self._kubernetes.slices.stop()
            if self._kubernetes.podresources is not None:
                self._kubernetes.podresources.close()
        self._host_reads.close()
        for source, _, guard in self._sources:
            guard.close()
            if guard.blocked:  # closing under a read that never returned could hang the exit
                log.warning(f"source {source.name}: a read is still blocked; not closed")
                continue
            closer = getattr(source, "close", None)
            if closer is not None:
                closer()

    def tick(self) -> Snapshot:
        started = self._timer()
        now = self._clock()
        seconds = now - self._last_now if self._last_now is not None else 0.0
        self._last_now = now
        publish = self._publish

        # 1. read: every input of this tick, the only stage that does I/O
        intensity = self._intensity.current()
        readings = [self._read(source, status, guard, now)
                    for source, status, guard in self._sources]
        gpus = next((r.gpus for r in reversed(readings) if r.gpus), ())
        view = self._kubernetes.pods.view() if self._kubernetes is not None else None
        sample, of_pid, host_timed_out = self._sample_workloads(view, gpus)
        allocatable = view.node.allocatable_cores if view and view.node is not None else 0.0
        allocations, podresources_up = self._gpu_holders(gpus, sample)

        # 2. account: pure
        result = account(TickInputs(
            now=now, seconds=seconds, intensity=intensity, sources=tuple(readings),
            containers=tuple(c.key for c in sample.containers) if sample else (),
            workloads=sample.workloads if sample else (),
            node_busy_cpu_seconds=sample.node_busy_cpu_seconds if sample else 0.0,
            allocatable_cores=allocatable, gpu_allocations=allocations,
            container_of_pid=of_pid, idle_policy=self._attribution.idle_policy,
            gpu_idle_watts=self._attribution.idle_watts.get("gpu"),
            expire=sample is not None), self._state)

        # 3. publish: the metrics module writes the ledger, in a fixed order
        live = self._intensity.live
        publish.intensity(intensity, live=live.name if live is not None else None,
                          live_up=self._intensity.up,
                          last_update_unix=self._intensity.last_update_unix)
        publish.forecast(self._intensity.forecast())
        if host_timed_out:
            publish.read_timeout(HOST_READS)
        for reading in readings:
            if reading.timed_out:
                publish.read_timeout(reading.name)
            publish.source(reading, result)
        if view is not None:
            self._publish_kubernetes(view, sample, allocatable)
        if gpus:
            self._gpu_products = tuple((str(g.index), g.product) for g in gpus)
            publish.gpus(gpus)
            if podresources_up is not None:
                publish.podresources(podresources_up)
            self._publish_slices()
            publish.gpu_ratios(result.gpu_allocation_ratio)
        publish.attribution(result)
        publish.expire(result.expired)
        self._publish_facts(intensity.zone)

        snapshot = self._renderer.render(self._stats)
        self._stats = TickStats(self._stats.count + 1,
                                self._stats.seconds + (self._timer() - started))
        return snapshot

    def _read(self, source: EnergySource, status: Status, guard: Guard[float, Reading],
              now: float) -> SourceReading:
        """The source's reading (only the components it owns), or a down one when its read is
        blocked or raised."""
        outcome = guard.run(now)
        if outcome.started_hang:
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
                                      "please report it)",
                                      source=source.name, err=repr(outcome.error))
        elif outcome.value is not None:
            self._read_throttle.recovered(source.name, f"source {source.name}: reading again")
        reading = outcome.value if outcome.value is not None else Reading(up=False)
        owned = status.components
        return SourceReading(
            name=source.name, up=reading.up,
            # another source owns the rest: never count a component twice
            joules={c: j for c, j in reading.joules.items() if c in owned},
            zones=reading.zones, gpus=reading.gpus if "gpu" in owned else (),
            timed_out=outcome.started_hang)

    def _sample_workloads(self, view: PodView | None, gpus: Sequence[GpuReading]
                          ) -> tuple[WorkloadSample | None, Mapping[int, Hashable], bool]:
        """Containers and their CPU time this tick, and the containers of the GPU processes
        (None, {} without a cluster or before sync), and whether those host reads timed out
        this tick. The reads (procfs, every container's cgroup) are guarded like a source's:
        a hung cgroup file leaves the containers unknown this tick, never the tick blocked."""
        if view is None or self._kubernetes is None:
            return None, {}, False
        if view.node is not None:
            self._provider_id = view.node.provider_id
            self._node_labels = dict(view.node.labels)
            seen = (tuple(sorted(view.node.labels.items())), view.node.provider_id)
            if seen != self._node_seen and self._on_node is not None:
                self._node_seen = seen
                self._on_node(dict(view.node.labels), view.node.provider_id)
        if not view.synced:
            return None, {}, False
        pids = frozenset(p.pid for g in gpus for p in g.processes)
        outcome = self._host_reads.run((view, pids))
        if outcome.started_hang:
            log.warning(f"reading containers' CPU time ({self._kubernetes.tracker.describe()}) "
                        f"or /proc did not return within {self._host_reads.timeout_seconds:g} "
                        "s (a hung cgroup file?): containers are unknown and their energy "
                        "unattributed until it returns; the ticks go on")
        elif outcome.late:
            log.info("the blocked cgroup read returned; containers are known again")
        if outcome.error is not None:
            self._read_throttle.fault(HOST_READS, f"reading containers failed with "
                                      f"{type(outcome.error).__name__}: {outcome.error} (a bug: "
                                      "please report it)", source="cgroups",
                                      err=repr(outcome.error))
        if outcome.value is None:
            return None, {}, outcome.started_hang
        sample, of_pid = outcome.value
        return sample, of_pid, False

    def _read_host(self, args: tuple[PodView, frozenset[int]]
                   ) -> tuple[WorkloadSample, Mapping[int, Hashable]]:
        """The tick's host reads besides the sources', in the guard's thread."""
        assert self._kubernetes is not None
        view, pids = args
        tracker = self._kubernetes.tracker
        sample = tracker.sample(view)
        return sample, tracker.containers_of_pids(set(pids), sample.containers)

    def _gpu_holders(self, gpus: Sequence[GpuReading], sample: WorkloadSample | None
                     ) -> tuple[tuple[Allocation, ...], bool | None]:
        """Who the kubelet gave each GPU, and whether the pod-resources API answered (None:
        not asked)."""
        k = self._kubernetes
        if not gpus or sample is None or k is None:
            return (), None
        allocations: list[Allocation] = []
        up: bool | None = None
        unresolved: set[tuple[ClaimHolder, str]] = set()
        if k.podresources is not None:
            by_key = {c.key: c for c in sample.containers}
            held = k.podresources.holders(seen=(
                frozenset((c.key, c.container_id) for c in sample.containers),
                frozenset((g.uuid, p.pid) for g in gpus for p in g.processes)))
            up = held is not None
            index = k.slices.index() if k.slices is not None else None
            for h in held or ():
                container = by_key.get((h.namespace, h.pod, h.container))
                if container is None:
                    continue
                if not isinstance(h, ClaimHolder):
                    allocations.append(Allocation(container, h.device))
                elif index is not None and k.slices is not None and k.slices.synced():
                    resolved = index.resolve(h.driver, h.pool, h.device)
                    if resolved.uuid:
                        allocations.append(Allocation(container, resolved.uuid))
                    else:
                        unresolved.add((h, resolved.reason))
        self._report_unresolved(unresolved)
        return tuple(allocations), up

    def _report_unresolved(self, unresolved: set[tuple[ClaimHolder, str]]) -> None:
        """Log and count each claimed device that cannot be resolved, once while it lasts."""
        for holder, reason in unresolved - self._unresolved:
            log.warning(
                f"{reason}: the GPU that claim {holder.claim_namespace}/{holder.claim} of "
                f"{holder.namespace}/{holder.pod}/{holder.container} holds stays unattributed "
                "(counted in footprint_exporter_errors_total{source=\"resourceslices\", "
                "reason=\"unresolved_device\"})")
            self._publish.problems([("resourceslices", "unresolved_device")])
        self._unresolved = unresolved  # bounded by what is claimed now

    def _publish_slices(self) -> None:
        slices = self._kubernetes.slices if self._kubernetes is not None else None
        if slices is None:
            return
        errors = slices.errors()
        self._publish.slices(up=slices.up(), api_errors=max(errors - self._slice_errors, 0))
        self._slice_errors = max(self._slice_errors, errors)

    def _publish_kubernetes(self, view: PodView, sample: WorkloadSample | None,
                            allocatable: float) -> None:
        publish = self._publish
        publish.kubernetes(up=view.up, api_errors=max(view.api_errors - self._api_errors, 0),
                           malformed=max(view.malformed - self._malformed, 0))
        self._api_errors = max(self._api_errors, view.api_errors)
        self._malformed = max(self._malformed, view.malformed)
        if view.node is not None:
            labels = view.node.labels
            publish.node(zone=_first(labels, ZONE_LABELS), region=_first(labels, REGION_LABELS),
                         instance_type=_first(labels, INSTANCE_TYPE_LABELS))
        if sample is None:
            return
        publish.problems([("cgroups" if p.reason == "no_cgroup" else "kubernetes", p.reason)
                          for p in sample.problems])
        publish.containers(sample.containers, allocatable)

    def _publish_facts(self, zone: str) -> None:
        """Embodied grams, their lifetime and the PUE, recomputed when their inputs change."""
        key = (tuple(sorted(self._node_labels.items())), self._provider_id, zone,
               self._gpu_products)
        if key == self._facts_key:
            return
        self._facts_key = key
        facts = lifecycle_facts(embodied=self._embodied, pue=self._pue,
                                labels=self._node_labels, provider_id=self._provider_id,
                                zone=zone, gpus=self._gpu_products, water=self._water)
        self._publish.facts(facts)
        gpus = sum(grams for _, grams in facts.gpu_grams)
        log.info(f"PUE {facts.pue:g} ({facts.pue_source}); embodied {_mass(facts.server_grams)} "
                 f"CO2e for the server + {_mass(gpus)} for {len(facts.gpu_grams)} GPU(s), "
                 f"spread over {facts.lifetime_seconds / SECONDS_PER_YEAR:.3g} years of use "
                 f"({facts.lifetime_seconds:.0f} s)")
        log.info(f"water: WUE {facts.wue:g} L/kWh on site ({facts.wue_source}); grid "
                 f"{facts.grid_water:g} L/kWh for zone {zone} ({facts.grid_water_source})")
