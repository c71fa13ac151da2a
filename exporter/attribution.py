"""Attribution: node energy deltas and usage deltas in, per-container shares out. No I/O.

Per component and tick: the energy up to the idle baseline is `idle`, the rest `dynamic`.
cpu and dram: dynamic energy is split by each container's share of the node's busy CPU time;
idle energy by each container's share of the node's allocatable CPU in requests (policy
`requests`) or kept back (policy `none`). gpu: per GPU, by who holds it (whole, shared by
utilisation, or MIG slices by size). platform (psys, a power meter) covers cpu and dram, so
it never reaches attribution (exporter.accounting keeps it apart). Whatever no container is
charged for, including what system processes used and every rounding remainder, is
unattributed, so the parts always add up to the node.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import mul, truediv
from typing import Generic, TypeVar

MODES = ("dynamic", "idle")
BY_CPU = frozenset({"cpu", "dram"})
"""Components split by CPU time and requests; the others are handled apart (gpu) or kept."""

K = TypeVar("K", bound=Hashable)
"""Who is charged: the exporter's containers (exporter.accounting.ContainerLike); any
hashable key in the property tests. Attribution only compares and groups keys."""
K_co = TypeVar("K_co", bound=Hashable, covariant=True)
"""The same, in the frozen records that hold one (a Workload of a Container is a Workload of
what the metrics need of one)."""


@dataclass(frozen=True, slots=True)
class Workload(Generic[K_co]):
    """One container as attribution sees it for one tick."""

    key: K_co
    cpu_seconds: float
    """CPU time the container used during the tick."""
    cpu_request_cores: float


@dataclass(frozen=True, slots=True)
class GpuHolder(Generic[K_co]):
    """A container using one GPU during the tick."""

    key: K_co
    slice_fraction: float | None = None
    """MIG: the fraction of the board its slice is; None for a whole or shared GPU."""
    sm_util: float | None = None
    """SM utilisation of its processes on this GPU over the tick (sum of means, percent)."""
    memory_bytes: float | None = None
    """GPU memory its processes use, where utilisation is unavailable."""


@dataclass(frozen=True, slots=True)
class GpuUse(Generic[K_co]):
    """One physical GPU's energy this tick and who held it."""

    joules: float
    idle_joules: float
    holders: Sequence[GpuHolder[K_co]] = ()


@dataclass(frozen=True, slots=True)
class Usage(Generic[K_co]):
    """The tick's workloads as columns, in one order: who, the CPU time each used during the
    tick, and each one's CPU request. The exporter's tick builds this directly (one list per
    column, reused while no pod changed); `Usage.of` turns `Workload` records into it."""

    keys: tuple[K_co, ...]
    cpu_seconds: Sequence[float]
    cpu_request_cores: Sequence[float]

    @staticmethod
    def of(workloads: Sequence[Workload[K]]) -> Usage[K]:
        return Usage(tuple(w.key for w in workloads), [w.cpu_seconds for w in workloads],
                     [w.cpu_request_cores for w in workloads])


@dataclass(frozen=True, slots=True)
class Column(Generic[K_co]):
    """One component and mode's split among `keys`: `joules[i]` went to `keys[i]` wherever
    `shares[i]` is above 0 (the others were charged nothing). A key may appear in several
    columns (a container holding two GPUs): its parts add up."""

    component: str
    mode: str
    keys: tuple[K_co, ...]
    shares: Sequence[float]
    joules: Sequence[float]


@dataclass(frozen=True, slots=True)
class Attribution(Generic[K_co]):
    """Where one tick's energy went."""

    columns: tuple[Column[K_co], ...]
    """Each split, in the order made: cpu and dram (idle, then dynamic), then GPU by GPU."""
    unattributed: Mapping[tuple[str, str], float]
    """Joules per (component, mode) charged to no container; every pair present."""

    @property
    def containers(self) -> dict[tuple[K_co, str, str], float]:
        """Joules per (workload key, component, mode): each part a container was handed."""
        return charged(self.columns)


def charged(columns: Sequence[Column[K]]) -> dict[tuple[K, str, str], float]:
    """The columns' parts per (key, component, mode), added up where a key repeats."""
    out: dict[tuple[K, str, str], float] = {}
    for col in columns:
        for key, share, joules in zip(col.keys, col.shares, col.joules, strict=True):
            if share > 0.0:
                series = (key, col.component, col.mode)
                out[series] = out.get(series, 0.0) + joules
    return out


def counted(values: Sequence[float]) -> bool:
    """Whether no value is negative, infinite or NaN, as a counter's increments and a split's
    weights must be (checked in C; a -0.0 passes)."""
    try:
        return not values or (min(values) >= 0.0 and math.isfinite(math.fsum(values)))
    except (ValueError, OverflowError):  # fsum of inf and -inf, or an intermediate overflow
        return False


def _shares(weights: Sequence[float], whole: float) -> list[float]:
    """Each weight's share of `whole` (or of their sum, if that is larger); sums to <= 1, and
    each is 0 or above (a NaN, infinite or negative weight counts as 0)."""
    clean = weights if counted(weights) else [
        w if 0.0 < w < math.inf else 0.0 for w in weights]  # NaN compares false
    denominator = max(whole if math.isfinite(whole) else 0.0, math.fsum(clean))
    if denominator <= 0.0:
        return [0.0] * len(clean)
    return list(map(truediv, clean, repeat(denominator)))


def _split(*, joules: float, idle_joules: float, component: str, keys: tuple[K, ...],
           idle_shares: Sequence[float] | None, dynamic_shares: Sequence[float] | None,
           columns: list[Column[K]], unattributed: dict[tuple[str, str], float]) -> None:
    """Hand out one component's idle and dynamic parts by shares (None: to no one); the rest
    is unattributed. A column's arithmetic runs in C (`map`): part x share for each key."""
    joules = joules if joules > 0.0 and math.isfinite(joules) else 0.0
    idle = min(max(idle_joules if math.isfinite(idle_joules) else 0.0, 0.0), joules)
    for mode, part, shares in (("idle", idle, idle_shares),
                               ("dynamic", joules - idle, dynamic_shares)):
        given: list[float] = []
        if part > 0.0 and shares is not None and keys:
            given = list(map(mul, repeat(part), shares))
            columns.append(Column(component, mode, keys, shares, given))
        # The remainder absorbs rounding; it can only dip below 0 by an ulp.
        unattributed[(component, mode)] = unattributed.get((component, mode), 0.0) + max(
            part - math.fsum(given), 0.0)


def gpu_shares(holders: Sequence[GpuHolder[K]]) -> tuple[list[float], list[float]]:
    """(idle shares, dynamic shares) of one GPU's holders.

    MIG: each slice's fraction of the board, for both. One holder: all of it. Several
    (time-slicing, MPS): idle equally, dynamic by SM utilisation, else by memory, else equally.
    """
    n = len(holders)
    if any(h.slice_fraction for h in holders):
        fractions = _shares([h.slice_fraction or 0.0 for h in holders], 1.0)
        return fractions, fractions
    if n <= 1:
        return [1.0] * n, [1.0] * n
    equal = [1.0 / n] * n
    for weights in ([h.sm_util or 0.0 for h in holders],
                    [h.memory_bytes or 0.0 for h in holders]):
        if math.fsum(w for w in weights if math.isfinite(w) and w > 0) > 0.0:
            return equal, _shares(weights, 0.0)
    return equal, equal


def attribute_energy(*, energy_joules: Mapping[str, float], idle_joules: Mapping[str, float],
                     workloads: Usage[K] | Sequence[Workload[K]] = (),
                     node_busy_cpu_seconds: float = 0.0,
                     allocatable_cores: float = 0.0, idle_policy: str = "requests",
                     gpus: Sequence[GpuUse[K]] = ()) -> Attribution[K]:
    """Split each component's energy among containers; the rest is unattributed.

    `energy_joules` holds the node's components; gpu energy given there is unattributed unless
    `gpus` details it GPU by GPU (then leave "gpu" out of `energy_joules`).
    Invariant: for every component, the container parts plus the unattributed parts add up to
    its energy, to float precision, for any input.
    """
    usage = workloads if isinstance(workloads, Usage) else Usage.of(workloads)
    keys = usage.keys
    dynamic = _shares(usage.cpu_seconds, node_busy_cpu_seconds)
    idle = (_shares(usage.cpu_request_cores, allocatable_cores)
            if idle_policy == "requests" else None)
    columns: list[Column[K]] = []
    unattributed: dict[tuple[str, str], float] = {}
    for component, joules in energy_joules.items():
        by_cpu = component in BY_CPU
        _split(joules=joules, idle_joules=idle_joules.get(component, 0.0), component=component,
               keys=keys, idle_shares=idle if by_cpu else None,
               dynamic_shares=dynamic if by_cpu else None, columns=columns,
               unattributed=unattributed)
    for gpu in gpus:
        gpu_idle, gpu_dynamic = gpu_shares(gpu.holders)
        _split(joules=gpu.joules, idle_joules=gpu.idle_joules, component="gpu",
               keys=tuple(h.key for h in gpu.holders),
               idle_shares=gpu_idle if idle_policy == "requests" else None,
               dynamic_shares=gpu_dynamic, columns=columns, unattributed=unattributed)
    return Attribution(columns=tuple(columns), unattributed=unattributed)


class IdleBaseline:
    """Idle power per component: configured, or a low percentile of the power seen lately."""

    def __init__(self, *, fixed_watts: Mapping[str, float], percentile: float,
                 window_seconds: float) -> None:
        self._fixed = dict(fixed_watts)
        self._q = percentile / 100.0
        self._window = window_seconds
        self._history: dict[str, deque[tuple[float, float]]] = {}
        self._sorted: dict[str, list[float]] = {}

    def observe(self, component: str, *, watts: float, now: float) -> None:
        if component in self._fixed or not math.isfinite(watts):
            return
        history = self._history.setdefault(component, deque())
        ordered = self._sorted.setdefault(component, [])
        history.append((now, watts))
        bisect.insort(ordered, watts)
        while history and history[0][0] <= now - self._window:
            _, old = history.popleft()
            del ordered[bisect.bisect_left(ordered, old)]

    def watts(self, component: str) -> float:
        if component in self._fixed:
            return self._fixed[component]
        ordered = self._sorted.get(component)
        if not ordered:
            return 0.0
        return ordered[min(int(self._q * len(ordered)), len(ordered) - 1)]
