"""The ledger: every published value, kept between ticks. Counters only ever go up."""

from __future__ import annotations

import math
from collections import defaultdict

Labels = tuple[str, ...]


class Ledger:
    """Counters and gauges by metric name and label values (in the order exposition declares)."""

    def __init__(self) -> None:
        self.counters: defaultdict[str, dict[Labels, float]] = defaultdict(dict)
        self.gauges: defaultdict[str, dict[Labels, float]] = defaultdict(dict)

    def add(self, name: str, labels: Labels, value: float) -> None:
        """Add to a counter; a negative or non-finite increment is a bug upstream."""
        if not (value >= 0.0 and math.isfinite(value)):
            raise ValueError(f"{name}{labels}: counter increment {value!r} is not >= 0")
        series = self.counters[name]
        series[labels] = series.get(labels, 0.0) + value

    def ensure(self, name: str, labels: Labels) -> None:
        """Publish a counter at 0 before its first increment, so rate() sees its start."""
        self.counters[name].setdefault(labels, 0.0)

    def set_total(self, name: str, labels: Labels, value: float) -> None:
        """Set a counter from a source's own running total, never moving it backwards."""
        series = self.counters[name]
        series[labels] = max(series.get(labels, 0.0), value)

    def set(self, name: str, labels: Labels, value: float) -> None:
        self.gauges[name][labels] = value

    def retire(self, names: tuple[str, ...], prefix: Labels) -> int:
        """Drop every series of `names` whose labels start with `prefix`; return how many."""
        dropped = 0
        n = len(prefix)
        for store in (self.counters, self.gauges):
            for name in names:
                series = store.get(name)
                if not series:
                    continue
                for labels in [ls for ls in series if ls[:n] == prefix]:
                    del series[labels]
                    dropped += 1
        return dropped

    def series_count(self) -> int:
        return sum(len(s) for s in self.counters.values()) + sum(
            len(s) for s in self.gauges.values())

    def total(self, name: str) -> float:
        return math.fsum(self.counters.get(name, {}).values())
