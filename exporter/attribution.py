"""Attribution: node energy deltas in, shares out. Pure functions, no I/O.

Until workloads are discovered (Kubernetes), every joule is unattributed; the split into idle
and dynamic already follows the idle baseline so `mode` means the same now as later.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

MODES = ("dynamic", "idle")


@dataclass(frozen=True, slots=True)
class Attribution:
    """Where one tick's energy went, per (component, mode)."""

    unattributed_joules: Mapping[tuple[str, str], float]


def attribute_energy(*, energy_joules: Mapping[str, float],
                     idle_joules: Mapping[str, float]) -> Attribution:
    """Split each component's energy into idle (up to its baseline) and dynamic (the rest).

    Invariant: for every component, the parts add up to its energy (to float precision).
    """
    out: dict[tuple[str, str], float] = {}
    for component, joules in energy_joules.items():
        idle = min(max(idle_joules.get(component, 0.0), 0.0), joules)
        out[(component, "idle")] = idle
        out[(component, "dynamic")] = joules - idle
    return Attribution(unattributed_joules=out)


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
