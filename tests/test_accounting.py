"""The pure accounting step, without exposition: for any tick, every component's joules and grams
are fully split between containers and the unattributed remainder; GPUs are attributed GPU by
GPU; containers expire after their grace period; the state carries the idle baselines."""

from __future__ import annotations

import math
from collections.abc import Hashable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.accounting import (
    AccountState,
    ContainerColumn,
    SourceReading,
    TickInputs,
    TickResult,
    account,
)
from exporter.attribution import IdleBaseline, Usage, Workload
from exporter.carbon import JOULES_PER_KWH, Intensity
from exporter.gpus import Allocation
from exporter.ledger import Ledger
from exporter.metrics import CONTAINER_CO2E, CONTAINER_ENERGY, Publisher
from exporter.sources.gpu import GpuProcessUse, GpuReading
from exporter.workloads import Container

joules = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)
amounts = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
grams_per_kwh = st.floats(min_value=0.0, max_value=5000.0, allow_nan=False)
keys = st.tuples(st.just("ns"), st.text("abc", min_size=1, max_size=3), st.just("main"))


def state(fixed: dict[str, float] | None = None, grace: float = 60.0) -> AccountState:
    return AccountState(IdleBaseline(fixed_watts=fixed or {}, percentile=5.0,
                                     window_seconds=3600.0), grace_seconds=grace)


def gpu(uuid: str, joules: float, pids: tuple[int, ...] = ()) -> GpuReading:
    return GpuReading(uuid=uuid, index=int(uuid[-1]), product="NVIDIA H100", up=True,
                      joules=joules, joules_total=joules, power_watts=None, source="counter",
                      mig=(), processes=tuple(GpuProcessUse(p, None, None, 50.0) for p in pids))


def parts(result: TickResult, component: str) -> tuple[list[float], list[float]]:
    found = [e for _, c, _, e in result.containers if c == component]
    found += [e for c, _, e in result.unattributed if c == component]
    return [e.joules for e in found], [e.grams for e in found]


def assert_conserved(result: TickResult) -> None:
    by_component: dict[str, tuple[float, float]] = {}
    for component, _, energy in result.node:
        j, g = by_component.get(component, (0.0, 0.0))
        by_component[component] = (j + energy.joules, g + energy.grams)
    for component, (node_joules, node_grams) in by_component.items():
        split_joules, split_grams = parts(result, component)
        assert all(p >= 0.0 for p in split_joules + split_grams)
        assert math.isclose(math.fsum(split_joules), node_joules, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(math.fsum(split_grams), node_grams, rel_tol=1e-9, abs_tol=1e-9)


workloads = st.lists(st.builds(Workload, key=keys, cpu_seconds=amounts,
                               cpu_request_cores=amounts),
                     max_size=20, unique_by=lambda w: w.key)


@settings(max_examples=200, deadline=None)
@given(cpu=joules, dram=joules, platform=joules, gpu_joules=st.lists(joules, max_size=4),
       work=workloads, busy=amounts, allocatable=amounts, intensity=grams_per_kwh,
       seconds=st.floats(0.0, 60.0), ticks=st.integers(1, 3),
       policy=st.sampled_from(["requests", "none"]), holders=st.data())
def test_every_joule_and_gram_is_split_exactly_once(
        cpu: float, dram: float, platform: float, gpu_joules: list[float], work: list[Workload],
        busy: float, allocatable: float, intensity: float, seconds: float, ticks: int,
        policy: str, holders: st.DataObject) -> None:
    gpus = tuple(gpu(f"GPU-{i}", j, pids=(100 + i,)) for i, j in enumerate(gpu_joules))
    of_pid: dict[int, Hashable] = {}
    allocations: list[Allocation] = []
    for g in gpus:
        if work and holders.draw(st.booleans()):
            holder = holders.draw(st.sampled_from(work)).key
            if holders.draw(st.booleans()):
                allocations.append(Allocation(holder, g.uuid))
            else:
                of_pid[g.processes[0].pid] = holder
    s = state()
    for tick in range(ticks):
        result = account(TickInputs(
            now=1000.0 + tick * seconds, seconds=seconds if tick else 0.0,
            intensity=Intensity(intensity, "FR", "static"),
            sources=(SourceReading("rapl", True, {"cpu": cpu, "dram": dram,
                                                  "platform": platform}),
                     SourceReading("nvml", True, {"gpu": sum(gpu_joules)}, measurements=gpus)),
            containers=tuple(w.key for w in work), workloads=tuple(work),
            node_busy_cpu_seconds=busy, allocatable_cores=allocatable,
            gpu_allocations=tuple(allocations), container_of_pid=of_pid, idle_policy=policy,
            expire=True), s)
        assert_conserved(result)
        assert {c for c, _, _ in result.unattributed} >= {"cpu", "dram"}
        # platform overlaps cpu and dram: not a node component, charged to no one, kept apart
        assert {c for c, _, _ in result.node} == {"cpu", "dram", "gpu"}
        assert {c for c, _, _ in result.unattributed} <= {"cpu", "dram", "gpu"}
        assert not any(c == "platform" for _, c, _, _ in result.containers)
        assert result.platform == (("rapl", platform),)
        for _, _, energy in result.node:
            assert math.isclose(energy.grams, energy.joules / JOULES_PER_KWH * intensity,
                                rel_tol=1e-12, abs_tol=1e-300)


def test_a_gpu_goes_to_its_holder_and_an_unheld_one_stays_unattributed() -> None:
    held = ("ml", "llama-0", "main")
    result = account(TickInputs(
        now=10.0, seconds=1.0, intensity=Intensity(100.0, "FR", "static"),
        sources=(SourceReading("nvml", True, {"gpu": 300.0},
                               measurements=(gpu("GPU-0", 200.0), gpu("GPU-1", 100.0))),),
        containers=(held,), workloads=(Workload(held, 0.0, 1.0),),
        gpu_allocations=(Allocation(held, "GPU-0"),), idle_policy="requests",
        gpu_idle_watts=50.0, expire=True), state())
    charged = {(c, m): e.joules for k, c, m, e in result.containers if k == held}
    assert charged == {("gpu", "idle"): 50.0, ("gpu", "dynamic"): 150.0}
    unattributed = {(c, m): e.joules for c, m, e in result.unattributed}
    assert unattributed == {("gpu", "idle"): 50.0, ("gpu", "dynamic"): 50.0}
    assert result.gpu_allocation_ratio == {held: 0.5}
    assert_conserved(result)


def test_containers_expire_after_their_grace_period_only() -> None:
    s = state(grace=30.0)
    a, b = ("ns", "a", "main"), ("ns", "b", "main")

    def tick(now: float, seen: tuple[Hashable, ...]) -> TickResult:
        return account(TickInputs(now=now, seconds=1.0,
                                  intensity=Intensity(0.0, "FR", "static"),
                                  sources=(SourceReading("rapl", True, {"cpu": 1.0}),),
                                  containers=seen, expire=True), s)

    assert tick(0.0, (a, b)).expired == ()
    assert tick(20.0, (a,)).expired == ()
    assert tick(31.0, (a,)).expired == (b,)  # unseen for 31 s > 30 s
    assert tick(40.0, (a,)).expired == ()  # once
    assert tick(100.0, ()).expired == (a,)


def test_no_expiry_without_a_cluster_and_the_baseline_is_learned_across_ticks() -> None:
    s = state()
    results = [account(TickInputs(now=float(t), seconds=1.0 if t else 0.0,
                                  intensity=Intensity(0.0, "FR", "static"),
                                  sources=(SourceReading("rapl", True, {"cpu": watts}),),
                                  containers=(("ns", "a", "c"),) if t == 0 else ()), s)
               for t, watts in enumerate([0.0, 80.0, 40.0, 60.0])]
    assert all(r.expired == () for r in results)
    idle = [next(e.joules for c, m, e in r.unattributed if (c, m) == ("cpu", "idle"))
            for r in results]
    assert idle == [0.0, 80.0, 40.0, 40.0]  # the 5th percentile of what was seen so far


def test_a_down_source_contributes_nothing() -> None:
    result = account(TickInputs(now=1.0, seconds=1.0, intensity=Intensity(50.0, "FR", "static"),
                                sources=(SourceReading("rapl", False),
                                         SourceReading("estimated", True, {"dram": 4.0}))),
                     state())
    assert [(c, s, e.joules) for c, s, e in result.node] == [("dram", "estimated", 4.0)]
    assert not [e for c, _, e in result.node if c == "cpu"]


# -- what the publisher writes of a result -------------------------------------------------------


def _container(name: str, cores: float) -> Container:
    return Container(namespace="ml", pod=f"{name}-pod", container="main", model=name,
                     phase="inference", model_source="label", owner_kind="", owner_name="",
                     cpu_request_cores=cores, container_id=name * 8, pod_uid=name)


def test_the_counters_get_every_row_of_every_tick_and_a_holder_of_two_gpus_both() -> None:
    a, b, c = _container("a", 2.0), _container("b", 1.0), _container("c", 0.0)
    usage = Usage((a, b, c), [3.0, 1.0, 0.0], [2.0, 1.0, 0.0])
    publisher, s = Publisher(Ledger()), state()
    expected: dict[tuple[str, ...], float] = {}
    for tick, seconds in enumerate((0.0, 1.0, 1.0)):
        result = account(TickInputs(
            now=100.0 + tick, seconds=seconds, intensity=Intensity(250.0, "FR", "static"),
            sources=(SourceReading("rapl", True, {"cpu": 80.0, "dram": 8.0}),
                     SourceReading("nvml", True, {"gpu": 500.0}, measurements=(
                         gpu("GPU-0", 300.0), gpu("GPU-1", 200.0)))),
            containers=usage.keys, workloads=usage, node_busy_cpu_seconds=8.0,
            allocatable_cores=8.0, gpu_allocations=(Allocation(a, "GPU-0"),
                                                    Allocation(a, "GPU-1")),
            gpu_idle_watts=40.0), s)
        publisher.publish(result)
        for key, component, mode, energy in result.containers:
            series = (*key.key, key.model, key.phase, component, mode)
            expected[series] = expected.get(series, 0.0) + energy.joules
    joules = publisher.ledger.counters[CONTAINER_ENERGY.name]
    assert joules == pytest.approx(expected, rel=1e-12)
    # a holds both GPUs: each tick, both GPUs' energy less what no one holds (nothing here)
    assert joules[("ml", "a-pod", "main", "a", "inference", "gpu", "dynamic")] + joules[
        ("ml", "a-pod", "main", "a", "inference", "gpu", "idle")] == pytest.approx(3 * 500.0)
    # c used nothing and requests nothing: no series of its own
    assert not [k for k in joules if k[1] == "c-pod"]
    grams = publisher.ledger.counters[CONTAINER_CO2E.name]
    assert grams.keys() == joules.keys()
    for series, j in joules.items():
        assert grams[series] == pytest.approx(j / JOULES_PER_KWH * 250.0, rel=1e-12)


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan])
def test_a_part_that_is_no_counter_increment_raises_naming_its_series(bad: float) -> None:
    a = _container("a", 1.0)
    result = TickResult(
        intensity=Intensity(100.0, "FR", "static"), node=(), platform=(), gpus=(),
        columns=(ContainerColumn("cpu", "dynamic", (a,), [1.0], [bad], [0.0]),),
        unattributed=(), gpu_allocation_ratio={}, expired=())
    with pytest.raises(ValueError, match=r"footprint_container_energy_joules_total.*a-pod"):
        Publisher(Ledger()).attribution(result)
