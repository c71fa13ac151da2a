"""The tick's pure step: what was read goes in, where every joule and gram went comes out.

`account(inputs, state)` takes one tick's readings (each source's energy, the GPUs, the
containers and their CPU time, who holds which GPU, the grid intensity in force) and the state
kept between ticks (the idle baselines, when each container was last seen), and returns an
immutable `TickResult`: the node's energy and grams per component and source, each container's
per component and mode, the unattributed remainder, the GPU allocation ratios and the
containers whose grace period ended. It does no I/O and touches no metric: the sampler reads,
`exporter.metrics` publishes. Invariant (tests/test_accounting.py): for every component, the
containers' joules plus the unattributed joules equal the node's, and the same for grams.
`platform` (RAPL psys, a power meter) overlaps cpu and dram, so it is neither a node component
nor attributed: it comes out apart, in `TickResult.platform`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import mul, truediv
from typing import NamedTuple, Protocol, TypeVar

from exporter import carbon
from exporter.attribution import Column, GpuUse, IdleBaseline, Usage, Workload, attribute_energy
from exporter.carbon import Intensity
from exporter.chargeback import Chargeback, SumKey, SumPart, Sums, workload_keys
from exporter.config import EmbodiedSettings, PueSettings, WaterSettings
from exporter.facts import LifecycleFacts, lifecycle_facts
from exporter.gpus import Allocation, plan_gpus
from exporter.intensity.forecast import ForecastView
from exporter.sources.base import Measurement
from exporter.sources.gpu import GpuReading, gpus_of

PLATFORM = "platform"
"""The whole-platform component: published apart, never summed with the others."""

HOST_READS = "cgroups"
"""The tick's host reads besides the sources' (container CPU time, /proc): their watchdog
guard's name, and their `source` label on footprint_exporter_errors_total{reason="timeout"}."""


@dataclass(frozen=True, slots=True)
class SourceReading:
    """One source's reading this tick, reduced to the components it owns."""

    name: str
    up: bool
    joules: Mapping[str, float] = field(default_factory=dict)
    """Energy per owned component since the previous reading."""
    measurements: tuple[Measurement, ...] = ()
    """Its devices whose component it owns (or that are part of one: RAPL's core zones)."""
    timed_out: bool = False
    """Its read did not return in time at this tick (exporter.watchdog); it is down."""

    @property
    def gpus(self) -> tuple[GpuReading, ...]:
        """Its GPUs: only the source that owns `gpu` keeps any (exporter.reading)."""
        return gpus_of(self.measurements)


ContainerKey = tuple[str, str, str]
"""(namespace, pod, container): a container's identity while its pod lives, the prefix of
its series' labels, and what its grace period is kept by."""


class ContainerLike(Protocol):
    """Who attribution charges: what the container series need of
    exporter.workloads.Container."""

    @property
    def key(self) -> ContainerKey: ...

    def __hash__(self) -> int: ...

    @property
    def model(self) -> str: ...

    @property
    def phase(self) -> str: ...

    @property
    def model_source(self) -> str: ...

    @property
    def owner_kind(self) -> str: ...

    @property
    def owner_name(self) -> str: ...

    @property
    def cpu_request_cores(self) -> float: ...

    @property
    def container_id(self) -> str: ...

    @property
    def pod_uid(self) -> str: ...

    @property  # (`label_<key>`, value) pairs its info series adds (exporter.podlabels)
    def pod_labels(self) -> tuple[tuple[str, str], ...]: ...


@dataclass(frozen=True, slots=True)
class IntensityInputs:
    """The live intensity provider's state at this tick (the static chain needs none)."""

    live: str | None = None
    """The live provider's name; None without one."""
    up: bool = True
    last_update_unix: float | None = None
    forecast: ForecastView | None = None


@dataclass(frozen=True, slots=True)
class KubernetesInputs:
    """The pod watch at this tick; counts are increments since the previous tick."""

    up: bool
    api_errors: int = 0
    malformed: int = 0
    node: tuple[str, str, str] | None = None
    """The Node's (zone, region, instance type) labels; None before it is read."""
    problems: tuple[tuple[str, str], ...] = ()
    """(source, reason) of each problem newly found this tick."""
    containers: Sequence[ContainerLike] | None = None
    """This tick's containers; None before the pods are listed (or when their reads hung)."""
    allocatable_cores: float = 0.0


@dataclass(frozen=True, slots=True)
class FactsInputs:
    """What the node's lifecycle facts depend on (exporter.facts)."""

    labels: tuple[tuple[str, str], ...] = ()
    provider_id: str = ""
    zone: str = ""
    gpus: tuple[tuple[str, str], ...] = ()
    """(index, product) of the GPUs last read."""


@dataclass(frozen=True, slots=True)
class TickInputs:
    """Everything one tick read: no handle to anything that can do I/O."""

    now: float
    seconds: float
    """Since the previous tick (0 at the first)."""
    intensity: Intensity
    sources: tuple[SourceReading, ...]
    containers: tuple[ContainerKey, ...] = ()
    """The containers seen this tick (their grace period restarts); () without a cluster."""
    workloads: Usage[ContainerLike] | tuple[Workload[ContainerLike], ...] = ()
    """Each container's CPU time this tick and its request: columns (what the reader builds), or
    one record per container."""
    node_busy_cpu_seconds: float = 0.0
    allocatable_cores: float = 0.0
    gpu_allocations: tuple[Allocation[ContainerLike], ...] = ()
    container_of_pid: Mapping[int, ContainerLike] = field(default_factory=dict)
    idle_policy: str = "requests"
    gpu_idle_watts: float | None = None
    """A fixed idle baseline for every GPU (attribution.idle_watts.gpu), else learned."""
    expire: bool = False
    """Drop containers unseen for longer than the grace period (only with a cluster)."""
    host_timed_out: bool = False
    """The host reads (container CPU time, /proc) did not return in time at this tick."""
    live: IntensityInputs = field(default_factory=IntensityInputs)
    kubernetes: KubernetesInputs | None = None
    podresources_up: bool | None = None
    """Whether the kubelet's pod-resources API answered; None when not asked."""
    slices: tuple[bool, int] | None = None
    """The ResourceSlice watch: (up, failed requests since the last tick); None: DRA off."""
    unresolved_devices: int = 0
    """DRA-claimed devices newly found unresolvable this tick."""
    facts: FactsInputs | None = None
    """What the lifecycle facts are computed from; None: not computed (a bare test tick)."""


class Energy(NamedTuple):
    """Joules and their grams at the intensity in force. A named tuple, not a frozen dataclass:
    a tick makes one per container row, and a tuple is made in half the time."""

    joules: float
    grams: float


@dataclass(frozen=True, slots=True)
class ContainerColumn:
    """One split of the tick (exporter.attribution.Column) with its grams: `keys[i]` was
    charged `joules[i]` and `grams[i]` wherever `shares[i]` is above 0."""

    component: str
    mode: str
    keys: tuple[ContainerLike, ...]
    shares: Sequence[float]
    joules: Sequence[float]
    grams: Sequence[float]


@dataclass(frozen=True, slots=True)
class TickResult:
    """Where one tick's energy went."""

    intensity: Intensity
    node: tuple[tuple[str, str, Energy], ...]
    """(component, source, energy) per owned component (cpu, dram, gpu) of each source, in
    source order: their sum is the node's energy, with nothing counted twice."""
    platform: tuple[tuple[str, float], ...]
    """(source, joules) of the whole-platform reading (psys, a power meter), where one is
    read: it overlaps the components, so it is kept apart and charged to no one."""
    gpus: tuple[GpuReading, ...]
    columns: tuple[ContainerColumn, ...]
    """What the containers were charged, split by split: cpu and dram (idle, dynamic) over
    every container, then each GPU over its holders. A container holding two GPUs is in
    two gpu columns; its parts add up."""
    unattributed: tuple[tuple[str, str, Energy], ...]
    """(component, mode, energy): what no container was charged for."""
    gpu_allocation_ratio: Mapping[ContainerLike, float]
    """Each GPU holder's share of the node's GPUs (only when GPUs were read)."""
    expired: tuple[ContainerKey, ...]
    """Containers whose grace period ended this tick: their series go."""
    chargeback_labels: tuple[str, ...] = ()
    """The pod labels charged (kubernetes.chargeback_labels, named: `label_team`)."""
    chargeback: tuple[SumPart, ...] = ()
    """The columns summed per (label, value), component and mode (exporter.chargeback)."""
    chargeback_expired: tuple[SumKey, ...] = ()
    """(label, value) pairs no container held for the grace period: their series go."""
    workloads: tuple[SumPart, ...] = ()
    """The columns summed per (namespace, model, phase), component and mode."""
    workloads_expired: tuple[SumKey, ...] = ()
    """(namespace, model, phase) keys no container held for the grace period."""
    inputs: TickInputs | None = None
    """What was read, for what is published as read (states, errors, info)."""
    facts: LifecycleFacts | None = None
    """The node's lifecycle facts when their inputs changed this tick, else None."""

    @property
    def containers(self) -> tuple[tuple[ContainerLike, str, str, Energy], ...]:
        """(container, component, mode, energy) of every part a container was charged, one
        row per part (a container's parts of two GPUs are two rows)."""
        return tuple((key, col.component, col.mode, Energy(joules, grams))
                     for col in self.columns
                     for key, share, joules, grams in zip(col.keys, col.shares, col.joules,
                                                          col.grams, strict=True)
                     if share > 0.0)


class AccountState:
    """What accounting keeps between ticks: idle baselines and when containers were seen."""

    def __init__(self, baseline: IdleBaseline, *, grace_seconds: float = 0.0,
                 embodied: EmbodiedSettings | None = None, pue: PueSettings | None = None,
                 water: WaterSettings | None = None,
                 chargeback_labels: Sequence[str] = ()) -> None:
        self.baseline = baseline
        self.grace_seconds = grace_seconds
        self.last_seen: dict[ContainerKey, float] = {}
        self.chargeback = Chargeback(chargeback_labels)
        """The pod labels charged per value (kubernetes.chargeback_labels, named: `label_team`)
        and when each value last had a container."""
        self.workloads = Sums(workload_keys)
        """The sums per (namespace, model, phase) and when each last had a container."""
        self.embodied = embodied or EmbodiedSettings()
        self.pue = pue or PueSettings()
        self.water = water or WaterSettings()
        self.facts_from: FactsInputs | None = None
        """The inputs of the facts last computed."""


def _facts(inputs: FactsInputs | None, state: AccountState) -> LifecycleFacts | None:
    """The lifecycle facts, when their inputs changed since they were last computed."""
    if inputs is None or inputs == state.facts_from:
        return None
    state.facts_from = inputs
    return lifecycle_facts(embodied=state.embodied, pue=state.pue, labels=dict(inputs.labels),
                           provider_id=inputs.provider_id, zone=inputs.zone, gpus=inputs.gpus,
                           water=state.water)


def _energy(joules: float, intensity: Intensity) -> Energy:
    return Energy(joules, carbon.grams(joules, intensity))


def _idle(state: AccountState, energy: Mapping[str, float], *, now: float,
          seconds: float) -> dict[str, float]:
    """Each component's idle joules this tick, learning its baseline from this tick's power."""
    idle: dict[str, float] = {}
    if seconds > 0:
        for component, joules in energy.items():
            state.baseline.observe(component, watts=joules / seconds, now=now)
            idle[component] = state.baseline.watts(component) * seconds
    return idle


def _gpu_uses(inputs: TickInputs, state: AccountState,
              gpus: Sequence[GpuReading]
              ) -> tuple[tuple[GpuUse[ContainerLike], ...], Mapping[ContainerLike, float]]:
    idle: dict[str, float] = {}
    if inputs.seconds > 0:
        for g in gpus:
            if g.up:
                key = f"gpu:{g.uuid}"
                state.baseline.observe(key, watts=g.joules / inputs.seconds, now=inputs.now)
                watts = (inputs.gpu_idle_watts if inputs.gpu_idle_watts is not None
                         else state.baseline.watts(key))
                idle[g.uuid] = watts * inputs.seconds
    plan = plan_gpus(gpus=gpus, idle_joules=idle, allocations=inputs.gpu_allocations,
                     container_of_pid=inputs.container_of_pid)
    return plan.uses, plan.allocation_ratio


K = TypeVar("K", bound=Hashable)


def _expire(last_seen: dict[K, float], *, now: float, grace: float) -> list[K]:
    """Drop from `last_seen` (what -> when last seen) and return what was unseen for longer
    than `grace`: containers, and the keys summed (exporter.chargeback)."""
    # now - seen only grows as seen falls: none has expired unless the oldest has
    if not last_seen or now - min(last_seen.values()) <= grace:
        return []
    expired = [k for k, seen in last_seen.items() if now - seen > grace]
    for key in expired:
        del last_seen[key]
    return expired


def _with_grams(col: Column[ContainerLike], g_per_kwh: float, j_per_kwh: float
                ) -> ContainerColumn:
    """The column with each part's grams: `carbon.grams`' arithmetic, in C (`map`), the
    tick's largest loop."""
    grams = list(map(mul, map(truediv, col.joules, repeat(j_per_kwh)), repeat(g_per_kwh)))
    return ContainerColumn(col.component, col.mode, col.keys, col.shares, col.joules, grams)


def account(inputs: TickInputs, state: AccountState) -> TickResult:
    """One tick's accounting; mutates only `state` (baselines, last seen, the facts' inputs)."""
    intensity = inputs.intensity
    node: list[tuple[str, str, Energy]] = []
    platform: list[tuple[str, float]] = []
    energy: dict[str, float] = {}
    gpus: tuple[GpuReading, ...] = ()
    for source in inputs.sources:
        gpus = source.gpus or gpus
        for component, joules in source.joules.items():
            if component == PLATFORM:
                platform.append((source.name, joules))
                continue
            node.append((component, source.name, _energy(joules, intensity)))
            energy[component] = energy.get(component, 0.0) + joules
    idle = _idle(state, energy, now=inputs.now, seconds=inputs.seconds)
    state.last_seen.update(zip(inputs.containers, repeat(inputs.now)))
    uses: tuple[GpuUse[ContainerLike], ...] = ()
    ratio: Mapping[ContainerLike, float] = {}
    if gpus:
        energy.pop("gpu", None)  # attributed GPU by GPU instead
        uses, ratio = _gpu_uses(inputs, state, gpus)
    shares = attribute_energy(
        energy_joules=energy, idle_joules=idle, workloads=inputs.workloads,
        node_busy_cpu_seconds=inputs.node_busy_cpu_seconds,
        allocatable_cores=inputs.allocatable_cores, idle_policy=inputs.idle_policy, gpus=uses)
    expired: list[ContainerKey] = []
    if inputs.expire:
        expired = _expire(state.last_seen, now=inputs.now, grace=state.grace_seconds)
    g_per_kwh, j_per_kwh = intensity.grams_per_kwh, carbon.JOULES_PER_KWH
    columns = tuple(_with_grams(col, g_per_kwh, j_per_kwh) for col in shares.columns)
    k = inputs.kubernetes  # without a cluster, no pod labels: nothing to charge them
    chargeback, workloads = state.chargeback, state.workloads
    parts = chargeback.charge(columns, k.containers or (), now=inputs.now) if k else ()
    by_workload = workloads.charge(columns, k.containers or (), now=inputs.now) if k else ()
    gone: list[SumKey] = []
    ended: list[SumKey] = []
    if k and inputs.expire:
        gone = _expire(chargeback.last_seen, now=inputs.now, grace=state.grace_seconds)
        ended = _expire(workloads.last_seen, now=inputs.now, grace=state.grace_seconds)
    return TickResult(
        intensity=intensity, node=tuple(node), platform=tuple(platform), gpus=gpus,
        columns=columns, chargeback_labels=chargeback.labels if k else (), chargeback=parts,
        chargeback_expired=tuple(gone), workloads=by_workload, workloads_expired=tuple(ended),
        unattributed=tuple((component, mode, _energy(joules, intensity))
                           for (component, mode), joules in shares.unattributed.items()),
        gpu_allocation_ratio=ratio, expired=tuple(expired), inputs=inputs,
        facts=_facts(inputs.facts, state))
