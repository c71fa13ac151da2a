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
class Attribution(Generic[K_co]):
    """Where one tick's energy went."""

    containers: Mapping[tuple[K_co, str, str], float]
    """Joules per (workload key, component, mode); only non-zero parts."""
    unattributed: Mapping[tuple[str, str], float]
    """Joules per (component, mode) charged to no container; every pair present."""


def _shares(weights: Sequence[float], whole: float) -> list[float]:
    """Each weight's share of `whole` (or of their sum, if that is larger); sums to <= 1."""
    inf = math.inf
    clean = [w if 0.0 < w < inf else 0.0 for w in weights]  # NaN compares false
    denominator = max(whole if math.isfinite(whole) else 0.0, math.fsum(clean))
    if denominator <= 0.0:
        return [0.0] * len(clean)
    return [w / denominator for w in clean]


def _positive(keys: Sequence[K], shares: Sequence[float]) -> list[tuple[K, float]]:
    """The (key, share) pairs with a share above 0: what a split hands out to."""
    return [(key, share) for key, share in zip(keys, shares, strict=True) if share > 0.0]


def _split(*, joules: float, idle_joules: float, component: str,
           idle_pairs: Sequence[tuple[K, float]], dynamic_pairs: Sequence[tuple[K, float]],
           containers: dict[tuple[K, str, str], float],
           unattributed: dict[tuple[str, str], float]) -> None:
    """Hand out one component's idle and dynamic parts by shares (`_positive` pairs); the
    rest is unattributed."""
    joules = joules if joules > 0.0 and math.isfinite(joules) else 0.0
    idle = min(max(idle_joules if math.isfinite(idle_joules) else 0.0, 0.0), joules)
    get = containers.get
    for mode, part, pairs in (("idle", idle, idle_pairs),
                              ("dynamic", joules - idle, dynamic_pairs)):
        given = [(key, part * share) for key, share in pairs] if part > 0.0 else []
        for key, amount in given:
            series = (key, component, mode)
            containers[series] = get(series, 0.0) + amount
        # The remainder absorbs rounding; it can only dip below 0 by an ulp.
        unattributed[(component, mode)] = unattributed.get((component, mode), 0.0) + max(
            part - math.fsum([amount for _, amount in given]), 0.0)


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
                     workloads: Sequence[Workload[K]] = (), node_busy_cpu_seconds: float = 0.0,
                     allocatable_cores: float = 0.0, idle_policy: str = "requests",
                     gpus: Sequence[GpuUse[K]] = ()) -> Attribution[K]:
    """Split each component's energy among containers; the rest is unattributed.

    `energy_joules` holds the node's components; gpu energy given there is unattributed unless
    `gpus` details it GPU by GPU (then leave "gpu" out of `energy_joules`).
    Invariant: for every component, the container parts plus the unattributed parts add up to
    its energy, to float precision, for any input.
    """
    keys = [w.key for w in workloads]
    dynamic = _positive(keys, _shares([w.cpu_seconds for w in workloads],
                                      node_busy_cpu_seconds))
    idle = (_positive(keys, _shares([w.cpu_request_cores for w in workloads],
                                    allocatable_cores))
            if idle_policy == "requests" else [])
    containers: dict[tuple[K, str, str], float] = {}
    unattributed: dict[tuple[str, str], float] = {}
    for component, joules in energy_joules.items():
        by_cpu = component in BY_CPU
        _split(joules=joules, idle_joules=idle_joules.get(component, 0.0), component=component,
               idle_pairs=idle if by_cpu else [], dynamic_pairs=dynamic if by_cpu else [],
               containers=containers, unattributed=unattributed)
    for gpu in gpus:
        gpu_keys = [h.key for h in gpu.holders]
        gpu_idle, gpu_dynamic = gpu_shares(gpu.holders)
        _split(joules=gpu.joules, idle_joules=gpu.idle_joules, component="gpu",
               idle_pairs=_positive(gpu_keys, gpu_idle) if idle_policy == "requests" else [],
               dynamic_pairs=_positive(gpu_keys, gpu_dynamic), containers=containers,
               unattributed=unattributed)
    return Attribution(containers=containers, unattributed=unattributed)


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
