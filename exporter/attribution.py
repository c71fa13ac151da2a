"""Attribution: node energy deltas and usage deltas in, per-container shares out. No I/O.

Per component and tick: the energy up to the idle baseline is `idle`, the rest `dynamic`.
Dynamic energy is split by each container's share of the node's busy CPU time; idle energy by
each container's share of the node's allocatable CPU in requests (policy `requests`) or kept
back (policy `none`). Whatever no container is charged for, including what system processes
used and every rounding remainder, is unattributed, so the parts always add up to the node.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

MODES = ("dynamic", "idle")
IDLE_POLICIES = ("requests", "none")


@dataclass(frozen=True, slots=True)
class Workload:
    """One container as attribution sees it for one tick."""

    key: Hashable
    cpu_seconds: float
    """CPU time the container used during the tick."""
    cpu_request_cores: float


@dataclass(frozen=True, slots=True)
class Attribution:
    """Where one tick's energy went."""

    containers: Mapping[tuple[Hashable, str, str], float]
    """Joules per (workload key, component, mode); only non-zero parts."""
    unattributed: Mapping[tuple[str, str], float]
    """Joules per (component, mode) charged to no container; every pair present."""


def _shares(weights: Sequence[float], whole: float) -> list[float]:
    """Each weight's share of `whole` (or of their sum, if that is larger); sums to <= 1."""
    clean = [w if w > 0.0 and math.isfinite(w) else 0.0 for w in weights]
    denominator = max(whole if math.isfinite(whole) else 0.0, math.fsum(clean))
    if denominator <= 0.0:
        return [0.0] * len(clean)
    return [w / denominator for w in clean]


def attribute_energy(*, energy_joules: Mapping[str, float], idle_joules: Mapping[str, float],
                     workloads: Sequence[Workload] = (), node_busy_cpu_seconds: float = 0.0,
                     allocatable_cores: float = 0.0,
                     idle_policy: str = "requests") -> Attribution:
    """Split each component's energy among `workloads`; the rest is unattributed.

    Invariant: for every component, the container parts plus the unattributed parts add up to
    its energy, to float precision, for any input.
    """
    dynamic_shares = _shares([w.cpu_seconds for w in workloads], node_busy_cpu_seconds)
    idle_shares = (_shares([w.cpu_request_cores for w in workloads], allocatable_cores)
                   if idle_policy == "requests" else [0.0] * len(workloads))
    containers: dict[tuple[Hashable, str, str], float] = {}
    unattributed: dict[tuple[str, str], float] = {}
    for component, joules in energy_joules.items():
        joules = joules if joules > 0.0 and math.isfinite(joules) else 0.0
        idle = min(max(idle_joules.get(component, 0.0), 0.0), joules)
        for mode, part, shares in (("idle", idle, idle_shares),
                                   ("dynamic", joules - idle, dynamic_shares)):
            given = []
            for workload, share in zip(workloads, shares, strict=True):
                if share > 0.0 and part > 0.0:
                    amount = part * share
                    containers[(workload.key, component, mode)] = amount
                    given.append(amount)
            # The remainder absorbs rounding; it can only dip below 0 by an ulp.
            unattributed[(component, mode)] = max(part - math.fsum(given), 0.0)
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
