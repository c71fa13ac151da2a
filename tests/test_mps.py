"""A GPU shared through MPS (NVIDIA's device plugin in MPS mode: replicas `GPU-...::N`).

NVML lists the MPS server (`nvidia-cuda-mps-server`, started by the MPS control daemon's pod)
as a compute process; on Volta and newer each client too, with its own host pid and memory
(nvidia-smi's "M+C"), in the compute list and in the MPS list; before Volta only the server
(NVIDIA's MPS guide). The server is nobody's: its clients are the holders (docs/attribution.md#mps).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.sampler import Sampler
from tests.fakes.fake_nvml import MIB, FakeGpu, FakeNvml, FakeProcess, h100, p100
from tests.fakes.kube_api import FakeKubeAPI
from tests.fakes.podresources_server import FakePodResources
from tests.fakes.podresources_server import pod as resources_of
from tests.support import Series, parse, total
from tests.support import write_atomic as write
from tests.support.gpu import assert_gpu_conserved, start
from tests.support.kube import NODE, NODE_LABELS, cid, node_with_cgroups, pod, pods_seen, wait_for

SERVER, CLIENT_A, CLIENT_B = 6000, 6100, 6200
PROCESSES = {SERVER: ("c", "nvidia-cuda-mps-server"), CLIENT_A: ("2", "python3"),
             CLIENT_B: ("3", "python3")}
WATTS = 300.0


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(node_name=NODE, node_labels=NODE_LABELS, allocatable_cpu="16",
                     bookmark_interval=0.5) as fake:
        yield fake


def mps_gpu(gpu: FakeGpu) -> FakeGpu:
    gpu.processes = [FakeProcess(SERVER, used_memory=30 * MIB),
                     FakeProcess(CLIENT_A, used_memory=456 * MIB, mps_client=True),
                     FakeProcess(CLIENT_B, used_memory=456 * MIB, mps_client=True)]
    return gpu


def run(tmp_path: Path, api: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch, gpu: FakeGpu,
        samples: dict[int, int]) -> tuple[Series, Series]:
    root = node_with_cgroups(tmp_path)
    for pid, (digit, name) in PROCESSES.items():
        where = root / "proc" / str(pid)
        where.mkdir(parents=True)
        write(where / "cgroup", f"0::/kubepods/burstable/pod0a1b2c3d/{cid(digit)}\n")
        write(where / "comm", f"{name}\n")
    nvml = FakeNvml([gpu])
    nvml.set_watts(gpu, WATTS)
    api.add_pod(pod("mps-control-daemon", cid("c"), namespace="nvidia"))
    api.add_pod(pod("chat-a", cid("2")))
    api.add_pod(pod("chat-b", cid("3")))
    server = FakePodResources(tmp_path / "pr.sock")
    server.set_pods(resources_of("ml", "chat-a", {"main": {"nvidia.com/gpu": [f"{gpu.uuid}::0"]}}),
                    resources_of("ml", "chat-b", {"main": {"nvidia.com/gpu": [f"{gpu.uuid}::1"]}}))

    def one_second(sampler: Sampler) -> Series:
        nvml.advance(1.0)
        clock.now += 1.0
        for pid, sm in samples.items():
            nvml.add_sample(gpu, pid, sm)
        return parse(sampler.tick().text.decode())

    with server:
        sampler, clock = start(tmp_path, api, monkeypatch, root, nvml, tmp_path / "pr.sock")
        try:
            wait_for(lambda: len(pods_seen(sampler)) == 3, "the pods")
            one_second(sampler)
            return one_second(sampler), one_second(sampler)
        finally:
            sampler.close()


def charged(before: Series, after: Series, pod_name: str, mode: str | None = None) -> float:
    labels = {"pod": pod_name, "component": "gpu"} | ({"mode": mode} if mode else {})
    name = "footprint_container_energy_joules_total"
    return total(after, name, **labels) - total(before, name, **labels)


@pytest.mark.parametrize("compute_list_has_clients", [True, False])
def test_volta_mps_splits_by_client_and_never_charges_the_server(
        tmp_path: Path, api: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch,
        compute_list_has_clients: bool) -> None:
    gpu = mps_gpu(h100())
    gpu.compute_lists_mps_clients = compute_list_has_clients  # either way, the clients count
    before, after = run(tmp_path, api, monkeypatch, gpu,
                        {SERVER: 5, CLIENT_A: 60, CLIENT_B: 20})
    assert charged(before, after, "mps-control-daemon") == 0.0
    assert math.isclose(charged(before, after, "chat-a", "idle"),
                        charged(before, after, "chat-b", "idle"), rel_tol=1e-9)
    a, b = (charged(before, after, p, "dynamic") for p in ("chat-a", "chat-b"))
    assert math.isclose(a / (a + b), 60 / 80, rel_tol=1e-9)  # the server's 5 is nobody's
    assert math.isclose(charged(before, after, "chat-a") + charged(before, after, "chat-b"),
                        WATTS, rel_tol=1e-9)
    assert_gpu_conserved(after)


def test_pre_volta_mps_sees_only_the_server_and_splits_the_replicas_equally(
        tmp_path: Path, api: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = mps_gpu(p100())  # no MPS list: the clients are in no NVML list at all
    gpu.watts = WATTS
    before, after = run(tmp_path, api, monkeypatch, gpu, {SERVER: 90})
    assert charged(before, after, "mps-control-daemon") == 0.0
    a, b = (charged(before, after, p) for p in ("chat-a", "chat-b"))
    assert math.isclose(a, b, rel_tol=1e-9)
    assert math.isclose(a + b, WATTS, rel_tol=1e-6)  # integrated power: two readings' mean
    assert_gpu_conserved(after)
