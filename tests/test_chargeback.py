"""Chargeback per node (exporter.chargeback): each tick's container joules and grams summed per
value of each charged pod label, published on footprint_chargeback_*. The values of one label
add up to what the containers were charged, a relabel moves the joules from the tick that sees
it, a new value's series start at 0 and lose nothing, a value is retired after the grace
period, and the allocation ratios are summed as the rule pack's embodied grams read them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.accounting import (
    AccountState,
    KubernetesInputs,
    SourceReading,
    TickInputs,
    TickResult,
    account,
)
from exporter.attribution import IdleBaseline, Usage
from exporter.carbon import Intensity
from exporter.config import ConfigError, parse_file_config
from exporter.gpus import Allocation
from exporter.ledger import Ledger
from exporter.metrics import (
    CHARGEBACK_ALLOCATION,
    CHARGEBACK_CO2E,
    CHARGEBACK_ENERGY,
    CONTAINER_ALLOCATION,
    CONTAINER_ENERGY,
    CONTAINER_INFO,
    WORKLOAD_ALLOCATION,
    WORKLOAD_CO2E,
    WORKLOAD_ENERGY,
    Publisher,
)
from exporter.sources.gpu import GpuReading
from exporter.workloads import Container
from tests.fakes.kube_api import FakeKubeAPI
from tests.support import Series, parse
from tests.support.kube import NODE, cid, drive, in_process, pod, wait_for


def container(name: str, cores: float, **labels: str) -> Container:
    return Container(namespace="ml", pod=f"{name}-pod", container="main", model=name,
                     phase="inference", model_source="label", owner_kind="", owner_name="",
                     cpu_request_cores=cores, container_id=name * 8, pod_uid=name,
                     pod_labels=tuple(sorted(labels.items())))


def gpu(uuid: str, joules: float) -> GpuReading:
    return GpuReading(uuid=uuid, index=int(uuid[-1]), product="NVIDIA H100", up=True,
                      joules=joules, joules_total=joules, power_watts=None, source="counter",
                      mig=(), processes=())


class Node:
    """Ticks of one node through account() and the publisher, as the sampler runs them."""

    def __init__(self, charged: Sequence[str] = ("label_team",), grace: float = 30.0) -> None:
        self.state = AccountState(IdleBaseline(fixed_watts={}, percentile=5.0,
                                               window_seconds=3600.0),
                                  grace_seconds=grace, chargeback_labels=charged)
        self.publisher = Publisher(Ledger())
        self.now = 100.0

    def tick(self, containers: tuple[Container, ...], cpu: float = 80.0,
             gpus: tuple[GpuReading, ...] = (),
             allocations: tuple[Allocation[Container], ...] = ()) -> TickResult:
        self.now += 1.0
        usage = Usage(containers, [float(i + 1) for i in range(len(containers))],
                      [c.cpu_request_cores for c in containers])
        sources = [SourceReading("rapl", True, {"cpu": cpu, "dram": cpu / 10})]
        if gpus:
            sources.append(SourceReading("nvml", True, {"gpu": sum(g.joules for g in gpus)},
                                         measurements=gpus))
        result = account(TickInputs(
            now=self.now, seconds=1.0, intensity=Intensity(250.0, "FR", "static"),
            sources=tuple(sources), containers=tuple(c.key for c in containers),
            workloads=usage, node_busy_cpu_seconds=2.0 * len(containers) + 1,
            allocatable_cores=8.0, gpu_allocations=allocations, gpu_idle_watts=10.0,
            expire=True, kubernetes=KubernetesInputs(up=True, containers=containers,
                                                     allocatable_cores=8.0)), self.state)
        self.publisher.publish(result)
        return result

    def counter(self, family: str = CHARGEBACK_ENERGY.name) -> dict[tuple[str, ...], float]:
        return dict(self.publisher.ledger.counters[family])

    def own_ratio(self, c: Container, resource: str) -> float:
        """The container's own published allocation ratio."""
        return self.publisher.ledger.gauges[CONTAINER_ALLOCATION.name][
            (*c.key, c.model, c.phase, resource)]

    def by_value(self, label: str = "label_team") -> dict[str, float]:
        out: dict[str, float] = {}
        for (name, value, _, _), joules in self.counter().items():
            if name == label:
                out[value] = out.get(value, 0.0) + joules
        return out


def charged(result: TickResult) -> float:
    return math.fsum(e.joules for _, _, _, e in result.containers)


def test_the_values_of_a_label_add_up_to_what_the_containers_were_charged() -> None:
    a, b, c = (container("a", 2.0, label_team="vision"), container("b", 1.0, label_team="nlp"),
               container("c", 1.0))
    node = Node()
    result = node.tick((a, b, c))
    parts = {(p.key[1], p.component, p.mode): p.joules for p in result.chargeback}
    rows: dict[tuple[str, str, str], float] = {}
    team = {a: "vision", b: "nlp", c: ""}
    for k, component, mode, energy in result.containers:
        key = (team[k], component, mode)  # type: ignore[index]
        rows[key] = rows.get(key, 0.0) + energy.joules
    assert parts == pytest.approx(rows, rel=1e-12)
    assert math.fsum(parts.values()) == pytest.approx(charged(result), rel=1e-12)
    assert result.chargeback_labels == ("label_team",)
    # the first tick of each value is published at 0 (Prometheus' baseline), then added
    assert set(node.counter().values()) == {0.0}
    second = node.tick((a, b, c))
    assert math.fsum(node.by_value().values()) == pytest.approx(
        charged(result) + charged(second), rel=1e-12)
    grams = node.counter(CHARGEBACK_CO2E.name)
    assert grams.keys() == node.counter().keys()
    assert math.fsum(grams.values()) == pytest.approx(
        math.fsum(e.grams for r in (result, second) for _, _, _, e in r.containers), rel=1e-12)


def test_a_relabel_moves_the_joules_from_the_tick_that_sees_it_and_counters_never_fall(
) -> None:
    before = container("a", 2.0, label_team="vision")
    after = container("a", 2.0, label_team="nlp")
    node = Node()
    spent: dict[str, float] = {"vision": 0.0, "nlp": 0.0}
    history: list[dict[tuple[str, ...], float]] = []
    for labelled in (before, before, after, after, after):
        result = node.tick((labelled,))
        spent[dict(labelled.pod_labels)["label_team"]] += charged(result)
        history.append(node.counter())
    assert node.by_value() == pytest.approx(spent, rel=1e-12)
    for earlier, later in pairwise(history):
        assert all(later.get(k, 0.0) >= v for k, v in earlier.items()), (earlier, later)


def test_a_value_unseen_for_the_grace_period_is_retired_and_a_label_without_value_is_empty(
) -> None:
    a, b = container("a", 2.0, label_team="vision"), container("b", 1.0)
    node = Node(grace=30.0)
    node.tick((a, b))
    node.tick((a, b))
    assert set(node.by_value()) == {"vision", ""}
    node.tick((b,))  # at 103 s; vision last seen at 102 s
    node.now += 27.0
    node.tick((b,))
    assert "vision" in node.by_value()  # unseen for 29 s: not yet
    node.now += 2.0
    result = node.tick((b,))
    assert result.chargeback_expired == (("label_team", "vision"),)
    assert set(node.by_value()) == {""}
    # its container's grace period ended too: no ratio left for the value
    assert [k[1] for k in node.publisher.ledger.gauges[CHARGEBACK_ALLOCATION.name]] == [""]


def test_only_the_charged_labels_are_charged() -> None:
    """A label only allow-listed (published on the info series) is not charged: its values
    can be one per pod (`app`), and each would cost the tick a sum and the node its series."""
    node = Node(charged=("label_team", "label_cost_center"))
    plain = container("a", 1.0, label_app="web")
    tagged = container("b", 1.0, label_app="db", label_cost_center="x")
    node.tick((plain, tagged))
    result = node.tick((plain, tagged))
    assert result.chargeback_labels == ("label_team", "label_cost_center")
    assert {p.key for p in result.chargeback} == {
        ("label_team", ""), ("label_cost_center", ""), ("label_cost_center", "x")}
    for label in result.chargeback_labels:  # each label's values add up to the whole
        assert math.fsum(p.joules for p in result.chargeback if p.key[0] == label) == \
            pytest.approx(charged(result), rel=1e-12)


@pytest.mark.parametrize(("value", "message"), [
    ("team", "kubernetes.chargeback_labels: expected a list of pod label keys"),
    (["cost-*"], "kubernetes.chargeback_labels[0]: expected a pod label key (team, "
                 "example.com/cost-center), got 'cost-*'; no globs"),
    (["team", 7], "kubernetes.chargeback_labels[1]: expected a pod label key"),
])
def test_a_bad_chargeback_key_is_refused_naming_it(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_file_config({"kubernetes": {"chargeback_labels": value}})
    assert str(raised.value).startswith(message), str(raised.value)


def test_the_charged_labels_are_published_named_and_deduplicated() -> None:
    config = parse_file_config({"kubernetes": {"chargeback_labels": ["team", "costCenter",
                                                                     "team"]}})
    assert config.kubernetes.chargeback_labels == ("team", "costCenter")
    assert config.kubernetes.pod_label_allowlist == ()
    assert parse_file_config({}).kubernetes.chargeback_labels == ()


def test_a_charged_pod_label_through_the_pod_watch_and_a_relabel(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole way, with no allow-list: a charged key is published on the info series too,
    its values' counters hold the containers' joules, and a relabel moves the next ones."""
    with FakeKubeAPI(node_name=NODE, allocatable_cpu="16", bookmark_interval=0.5) as api:
        api.add_pod(pod("vision-0", cid("1"), labels={"team": "vision", "app": "detector"}))
        api.add_pod(pod("unlabelled-0", cid("2")))
        root, sampler, clock = in_process(tmp_path, api, monkeypatch,
                                          kubernetes="  chargeback_labels: [team]\n")
        sampler.start()
        try:
            assert sampler._kubernetes is not None
            pods = sampler._kubernetes.pods
            wait_for(lambda: len(pods.view().pods) == 2, "both pods")
            sampler.tick()
            for _ in range(2):
                drive(root, clock, cpu_j=50.0, busy=4.0, usage={cid("1"): 3.0, cid("2"): 1.0})
                series = parse(sampler.tick().text.decode())
            info = {dict(ls)["pod"]: dict(ls).get("label_team") for (n, ls) in series
                    if n == CONTAINER_INFO.name}
            assert info == {"vision-0": "vision", "unlabelled-0": None}
            assert not any("label_app" in dict(ls) for (n, ls) in series)

            def per_value(series: Series) -> dict[str, float]:
                out: dict[str, float] = {}
                for (n, ls), v in series.items():
                    if n == CHARGEBACK_ENERGY.name:
                        labels = dict(ls)
                        assert labels["label"] == "label_team"
                        out[labels["value"]] = out.get(labels["value"], 0.0) + v
                return out

            def per_pod(series: Series) -> dict[str, float]:
                out: dict[str, float] = {}
                for (n, ls), v in series.items():
                    if n == CONTAINER_ENERGY.name:
                        out[dict(ls)["pod"]] = out.get(dict(ls)["pod"], 0.0) + v
                return out
            pods_before = per_pod(series)
            assert per_value(series) == pytest.approx(
                {"vision": pods_before["vision-0"], "": pods_before["unlabelled-0"]})
            api.modify_pod("ml", "vision-0", pod("vision-0", cid("1"), labels={"team": "nlp"}))
            wait_for(lambda: {p["metadata"]["name"]: cast(Any, p).pod_labels
                              for p in pods.view().pods}["vision-0"] == (("label_team", "nlp"),),
                     "the relabelled pod")
            for _ in range(3):  # nlp's first tick is published at 0, added at the next
                drive(root, clock, cpu_j=50.0, busy=4.0, usage={cid("1"): 3.0, cid("2"): 1.0})
                series = parse(sampler.tick().text.decode())
        finally:
            sampler.close()
    after, pods_after = per_value(series), per_pod(series)
    vision = pods_before["vision-0"]  # the pod's joules before the relabel stay with vision
    assert after["vision"] == pytest.approx(vision)
    assert after["nlp"] == pytest.approx(pods_after["vision-0"] - vision)
    assert after[""] == pytest.approx(pods_after["unlabelled-0"])
    assert after["nlp"] > 0


def test_no_allowlist_no_chargeback_series() -> None:
    node = Node(charged=())
    result = node.tick((container("a", 1.0), container("b", 2.0)))
    assert result.chargeback == ()
    assert not node.publisher.ledger.counters.get(CHARGEBACK_ENERGY.name)
    assert not node.publisher.ledger.gauges.get(CHARGEBACK_ALLOCATION.name)


def test_the_ratios_are_summed_as_the_embodied_rules_read_them() -> None:
    holder = container("a", 2.0, label_team="vision")
    cpu_only = container("b", 1.0, label_team="vision")
    other = container("c", 4.0)
    node = Node()
    node.tick((holder, cpu_only, other), gpus=(gpu("GPU-0", 300.0), gpu("GPU-1", 100.0)),
              allocations=(Allocation(holder, "GPU-0"),))
    ratios = node.publisher.ledger.gauges[CHARGEBACK_ALLOCATION.name]
    of = node.own_ratio
    assert ratios == pytest.approx({
        ("label_team", "vision", "gpu"): of(holder, "gpu"),
        ("label_team", "vision", "cpu"): of(cpu_only, "cpu"),
        ("label_team", "", "cpu"): of(other, "cpu")})
    assert of(holder, "gpu") == 0.5 and of(cpu_only, "cpu") == 1 / 8


@settings(max_examples=60, deadline=None)
@given(teams=st.lists(st.sampled_from(["", "a", "b", "c"]), min_size=1, max_size=8),
       relabels=st.lists(st.tuples(st.integers(0, 7), st.sampled_from(["", "a", "b"])),
                         max_size=4),
       cpu=st.floats(0.0, 1e4, allow_nan=False))
def test_over_ticks_the_values_add_up_to_the_container_counters(
        teams: list[str], relabels: list[tuple[int, str]], cpu: float) -> None:
    """Whatever the relabels, after the last tick's deferred parts are published the values
    of the label hold every joule the container counters hold."""
    pods = [container(f"p{i}", 1.0, **({"label_team": t} if t else {}))
            for i, t in enumerate(teams)]
    node = Node(grace=1e9)
    for i, team in [(0, ""), *relabels]:
        if i < len(pods):
            old = pods[i]
            pods[i] = container(old.model, 1.0, **({"label_team": team} if team else {}))
        node.tick(tuple(pods), cpu=cpu)
    node.tick(tuple(pods), cpu=0.0)  # publishes the parts deferred at the last tick
    node.tick(tuple(pods), cpu=0.0)
    containers = math.fsum(node.publisher.ledger.counters[CONTAINER_ENERGY.name].values())
    assert math.fsum(node.by_value().values()) == pytest.approx(containers, rel=1e-9,
                                                                abs=1e-9)


# -- the sums per (namespace, model, phase): footprint_workload_* ---------------------------


def workload(name: str, cores: float, namespace: str = "ml", model: str = "llama",
             phase: str = "inference") -> Container:
    return Container(namespace=namespace, pod=f"{name}-pod", container="main", model=model,
                     phase=phase, model_source="label" if model else "none", owner_kind="",
                     owner_name="", cpu_request_cores=cores, container_id=name * 8,
                     pod_uid=name, pod_labels=())


def test_the_workloads_add_up_to_what_their_containers_were_charged() -> None:
    """Per (namespace, model, phase), whatever the charged labels (none here): the rows of the
    containers under each key, published at 0 first and added a tick later, one series per
    key and counter (all components and modes together)."""
    a, b = workload("a", 2.0), workload("b", 1.0)  # one workload: summed
    c = workload("c", 1.0, phase="training")
    d = workload("d", 1.0, namespace="kube-system", model="", phase="other")
    node = Node(charged=())
    first = node.tick((a, b, c, d))
    key_of = {a: ("ml", "llama", "inference"), b: ("ml", "llama", "inference"),
              c: ("ml", "llama", "training"), d: ("kube-system", "", "other")}
    rows: dict[tuple[str, ...], float] = {}
    for k, component, mode, energy in first.containers:
        key = (*key_of[k], component, mode)  # type: ignore[index]
        rows[key] = rows.get(key, 0.0) + energy.joules
    parts = {(*p.key, p.component, p.mode): p.joules for p in first.workloads}
    assert parts == pytest.approx(rows, rel=1e-12)
    assert first.chargeback == ()  # no label charged: no chargeback, the workloads still
    assert set(node.counter(WORKLOAD_ENERGY.name).values()) == {0.0}
    second = node.tick((a, b, c, d))
    energy, grams = node.counter(WORKLOAD_ENERGY.name), node.counter(WORKLOAD_CO2E.name)
    assert energy.keys() == grams.keys() == {key[:3] for key in rows}
    both: dict[tuple[str, ...], float] = {}
    for r in (first, second):
        for k, _, _, e in r.containers:
            both[key_of[k]] = both.get(key_of[k], 0.0) + e.joules  # type: ignore[index]
    assert energy == pytest.approx(both, rel=1e-12)
    assert math.fsum(energy.values()) == pytest.approx(charged(first) + charged(second),
                                                       rel=1e-12)
    assert math.fsum(grams.values()) == pytest.approx(
        math.fsum(e.grams for r in (first, second) for _, _, _, e in r.containers), rel=1e-12)


def test_a_model_change_moves_the_joules_and_an_unheld_workload_is_retired() -> None:
    before, after = workload("a", 2.0, model="llama"), workload("a", 2.0, model="mistral")
    node = Node(charged=(), grace=30.0)
    spent = {"llama": 0.0, "mistral": 0.0}
    history = []
    for c in (before, before, after, after, after):
        spent[c.model] += charged(node.tick((c,)))
        history.append(node.counter(WORKLOAD_ENERGY.name))
    per_model: dict[str, float] = {}
    for (_, model, _), joules in history[-1].items():
        per_model[model] = per_model.get(model, 0.0) + joules
    assert per_model == pytest.approx(spent, rel=1e-12)
    for earlier, later in pairwise(history):
        assert all(later.get(k, 0.0) >= v for k, v in earlier.items()), (earlier, later)
    node.now += 31.0  # llama last held 32 s ago
    result = node.tick((after,))
    assert result.workloads_expired == (("ml", "llama", "inference"),)
    assert {k[1] for k in node.counter(WORKLOAD_ENERGY.name)} == {"mistral"}


def test_the_workload_ratios_are_summed_as_the_embodied_rules_read_them() -> None:
    holder, cpu_only = workload("a", 2.0), workload("b", 1.0)
    other = workload("c", 4.0, namespace="batch", model="", phase="other")
    node = Node(charged=())
    node.tick((holder, cpu_only, other), gpus=(gpu("GPU-0", 300.0), gpu("GPU-1", 100.0)),
              allocations=(Allocation(holder, "GPU-0"),))
    ratios = node.publisher.ledger.gauges[WORKLOAD_ALLOCATION.name]
    of = node.own_ratio
    assert ratios == pytest.approx({
        ("ml", "llama", "inference", "gpu"): of(holder, "gpu"),
        ("ml", "llama", "inference", "cpu"): of(cpu_only, "cpu"),
        ("batch", "", "other", "cpu"): of(other, "cpu")})
    assert of(holder, "gpu") == 0.5 and of(cpu_only, "cpu") == 1 / 8


@settings(max_examples=40, deadline=None)
@given(keys=st.lists(st.sampled_from([("ml", "llama", "inference"), ("ml", "llama", "training"),
                                       ("ml", "", "other"), ("web", "", "other")]),
                     min_size=1, max_size=6),
       changes=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["llama", "bge", ""])),
                        max_size=4),
       cpu=st.floats(0.0, 1e4, allow_nan=False))
def test_over_ticks_the_workloads_hold_every_joule_of_the_container_counters(
        keys: list[tuple[str, str, str]], changes: list[tuple[int, str]], cpu: float) -> None:
    pods = [workload(f"p{i}", 1.0, *key) for i, key in enumerate(keys)]
    node = Node(charged=(), grace=1e9)
    node.tick(tuple(pods), cpu=cpu)
    for i, model in changes:
        if i < len(pods):
            old = pods[i]
            pods[i] = workload(old.pod.removesuffix("-pod"), 1.0, old.namespace, model,
                               old.phase)
        node.tick(tuple(pods), cpu=cpu)
    node.tick(tuple(pods), cpu=0.0)  # publishes the parts deferred at the last tick
    node.tick(tuple(pods), cpu=0.0)
    containers = math.fsum(node.publisher.ledger.counters[CONTAINER_ENERGY.name].values())
    workloads = math.fsum(node.counter(WORKLOAD_ENERGY.name).values())
    assert workloads == pytest.approx(containers, rel=1e-9, abs=1e-9)
