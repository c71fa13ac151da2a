"""Per-node sums of the container counters, kept by the exporter: each tick's container joules
and grams summed per key, published as their own families (docs/chargeback.md, docs/rules.md).

Two kinds of key:

- **chargeback**: each value of each charged pod label (`kubernetes.chargeback_labels`;
  `label_team="vision"`), published as `footprint_chargeback_*` with the label's name and
  value as labels. On every node, so the containers without the label are charged to
  `value=""` and the values of a label add up to the node's attributed energy.
- **workload**: each (namespace, model, phase), published as `footprint_workload_*`: what the
  rule pack's per node, namespace and model records read.

Why in the exporter and not a PromQL sum: a team's or a model's grams then cost the rule pack
a few series per node, not a selection of every container's series (and, for the teams, a
join) per evaluation (bench/rules_fleet.py, docs/scale.md), and the sums are exact by
construction: an ended container's joules stay in its key's counter, so `rate()` over any
window charges each joule to the key in force when it was spent, with none of the
extrapolation `rate()` applies at the edges of a container's own series. A relabelled pod's
joules go to its new key from the tick that sees the relabel. A key no container held for the
grace period is retired, as a container's series are.

Pure: no I/O, no metric; exporter.accounting calls `Sums.charge` once per tick and expires the
keys as it expires containers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

SumKey = tuple[str, ...]
"""The label values of one key's series: (label, value) for chargeback, (namespace, model,
phase) for a workload."""


class Keyed(Protocol):
    """What the keys are made of (exporter.accounting.ContainerLike)."""

    @property
    def key(self) -> tuple[str, str, str]: ...

    @property
    def model(self) -> str: ...

    @property
    def phase(self) -> str: ...

    @property
    def pod_labels(self) -> tuple[tuple[str, str], ...]: ...


KeysOf = Callable[[Keyed], Iterable[SumKey]]
"""The keys one container's joules are summed under."""


class Split(Protocol):
    """What `charge` reads of a column (exporter.accounting.ContainerColumn)."""

    @property
    def component(self) -> str: ...

    @property
    def mode(self) -> str: ...

    @property
    def keys(self) -> Sequence[Keyed]: ...

    @property
    def joules(self) -> Sequence[float]: ...

    @property
    def grams(self) -> Sequence[float]: ...


@dataclass(frozen=True, slots=True)
class SumPart:
    """What one key was charged for one component and mode at one tick."""

    key: SumKey
    component: str
    mode: str
    joules: float
    grams: float


Groups = tuple[tuple[SumKey, tuple[int, ...]], ...]
"""Per key: the indices of a column's containers that it holds."""


def groups_of(keys: Sequence[Keyed], keys_of: KeysOf) -> Groups:
    """For each key among `keys`' containers, the indices of those it holds."""
    out: dict[SumKey, list[int]] = {}
    for i, c in enumerate(keys):
        for key in keys_of(c):
            out.setdefault(key, []).append(i)
    return tuple((key, tuple(indices)) for key, indices in out.items())


def ratios(containers: Iterable[tuple[Keyed, float, float]], keys_of: KeysOf
           ) -> dict[tuple[str, ...], float]:
    """(*key, resource) -> the summed allocation ratio of the containers under the key, as the
    rule pack's embodied grams read them: `gpu`, each GPU holder's share of the node's GPUs;
    `cpu`, the CPU ratio of each container that holds no GPU. `containers` gives (container,
    cpu ratio, gpu ratio)."""
    out: dict[tuple[str, ...], float] = {}
    for c, cpu, gpu in containers:
        resource, ratio = ("gpu", gpu) if gpu > 0.0 else ("cpu", cpu)
        for key in keys_of(c):
            out[(*key, resource)] = out.get((*key, resource), 0.0) + ratio
    return out


def workload_keys(c: Keyed) -> tuple[SumKey]:
    """A container's workload: (namespace, model, phase)."""
    return ((c.key[0], c.model, c.phase),)


def label_keys(names: Sequence[str]) -> KeysOf:
    """A container's (label, value) for each charged label of `names` (`""` without it)."""
    def keys_of(c: Keyed) -> Iterable[SumKey]:
        own: Mapping[str, str] = dict(c.pod_labels)
        return ((name, own.get(name, "")) for name in names)
    return keys_of


class Sums:
    """What one kind of sum keeps between ticks: how a container's keys are made, each key's
    last tick with a container, and each column's groups while its containers are the same
    tuple."""

    def __init__(self, keys_of: KeysOf) -> None:
        self.keys_of = keys_of
        self.last_seen: dict[SumKey, float] = {}
        self._groups: dict[int, tuple[Sequence[Keyed], Groups]] = {}
        """id(keys) -> (keys, groups) of the last tick's columns."""
        self._present: tuple[object, frozenset[SumKey]] = (None, frozenset())
        """The containers (the very sequence) and the keys they held."""

    def charge(self, columns: Sequence[Split], containers: Sequence[Keyed], *,
               now: float) -> tuple[SumPart, ...]:
        """This tick's parts: per key, component and mode, the columns' joules and grams
        summed over the containers under the key. The keys the tick's containers hold are
        marked seen at `now` (their grace period: exporter.accounting expires them)."""
        keys_of = self.keys_of
        sums: dict[tuple[SumKey, str, str], list[float]] = {}
        kept: dict[int, tuple[Sequence[Keyed], Groups]] = {}
        for col in columns:
            keys = col.keys
            cached = self._groups.get(id(keys))
            groups = cached[1] if cached is not None and cached[0] is keys else groups_of(
                keys, keys_of)
            kept[id(keys)] = (keys, groups)
            joules, grams = col.joules.__getitem__, col.grams.__getitem__
            for key, indices in groups:
                total = sums.get((key, col.component, col.mode))
                if total is None:  # a GPU's columns add to the same part as the others'
                    total = sums[(key, col.component, col.mode)] = [0.0, 0.0]
                total[0] += sum(map(joules, indices))
                total[1] += sum(map(grams, indices))
        self._groups = kept
        if self._present[0] is not containers:
            self._present = (containers, frozenset(
                key for c in containers for key in keys_of(c)))
        self.last_seen.update(dict.fromkeys(self._present[1], now))
        return tuple(SumPart(*k, j, g) for k, (j, g) in sums.items())


class Chargeback(Sums):
    """The sums per value of each charged pod label; none without a label to charge."""

    def __init__(self, labels: Sequence[str] = ()) -> None:
        self.labels = tuple(labels)
        """Published names (`label_team`), in order."""
        super().__init__(label_keys(self.labels))

    def charge(self, columns: Sequence[Split], containers: Sequence[Keyed], *,
               now: float) -> tuple[SumPart, ...]:
        return super().charge(columns, containers, now=now) if self.labels else ()
