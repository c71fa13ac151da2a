"""The tick's read stage: every source, the pods and their CPU time, the GPU holders, the grid
intensity and the node's facts, read into one frozen `TickInputs` (exporter.accounting). The
only stage of a tick that does I/O; `account` then computes, `Publisher.publish` writes."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from exporter import logs
from exporter.accounting import (
    HOST_READS,
    ContainerKey,
    FactsInputs,
    IntensityInputs,
    KubernetesInputs,
    SourceReading,
    TickInputs,
)
from exporter.config import AttributionSettings
from exporter.gpus import Allocation
from exporter.intensity.chain import FallbackChain
from exporter.kube.podresources import ClaimHolder
from exporter.kube.pods import PodView
from exporter.kube.slices import DeviceIndex
from exporter.metrics import ERRORS
from exporter.sources.base import Probed, Reading
from exporter.sources.gpu import GpuReading
from exporter.watchdog import Guard
from exporter.workloads import Container, WorkloadSample, WorkloadTracker

log = logs.get("sampler")

ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")
REGION_LABELS = ("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region")
INSTANCE_TYPE_LABELS = ("node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type")


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


@dataclass(frozen=True, slots=True)
class _Derived:
    keys: tuple[ContainerKey, ...]
    by_key: Mapping[ContainerKey, Container]
    identities: frozenset[tuple[ContainerKey, str]]
    """(key, container id) of each: what the pod-resources cache compares."""


@dataclass
class Kubernetes:
    """The pod watch and the tracker that turns its pods into workloads."""

    pods: Pods
    tracker: WorkloadTracker
    grace_seconds: float
    podresources: PodResources | None = None
    chargeback_labels: tuple[str, ...] = ()
    """The pod labels charged per value on every node (exporter.chargeback):
    kubernetes.chargeback_labels, named (`label_team`)."""
    slices: Slices | None = None
    """Where DRA-claimed devices are resolved to NVML UUIDs; None: DRA off."""


def _first(labels: Mapping[str, str], keys: Sequence[str]) -> str:
    return next((labels[k] for k in keys if labels.get(k)), "")


def _increase(now: int, last: int) -> tuple[int, int]:
    """The increase of a counter read from outside since `last`, and the new `last`."""
    return max(now - last, 0), max(last, now)


class Reader:
    """Reads one tick's inputs. Owns the sources and their watchdog guards, the intensity
    chain and the Kubernetes side; keeps only what turns their running totals into
    increments and the node's last known facts."""

    def __init__(self, *, sources: Sequence[Probed], intensity: FallbackChain,
                 attribution: AttributionSettings, kubernetes: Kubernetes | None = None,
                 read_timeout_seconds: float = 5.0) -> None:
        self.sources = [(p, Guard(p.name, p.source.read, timeout_seconds=read_timeout_seconds))
                        for p in sources if p.status.enabled]
        self._host_reads = Guard(HOST_READS, self._read_host,
                                 timeout_seconds=read_timeout_seconds)
        self.intensity = intensity
        self.attribution = attribution
        self.kubernetes = kubernetes
        self._node_labels: dict[str, str] = {}
        self._provider_id = ""
        self._node_seen: object = None
        self._gpu_products: tuple[tuple[str, str], ...] = ()
        self._api_errors = 0
        self._malformed = 0
        self._slice_errors = 0
        self._unresolved: set[tuple[ClaimHolder, str]] = set()
        self._derived_of: tuple[tuple[Container, ...] | None, _Derived] = (
            None, _Derived((), {}, frozenset()))
        """Claimed devices that could not be resolved, as last reported (logged once each)."""
        self._read_throttle = logs.Throttle(log)

    def start(self) -> None:
        """Start what runs beside the ticks (the pod watch, a live intensity provider)."""
        self.intensity.start()
        if self.kubernetes is not None:
            self.kubernetes.pods.start()
            if self.kubernetes.slices is not None:
                self.kubernetes.slices.start()

    def close(self) -> None:
        self.intensity.stop()
        if self.kubernetes is not None:
            self.kubernetes.pods.stop()
            if self.kubernetes.slices is not None:
                self.kubernetes.slices.stop()
            if self.kubernetes.podresources is not None:
                self.kubernetes.podresources.close()
        self._host_reads.close()
        if self.kubernetes is not None and not self._host_reads.blocked:
            self.kubernetes.tracker.close()  # its kept-open cpu.stat files
        for probed, guard in self.sources:
            guard.close()
            if guard.blocked:  # closing under a read that never returned could hang the exit
                log.warning(f"source {probed.name}: a read is still blocked; not closed")
                continue
            closer = getattr(probed.source, "close", None)
            if closer is not None:
                closer()

    def read(self, now: float, seconds: float) -> TickInputs:
        chain = self.intensity
        intensity = chain.current()
        live = chain.live
        readings = tuple(self._read(probed, guard, now) for probed, guard in self.sources)
        gpus = next((r.gpus for r in reversed(readings) if r.gpus), ())
        if gpus:
            self._gpu_products = tuple((str(g.index), g.product) for g in gpus)
        k = self.kubernetes
        view = k.pods.view() if k is not None else None
        sample, of_pid, host_timed_out = self._sample_workloads(view, gpus)
        allocatable = view.node.allocatable_cores if view and view.node is not None else 0.0
        allocations, podresources_up, unresolved = self._gpu_holders(gpus, sample)
        return TickInputs(
            now=now, seconds=seconds, intensity=intensity, sources=readings,
            containers=self._derived(sample.containers).keys if sample else (),
            workloads=sample.usage if sample else (),
            node_busy_cpu_seconds=sample.node_busy_cpu_seconds if sample else 0.0,
            allocatable_cores=allocatable, gpu_allocations=allocations,
            container_of_pid=of_pid, idle_policy=self.attribution.idle_policy,
            gpu_idle_watts=self.attribution.idle_watts.get("gpu"),
            expire=sample is not None, host_timed_out=host_timed_out,
            live=IntensityInputs(live=live.name if live is not None else None,
                                 up=chain.up, last_update_unix=chain.last_update_unix,
                                 forecast=chain.forecast()),
            kubernetes=self._kubernetes_inputs(view, sample, allocatable),
            podresources_up=podresources_up, slices=self._slices() if gpus else None,
            unresolved_devices=unresolved,
            facts=FactsInputs(labels=tuple(sorted(self._node_labels.items())),
                              provider_id=self._provider_id, zone=intensity.zone,
                              gpus=self._gpu_products))

    def _read(self, probed: Probed, guard: Guard[float, Reading], now: float) -> SourceReading:
        """The source's reading (only the components it owns, and the devices of those), or a
        down one when its read is blocked or raised."""
        name = probed.name
        outcome = guard.run(now)
        if outcome.started_hang:
            log.warning(f"source {name}: a read did not return within "
                        f"{guard.timeout_seconds:g} s (a hung driver, or a FIFO or device "
                        "file where a counter should be?); the source is down and the tick "
                        "goes on without it until the read returns")
        elif outcome.late:
            log.info(f"source {name}: the blocked read returned; its energy is counted "
                     "at this tick")
        if outcome.error is not None:
            self._read_throttle.fault(name, f"source {name}: read failed with "
                                      f"{type(outcome.error).__name__}: {outcome.error}; the "
                                      "source is down this tick, the others go on (a bug: "
                                      "please report it)",
                                      source=name, err=repr(outcome.error))
        elif outcome.value is not None:
            self._read_throttle.recovered(name, f"source {name}: reading again")
        reading = outcome.value if outcome.value is not None else Reading(up=False)
        owned = probed.status.components
        # another source owns the rest: never count a component (or publish a device) twice
        return SourceReading(
            name=name, up=reading.up,
            joules={c: j for c, j in reading.joules.items() if c in owned},
            measurements=tuple(m for m in reading.measurements
                               if m.component is None or m.component in owned),
            timed_out=outcome.started_hang)

    def _sample_workloads(self, view: PodView | None, gpus: Sequence[GpuReading]
                          ) -> tuple[WorkloadSample | None, Mapping[int, Container], bool]:
        """Containers and their CPU time this tick, and the containers of the GPU processes
        (None, {} without a cluster or before sync), and whether those host reads timed out
        this tick. The reads (procfs, every container's cgroup) are guarded like a source's:
        a hung cgroup file leaves the containers unknown this tick, never the tick blocked."""
        if view is None or self.kubernetes is None:
            return None, {}, False
        if view.node is not None:
            self._provider_id = view.node.provider_id
            self._node_labels = dict(view.node.labels)
            seen = (tuple(sorted(view.node.labels.items())), view.node.provider_id)
            if seen != self._node_seen:  # the intensity's zone follows the node's region
                self._node_seen = seen
                self.intensity.follow_node(dict(view.node.labels), view.node.provider_id)
        if not view.synced:
            return None, {}, False
        pids = frozenset(p.pid for g in gpus for p in g.processes)
        outcome = self._host_reads.run((view, pids))
        if outcome.started_hang:
            log.warning(f"reading containers' CPU time ({self.kubernetes.tracker.describe()}) "
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
                   ) -> tuple[WorkloadSample, Mapping[int, Container]]:
        """The tick's host reads besides the sources', in the guard's thread."""
        assert self.kubernetes is not None
        view, pids = args
        tracker = self.kubernetes.tracker
        sample = tracker.sample(view)
        return sample, tracker.containers_of_pids(set(pids), sample.containers)

    def _gpu_holders(self, gpus: Sequence[GpuReading], sample: WorkloadSample | None
                     ) -> tuple[tuple[Allocation[Container], ...], bool | None, int]:
        """Who the kubelet gave each GPU, whether the pod-resources API answered (None: not
        asked), and how many claimed devices newly could not be resolved."""
        k = self.kubernetes
        if not gpus or sample is None or k is None:
            return (), None, 0  # not asked: what was unresolved stays reported
        allocations: list[Allocation[Container]] = []
        up: bool | None = None
        unresolved: set[tuple[ClaimHolder, str]] = set()
        if k.podresources is not None:
            derived = self._derived(sample.containers)
            by_key = derived.by_key
            held = k.podresources.holders(seen=(
                derived.identities,
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
        return tuple(allocations), up, self._report_unresolved(unresolved)

    def _derived(self, containers: tuple[Container, ...]) -> _Derived:
        """What the tick derives from its containers, kept while they are the same tuple
        (exporter.workloads hands back the same one while no pod changed)."""
        if containers is not self._derived_of[0]:
            self._derived_of = (containers, _Derived(
                keys=tuple(c.key for c in containers), by_key={c.key: c for c in containers},
                identities=frozenset((c.key, c.container_id) for c in containers)))
        return self._derived_of[1]

    def _report_unresolved(self, unresolved: set[tuple[ClaimHolder, str]]) -> int:
        """Log each claimed device that cannot be resolved, once while it lasts; how many are
        new (each is counted once in footprint_exporter_errors_total)."""
        fresh = unresolved - self._unresolved
        for holder, reason in fresh:
            log.warning(
                f"{reason}: the GPU that claim {holder.claim_namespace}/{holder.claim} of "
                f"{holder.namespace}/{holder.pod}/{holder.container} holds stays unattributed "
                f"(counted in {ERRORS.name}{{source=\"resourceslices\", "
                "reason=\"unresolved_device\"})")
        self._unresolved = unresolved  # bounded by what is claimed now
        return len(fresh)

    def _slices(self) -> tuple[bool, int] | None:
        """The ResourceSlice watch: up, and its failed requests since the last tick."""
        slices = self.kubernetes.slices if self.kubernetes is not None else None
        if slices is None:
            return None
        errors, self._slice_errors = _increase(slices.errors(), self._slice_errors)
        return slices.up(), errors

    def _kubernetes_inputs(self, view: PodView | None, sample: WorkloadSample | None,
                           allocatable: float) -> KubernetesInputs | None:
        if view is None:
            return None
        api_errors, self._api_errors = _increase(view.api_errors, self._api_errors)
        malformed, self._malformed = _increase(view.malformed, self._malformed)
        node: tuple[str, str, str] | None = None
        if view.node is not None:
            labels = view.node.labels
            node = (_first(labels, ZONE_LABELS), _first(labels, REGION_LABELS),
                    _first(labels, INSTANCE_TYPE_LABELS))
        return KubernetesInputs(
            up=view.up, api_errors=api_errors, malformed=malformed, node=node,
            problems=tuple(("cgroups" if p.reason == "no_cgroup" else "kubernetes", p.reason)
                           for p in sample.problems) if sample is not None else (),
            containers=sample.containers if sample is not None else None,
            allocatable_cores=allocatable)
