"""Chargeback per node: each tick's container joules and grams summed per value of each
charged pod label (`kubernetes.chargeback_labels`; `label_team="vision"`), published as
`footprint_chargeback_*` with the label's name and value as labels (docs/chargeback.md).

Why in the exporter and not a PromQL join: a team's grams then cost the rule pack a few series
per node, not a selection of every container's info series and a join per evaluation
(bench/rules_fleet.py, docs/scale.md), and the sums are exact by construction. A relabelled
pod's joules go to its new value from the tick that sees the relabel; an ended container's
stay in its value's counter, so `rate()` over any window charges each joule to the value in
force when it was spent.

Which labels: those of `kubernetes.chargeback_labels` (`team` -> `label_team`), on every node,
so the containers without the label are charged to `value=""` and the values of a label add
up to the node's attributed energy. A (label, value) unseen on any container for the grace
period is retired, as a container's series are.

Pure: no I/O, no metric; exporter.accounting calls `Chargeback.charge` once per tick and
expires the values as it expires containers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

ChargebackKey = tuple[str, str]
"""(published label name, value): one series set of the chargeback families."""


class Labelled(Protocol):
    @property
    def pod_labels(self) -> tuple[tuple[str, str], ...]: ...


class Split(Protocol):
    """What `charge` reads of a column (exporter.accounting.ContainerColumn)."""

    @property
    def component(self) -> str: ...

    @property
    def mode(self) -> str: ...

    @property
    def keys(self) -> Sequence[Labelled]: ...

    @property
    def joules(self) -> Sequence[float]: ...

    @property
    def grams(self) -> Sequence[float]: ...


@dataclass(frozen=True, slots=True)
class ChargebackPart:
    """What one (label, value) was charged for one component and mode at one tick."""

    label: str
    value: str
    component: str
    mode: str
    joules: float
    grams: float


Groups = tuple[tuple[ChargebackKey, tuple[int, ...]], ...]
"""Per (label, value): the indices of a column's keys that carry it."""


def groups_of(keys: Sequence[Labelled], names: Sequence[str]) -> Groups:
    """For each label of `names` and each of its values among `keys`, the indices holding it
    (a container without the label holds `""`)."""
    out: dict[ChargebackKey, list[int]] = {}
    for i, c in enumerate(keys):
        own = dict(c.pod_labels)
        for name in names:
            out.setdefault((name, own.get(name, "")), []).append(i)
    return tuple((key, tuple(indices)) for key, indices in out.items())


def ratios(containers: Iterable[tuple[Labelled, float, float]], names: Sequence[str]
           ) -> dict[tuple[str, ...], float]:
    """(label, value, resource) -> the summed allocation ratio of the containers that carry
    the value, as the rule pack's embodied grams read them: `gpu`, each GPU holder's share of
    the node's GPUs; `cpu`, the CPU ratio of each container that holds no GPU. `containers`
    gives (container, cpu ratio, gpu ratio)."""
    out: dict[tuple[str, ...], float] = {}
    for c, cpu, gpu in containers:
        resource, ratio = ("gpu", gpu) if gpu > 0.0 else ("cpu", cpu)
        for name, value in _values(c, names):
            out[(name, value, resource)] = out.get((name, value, resource), 0.0) + ratio
    return out


class Chargeback:
    """What chargeback keeps between ticks: the labels charged, each (label, value)'s last tick
    with a container, and each column's groups while its keys are the same tuple."""

    def __init__(self, labels: Sequence[str] = ()) -> None:
        self.labels = tuple(labels)
        """Published names (`label_team`), in order."""
        self.last_seen: dict[ChargebackKey, float] = {}
        self._groups: dict[int, tuple[Sequence[Labelled], Groups]] = {}
        """id(keys) -> (keys, groups) of the last tick's columns."""
        self._present: tuple[object, frozenset[ChargebackKey]] = (None, frozenset())
        """The containers (the very sequence) and the values they held."""

    def charge(self, columns: Sequence[Split], containers: Sequence[Labelled], *,
               now: float) -> tuple[ChargebackPart, ...]:
        """This tick's parts: per label, value, component and mode, the columns' joules and
        grams summed over the containers holding the value. The values the tick's containers
        hold are marked seen at `now` (their grace period: exporter.accounting expires them)."""
        names = self.labels
        if not names:
            return ()
        sums: dict[tuple[str, str, str, str], list[float]] = {}
        kept: dict[int, tuple[Sequence[Labelled], Groups]] = {}
        for col in columns:
            keys = col.keys
            cached = self._groups.get(id(keys))
            groups = cached[1] if cached is not None and cached[0] is keys else groups_of(
                keys, names)
            kept[id(keys)] = (keys, groups)
            joules, grams = col.joules.__getitem__, col.grams.__getitem__
            for (label, value), indices in groups:
                total = sums.get((label, value, col.component, col.mode))
                if total is None:  # a GPU's columns add to the same part as the others'
                    total = sums[(label, value, col.component, col.mode)] = [0.0, 0.0]
                total[0] += sum(map(joules, indices))
                total[1] += sum(map(grams, indices))
        self._groups = kept
        if self._present[0] is not containers:
            self._present = (containers, frozenset(
                key for c in containers for key in _values(c, names)))
        self.last_seen.update(dict.fromkeys(self._present[1], now))
        return tuple(ChargebackPart(*key, j, g) for key, (j, g) in sums.items())


def _values(c: Labelled, names: Sequence[str]) -> Iterable[ChargebackKey]:
    own: Mapping[str, str] = dict(c.pod_labels)
    return ((name, own.get(name, "")) for name in names)
