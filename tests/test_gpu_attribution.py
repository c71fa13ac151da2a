"""GPUs end to end in-process: fake NVML (through the wrapper), a real pod-resources gRPC
server on a unix socket, the fake API server, fixture cgroups and /proc/<pid>/cgroup files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.gpus import Allocation, plan_gpus
from exporter.sampler import Sampler
from exporter.sources.gpu import GpuProcessUse, GpuReading, MigSlice
from tests.fakes.fake_nvml import FakeNvml
from tests.fakes.kube_api import FakeKubeAPI
from tests.fakes.podresources_server import FakePodResources
from tests.fakes.podresources_server import pod as resources_of
from tests.support import FakeClock, Series, parse, value
from tests.support.gpu import SLICED, WHOLE, assert_gpu_conserved, gpu_node, start
from tests.support.kube import NODE, NODE_LABELS, cid, pod, pods_seen, wait_for

MIG_3G = "MIG-3c1d3a3e-5d33-5b8a-9a2e-000000000003"
MIG_2G = "MIG-3c1d3a3e-5d33-5b8a-9a2e-000000000002"


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(node_name=NODE, node_labels=NODE_LABELS, allocatable_cpu="16",
                     bookmark_interval=0.5) as fake:
        yield fake


def one_second(nvml: FakeNvml, clock: FakeClock, sampler: Sampler) -> Series:
    nvml.advance(1.0)
    clock.now += 1.0
    sliced = next(g for g in nvml.gpus if g.uuid == SLICED)
    nvml.add_sample(sliced, 4242, sm_util=70)
    nvml.add_sample(sliced, 4243, sm_util=30)
    return parse(sampler.tick().text.decode())


def gpu_joules(series: Series, pod_name: str, mode: str) -> float:
    return value(series, "footprint_container_energy_joules_total", pod=pod_name,
                 component="gpu", mode=mode)


def test_whole_time_sliced_and_mig_gpus(tmp_path: Path, api: FakeKubeAPI,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root, nvml = gpu_node(tmp_path)
    pods = {"vllm": cid("1"), "chat-a": cid("2"), "chat-b": cid("3"), "train": cid("4"),
            "small": cid("b")}
    for name, container_id in pods.items():
        api.add_pod(pod(name, container_id, labels={"footprint.dev/model": name}))
    server = FakePodResources(tmp_path / "pr.sock")
    server.set_pods(
        resources_of("ml", "vllm", {"main": {"nvidia.com/gpu": [WHOLE]}}),
        resources_of("ml", "chat-a", {"main": {"nvidia.com/gpu": [f"{SLICED}::0"]}}),
        resources_of("ml", "chat-b", {"main": {"nvidia.com/gpu": [f"{SLICED}::1"]}}),
        resources_of("ml", "train", {"main": {"nvidia.com/mig-3g.20gb": [MIG_3G]}}),
        resources_of("ml", "small", {"main": {"nvidia.com/mig-2g.10gb": [MIG_2G]}}),
        resources_of("other", "cpu-only", {"main": {"example.com/foo": ["x"]}}))
    server.start()
    sampler, clock = start(tmp_path, api, monkeypatch, root, nvml, tmp_path / "pr.sock")
    try:
        wait_for(lambda: len(pods_seen(sampler)) == 5, "the GPU pods")
        sampler.tick()
        before = one_second(nvml, clock, sampler)
        after = one_second(nvml, clock, sampler)

        def step(pod_name: str, mode: str) -> float:
            return gpu_joules(after, pod_name, mode) - gpu_joules(before, pod_name, mode)

        # whole: 400 W, idle baseline 100 W -> 100 J idle, 300 J dynamic, all vLLM's
        assert step("vllm", "idle") == pytest.approx(100.0)
        assert step("vllm", "dynamic") == pytest.approx(300.0)
        # time-sliced: 300 W; idle shared equally, dynamic 70/30 by SM utilisation
        assert step("chat-a", "idle") == pytest.approx(50.0)
        assert step("chat-b", "idle") == pytest.approx(50.0)
        assert step("chat-a", "dynamic") == pytest.approx(140.0)
        assert step("chat-b", "dynamic") == pytest.approx(60.0)
        # MIG 3g.20gb + 2g.10gb held, one 2g.10gb free: by each slice's share of board memory
        big, small = 19_968 / 40_960, 9_856 / 40_960
        assert step("train", "idle") == pytest.approx(100.0 * big)
        assert step("train", "dynamic") == pytest.approx(150.0 * big)
        assert step("small", "dynamic") == pytest.approx(150.0 * small)
        unattributed = sum(value(after, "footprint_unattributed_energy_joules_total",
                                 component="gpu", mode=m) -
                           value(before, "footprint_unattributed_energy_joules_total",
                                 component="gpu", mode=m) for m in ("idle", "dynamic"))
        assert unattributed == pytest.approx(250.0 * (1 - big - small))

        ratios = {dict(ls)["pod"]: v for (n, ls), v in after.items()
                  if n == "footprint_container_allocation_ratio"
                  and dict(ls)["resource"] == "gpu"}
        assert ratios == pytest.approx({"vllm": 1 / 3, "chat-a": 1 / 6, "chat-b": 1 / 6,
                                        "train": big / 3, "small": small / 3})
        assert value(after, "footprint_gpu_energy_joules_total", uuid=WHOLE) == (
            pytest.approx(800.0))
        assert value(after, "footprint_gpu_power_watts", uuid=WHOLE) > 0
        assert value(after, "footprint_source_up", source="podresources") == 1.0
        assert value(after, "footprint_node_info", gpu_count="3") == 1.0
        assert_gpu_conserved(after)
        for name in pods:
            per_container = [ls for (n, ls) in after if n.startswith("footprint_container_")
                             and dict(ls)["pod"] == name]
            assert len(per_container) <= 16, name

        # the kubelet restarts: its socket vanishes, then comes back
        server.stop()
        gone = one_second(nvml, clock, sampler)
        assert value(gone, "footprint_source_up", source="podresources") == 0.0
        server.start()
        back = one_second(nvml, clock, sampler)
        assert value(back, "footprint_source_up", source="podresources") == 1.0

        # a GPU falls off the bus: its energy stops, the others go on, nothing is invented
        whole = next(g for g in nvml.gpus if g.uuid == WHOLE)
        whole.lost = True
        lost_before = value(back, "footprint_gpu_energy_joules_total", uuid=WHOLE)
        lost = one_second(nvml, clock, sampler)
        assert value(lost, "footprint_source_up", source="nvml") == 0.0
        assert value(lost, "footprint_gpu_energy_joules_total", uuid=WHOLE) == lost_before
        assert value(lost, "footprint_gpu_energy_joules_total", uuid=SLICED) > value(
            back, "footprint_gpu_energy_joules_total", uuid=SLICED)
        assert_gpu_conserved(lost)
    finally:
        sampler.close()
        server.stop()


def reading(uuid: str, processes: tuple[GpuProcessUse, ...] = (),
            mig: tuple[MigSlice, ...] = ()) -> GpuReading:
    return GpuReading(uuid=uuid, index=0, product="GPU", up=True, joules=10.0,
                      joules_total=10.0, power_watts=10.0, source="counter", mig=mig,
                      processes=processes)


def test_a_gpu_used_without_a_device_plugin_request_is_still_charged() -> None:
    plan = plan_gpus(gpus=[reading("GPU-a", (GpuProcessUse(7, None, 1_000, 55.0),
                                             GpuProcessUse(8, None, 1_000, 45.0)))],
                     idle_joules={"GPU-a": 4.0}, allocations=[],
                     container_of_pid={7: "sneaky"})  # pid 8 is a host process
    (use,) = plan.uses
    assert [h.key for h in use.holders] == ["sneaky"]
    assert plan.allocation_ratio == {"sneaky": 1.0}


def test_mig_holder_counts_each_slice_once() -> None:
    mig = (MigSlice("MIG-a", 1, 0, 0.25), MigSlice("MIG-b", 2, 0, 0.5))
    plan = plan_gpus(gpus=[reading("GPU-m", (GpuProcessUse(7, "MIG-a", None, None),), mig)],
                     idle_joules={}, allocations=[Allocation("c", "MIG-a"),
                                                  Allocation("d", "MIG-b")],
                     container_of_pid={7: "c"})
    (use,) = plan.uses
    assert {h.key: h.slice_fraction for h in use.holders} == {"c": 0.25, "d": 0.5}
