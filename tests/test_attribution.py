"""Attribution conserves energy for any input; the idle baseline learns a low percentile."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from exporter.attribution import (
    GpuHolder,
    GpuUse,
    IdleBaseline,
    Usage,
    Workload,
    attribute_energy,
)

joules = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)
components = st.sampled_from(["cpu", "dram", "gpu", "platform"])


amounts = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
workload_lists = st.lists(st.builds(Workload, key=st.integers(0, 10**6), cpu_seconds=amounts,
                                    cpu_request_cores=amounts), max_size=40,
                          unique_by=lambda w: w.key)


@given(energy=st.dictionaries(components, joules), idle=st.dictionaries(components, joules),
       workloads=workload_lists, busy=amounts, allocatable=amounts,
       policy=st.sampled_from(["requests", "none"]))
def test_parts_add_up_to_node_energy(energy: dict[str, float], idle: dict[str, float],
                                     workloads: list[Workload], busy: float, allocatable: float,
                                     policy: str) -> None:
    result = attribute_energy(energy_joules=energy, idle_joules=idle, workloads=workloads,
                              node_busy_cpu_seconds=busy, allocatable_cores=allocatable,
                              idle_policy=policy)
    assert {c for c, _ in result.unattributed} == set(energy)
    for component, node in energy.items():
        parts = [j for (_, c, _), j in result.containers.items() if c == component]
        parts += [j for (c, _), j in result.unattributed.items() if c == component]
        assert all(p >= 0.0 for p in parts)
        assert math.isclose(math.fsum(parts), node, rel_tol=1e-12, abs_tol=1e-300)
        idle_given = sum(j for (_, c, m), j in result.containers.items()
                         if c == component and m == "idle")
        # the same tolerance as the sum's: relative, and 1e-300 J for subnormal inputs, whose
        # precision is absolute (2.2250738585e-313 J of idle was given as 2.22507385857e-313)
        assert idle_given <= min(max(idle.get(component, 0.0), 0.0), node) * (1 + 1e-12) + 1e-300
        if policy == "none":
            assert idle_given == 0.0


optional = st.none() | amounts
holders = st.builds(GpuHolder, key=st.integers(0, 50),
                    slice_fraction=st.none() | st.floats(0.0, 1.0), sm_util=optional,
                    memory_bytes=optional)
gpu_uses = st.builds(GpuUse, joules=joules, idle_joules=joules,
                     holders=st.lists(holders, max_size=5, unique_by=lambda h: h.key))


@given(gpus=st.lists(gpu_uses, max_size=8), energy=st.dictionaries(components, joules),
       workloads=workload_lists, policy=st.sampled_from(["requests", "none"]))
def test_gpus_conserve_too(gpus: list[GpuUse], energy: dict[str, float],
                           workloads: list[Workload], policy: str) -> None:
    energy.pop("gpu", None)
    result = attribute_energy(energy_joules=energy, idle_joules={}, workloads=workloads,
                              node_busy_cpu_seconds=1.0, allocatable_cores=1.0,
                              idle_policy=policy, gpus=gpus)
    parts = [j for (_, c, _), j in result.containers.items() if c == "gpu"]
    parts += [j for (c, _), j in result.unattributed.items() if c == "gpu"]
    assert all(p >= 0.0 for p in parts)
    assert math.isclose(math.fsum(parts), math.fsum(g.joules for g in gpus), rel_tol=1e-12,
                        abs_tol=1e-300)
    assert not any(c == "platform" for (_, c, _) in result.containers)


def gpu_split(use: GpuUse) -> dict[tuple[object, str], float]:
    result = attribute_energy(energy_joules={}, idle_joules={}, gpus=[use])
    return {(key, mode): round(j, 9) for (key, _, mode), j in result.containers.items()} | {
        ("nobody", mode): round(j, 9) for (_, mode), j in result.unattributed.items()}


def test_whole_gpu_is_all_its_holders() -> None:
    assert gpu_split(GpuUse(joules=700.0, idle_joules=100.0, holders=[GpuHolder("a")])) == {
        ("a", "idle"): 100.0, ("a", "dynamic"): 600.0,
        ("nobody", "idle"): 0.0, ("nobody", "dynamic"): 0.0}


def test_time_sliced_gpu_splits_dynamic_by_sm_utilisation_and_idle_equally() -> None:
    use = GpuUse(joules=300.0, idle_joules=100.0,
                 holders=[GpuHolder("a", sm_util=70.0), GpuHolder("b", sm_util=30.0)])
    assert gpu_split(use) == {("a", "idle"): 50.0, ("b", "idle"): 50.0,
                              ("a", "dynamic"): 140.0, ("b", "dynamic"): 60.0,
                              ("nobody", "idle"): 0.0, ("nobody", "dynamic"): 0.0}


def test_shared_gpu_falls_back_to_memory_then_equal() -> None:
    by_memory = GpuUse(joules=40.0, idle_joules=0.0, holders=[
        GpuHolder("a", memory_bytes=3e9), GpuHolder("b", memory_bytes=1e9)])
    assert gpu_split(by_memory)[("a", "dynamic")] == 30.0
    equal = GpuUse(joules=40.0, idle_joules=0.0, holders=[GpuHolder("a"), GpuHolder("b")])
    assert gpu_split(equal)[("b", "dynamic")] == 20.0


def test_mig_splits_the_board_by_slice_size() -> None:
    """3g + 2g + 2g on a 7-slice board; one 2g slice unheld -> its share is unattributed."""
    use = GpuUse(joules=350.0, idle_joules=70.0, holders=[
        GpuHolder("a", slice_fraction=3 / 7), GpuHolder("b", slice_fraction=2 / 7)])
    assert gpu_split(use) == {("a", "idle"): 30.0, ("a", "dynamic"): 120.0,
                              ("b", "idle"): 20.0, ("b", "dynamic"): 80.0,
                              ("nobody", "idle"): 20.0, ("nobody", "dynamic"): 80.0}


def test_unheld_gpu_is_unattributed() -> None:
    assert gpu_split(GpuUse(joules=90.0, idle_joules=60.0)) == {
        ("nobody", "idle"): 60.0, ("nobody", "dynamic"): 30.0}


def test_idle_is_capped_at_the_baseline() -> None:
    shares = attribute_energy(energy_joules={"cpu": 10.0}, idle_joules={"cpu": 4.0})
    assert shares.unattributed == {("cpu", "idle"): 4.0, ("cpu", "dynamic"): 6.0}
    assert shares.containers == {}


def test_dynamic_by_cpu_time_idle_by_requests_rest_unattributed() -> None:
    a = Workload(key="a", cpu_seconds=3.0, cpu_request_cores=2.0)
    b = Workload(key="b", cpu_seconds=1.0, cpu_request_cores=0.0)  # best effort: no idle share
    result = attribute_energy(energy_joules={"cpu": 100.0, "dram": 10.0},
                              idle_joules={"cpu": 40.0, "dram": 4.0}, workloads=[a, b],
                              node_busy_cpu_seconds=8.0, allocatable_cores=8.0)
    assert result.containers == {
        ("a", "cpu", "idle"): 10.0, ("a", "cpu", "dynamic"): 22.5,
        ("b", "cpu", "dynamic"): 7.5,
        ("a", "dram", "idle"): 1.0, ("a", "dram", "dynamic"): 2.25,
        ("b", "dram", "dynamic"): 0.75,
    }
    # system processes used the other 4 of 8 busy CPU-seconds; 6 of 8 cores were not requested
    assert result.unattributed == {("cpu", "idle"): 30.0, ("cpu", "dynamic"): 30.0,
                                   ("dram", "idle"): 3.0, ("dram", "dynamic"): 3.0}


def test_policy_none_keeps_idle_back() -> None:
    a = Workload(key="a", cpu_seconds=1.0, cpu_request_cores=8.0)
    result = attribute_energy(energy_joules={"cpu": 50.0}, idle_joules={"cpu": 20.0},
                              workloads=[a], node_busy_cpu_seconds=1.0, allocatable_cores=8.0,
                              idle_policy="none")
    assert result.containers == {("a", "cpu", "dynamic"): 30.0}
    assert result.unattributed == {("cpu", "idle"): 20.0, ("cpu", "dynamic"): 0.0}


def test_container_time_above_node_busy_time_is_normalised() -> None:
    """cgroup and /proc/stat are read microseconds apart: never hand out more than exists."""
    ws = [Workload(key=k, cpu_seconds=3.0, cpu_request_cores=0.0) for k in "ab"]
    result = attribute_energy(energy_joules={"cpu": 12.0}, idle_joules={}, workloads=ws,
                              node_busy_cpu_seconds=5.0)
    assert result.containers == {("a", "cpu", "dynamic"): 6.0, ("b", "cpu", "dynamic"): 6.0}
    assert result.unattributed[("cpu", "dynamic")] == 0.0


def test_learned_baseline_is_a_low_percentile_of_a_sliding_window() -> None:
    baseline = IdleBaseline(fixed_watts={}, percentile=10, window_seconds=100)
    for t in range(100):
        baseline.observe("cpu", watts=100.0 + t, now=float(t))
    assert baseline.watts("cpu") == 110.0
    for t in range(100, 150):  # the lowest half leaves the window
        baseline.observe("cpu", watts=500.0, now=float(t))
    assert baseline.watts("cpu") == 160.0  # t=50..99 remain: 150..199, then 500s
    assert baseline.watts("dram") == 0.0  # nothing seen yet


def test_fixed_baseline_wins() -> None:
    baseline = IdleBaseline(fixed_watts={"cpu": 42.0}, percentile=5, window_seconds=60)
    baseline.observe("cpu", watts=1.0, now=0.0)
    assert baseline.watts("cpu") == 42.0


odd = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [-0.0, -1.0, math.nan, math.inf, -math.inf, 5e-324])


@given(cpu=st.lists(odd | amounts, max_size=12), requests=st.data(), busy=odd | amounts,
       allocatable=odd | amounts)
def test_odd_weights_are_charged_nothing_and_the_rest_still_adds_up(
        cpu: list[float], requests: st.DataObject, busy: float, allocatable: float) -> None:
    """A NaN, infinite or negative CPU time or request weighs nothing; the others split the
    energy as if it were absent (the weights are checked in C, then one by one if need be)."""
    cores = requests.draw(st.lists(odd | amounts, min_size=len(cpu), max_size=len(cpu)))
    usage = Usage(tuple(range(len(cpu))), cpu, cores)
    result = attribute_energy(energy_joules={"cpu": 100.0}, idle_joules={"cpu": 30.0},
                              workloads=usage, node_busy_cpu_seconds=busy,
                              allocatable_cores=allocatable)
    clean = Usage(usage.keys, [w if 0.0 < w < math.inf else 0.0 for w in cpu],
                  [w if 0.0 < w < math.inf else 0.0 for w in cores])
    assert result.containers == attribute_energy(
        energy_joules={"cpu": 100.0}, idle_joules={"cpu": 30.0}, workloads=clean,
        node_busy_cpu_seconds=busy, allocatable_cores=allocatable).containers
    for (key, _, mode), j in result.containers.items():
        weight = (cpu if mode == "dynamic" else cores)[key]
        assert 0.0 < weight < math.inf and j >= 0.0
    parts = [*result.containers.values(), *result.unattributed.values()]
    assert math.isclose(math.fsum(parts), 100.0, rel_tol=1e-12)
