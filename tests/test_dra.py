"""GPUs handed out through DRA (ResourceClaims): the exporter resolves each claimed device to an
NVML UUID through the node's ResourceSlices and charges it like a device-plugin GPU.

Against the fake API server (ResourceSlices and pods, list + watch), the fake kubelet
pod-resources server (real gRPC, `dynamic_resources`) and the fake NVML; the first test runs
the exporter as a process (tests/fakes/nvml_process.py), the others in-process."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.kube.slices import DeviceIndex, parse_slice
from exporter.sampler import Sampler
from tests.fakes.fake_nvml import FakeNvml, FakeProcess, a100_mig, h100
from tests.fakes.kube_api import FakeKubeAPI, gpu_device, gpu_slice, mig_device
from tests.fakes.nvml_process import Scenario
from tests.fakes.podresources_server import FakePodResources, claim
from tests.fakes.podresources_server import pod as resources_of
from tests.support import Exporter, FakeClock, Series, parse, total, value
from tests.support import write_atomic as write
from tests.support.gpu import assert_gpu_conserved, start
from tests.support.kube import NODE, NODE_LABELS, cid, node_with_cgroups, pod, pods_seen, wait_for

DRIVER = "gpu.nvidia.com"
U = [f"GPU-d7a00000-0000-4000-8000-00000000000{i}" for i in range(3)]
BOARD = "GPU-5b6f2a10-0c3e-4d1a-9f57-a100a100a100"
MIG_3G = "MIG-3c1d3a3e-5d33-5b8a-9a2e-000000000003"
MIG_2G = "MIG-3c1d3a3e-5d33-5b8a-9a2e-000000000002"
MINOR = {U[0]: 3, U[1]: 1, U[2]: 0, BOARD: 2}
"""Device names carry the minor number, never NVML's index (here 0, 1, 2, 3 in U order)."""
WATTS = {U[0]: 400.0, U[1]: 90.0, U[2]: 300.0, BOARD: 250.0}
IDLE_WATTS = 60.0
PIDS = {5100: "1", 5200: "2", 5201: "3", 5300: "4", 5301: "b"}
"""GPU processes and the container (fixture cgroup id digit) each runs in."""
SM = {5200: 70, 5201: 30}
"""The two pods sharing one claim: different SM utilisation."""


def four_dra_gpus() -> Scenario:
    """Two whole GPUs (the second with no process: an idle server), one shared by two pods,
    and an A100 in MIG mode with two claimed slices."""
    a, b, shared, board = h100(U[0]), h100(U[1]), h100(U[2]), a100_mig(BOARD)
    a.processes = [FakeProcess(5100)]
    shared.processes = [FakeProcess(5200), FakeProcess(5201)]
    board.processes = [FakeProcess(5300, gpu_instance_id=2, compute_instance_id=0),
                       FakeProcess(5301, gpu_instance_id=3, compute_instance_id=0)]
    nvml = FakeNvml([a, b, shared, board])
    for gpu in nvml.gpus:
        nvml.set_watts(gpu, WATTS[gpu.uuid])
    return Scenario(nvml, {U[2]: SM})


def node_slice(*, generation: int = 1, without: str = "") -> dict[str, Any]:
    devices = [gpu_device(MINOR[u], u) for u in U]
    devices += [gpu_device(MINOR[BOARD], BOARD),
                mig_device(MINOR[BOARD], "3g.20gb", 9, 0, MIG_3G, BOARD),
                mig_device(MINOR[BOARD], "2g.10gb", 14, 4, MIG_2G, BOARD)]
    return gpu_slice(NODE, name=f"{NODE}-gpu.nvidia.com-x7k2p", generation=generation,
                     devices=[d for d in devices if d["name"] != without])


def device(uuid: str) -> tuple[str, str, str]:
    return (DRIVER, NODE, f"gpu-{MINOR[uuid]}")


MIG_3G_DEVICE = (DRIVER, NODE, "gpu-2-mig-3g20gb-9-0")
MIG_2G_DEVICE = (DRIVER, NODE, "gpu-2-mig-2g10gb-14-4")
CLAIMS = {
    "serve-a": claim("ml", "serve-a-gpu-x1", device(U[0])),
    "serve-b": claim("ml", "serve-b-gpu-x2", device(U[1])),
    "chat-a": claim("ml", "chat-shared", device(U[2])),
    "chat-b": claim("ml", "chat-shared", device(U[2])),
    "train": claim("ml", "train-mig", MIG_3G_DEVICE),
    "small": claim("ml", "small-mig", MIG_2G_DEVICE),
}
CONTAINERS = {"serve-a": "1", "serve-b": "a", "chat-a": "2", "chat-b": "3", "train": "4",
              "small": "b"}


def claiming_pod(name: str, claim_name: str) -> dict[str, Any]:
    """A pod naming its claim as a real one does (spec.resourceClaims and the container's
    resources.claims)."""
    obj = pod(name, cid(CONTAINERS[name]), labels={"footprint.dev/model": name})
    obj["spec"]["resourceClaims"] = [{"name": "gpu", "resourceClaimName": claim_name}]
    obj["spec"]["containers"][0]["resources"]["claims"] = [{"name": "gpu"}]
    return obj


def gpu_processes(root: Path) -> None:
    for pid, digit in PIDS.items():
        path = root / "proc" / str(pid) / "cgroup"
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path, f"0::/kubepods/burstable/pod0a1b2c3d/{cid(digit)}\n")
        write(path.parent / "comm", "python3\n")


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(node_name=NODE, node_labels=NODE_LABELS, allocatable_cpu="16",
                     bookmark_interval=0.5) as fake:
        yield fake


def fractions() -> dict[str, float]:
    """Each MIG slice's share of the board, as the exporter computes it (memory over board)."""
    board = a100_mig(BOARD)
    return {m.uuid: m.memory_total / board.memory_total for m in board.mig_slots if m}


def step(before: Series, after: Series, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


@pytest.mark.slow(seconds=5)  # the real process
def test_four_gpus_all_claimed_through_dra_as_a_process(tmp_path: Path, api: FakeKubeAPI) -> None:
    root = node_with_cgroups(tmp_path)
    gpu_processes(root)
    api.add_slice(node_slice())
    api.add_slice(gpu_slice("node-b", name="node-b-gpu.nvidia.com-aaaaa",
                            devices=[gpu_device(0, "GPU-elsewhere")]))  # another node's
    for name in CONTAINERS:
        api.add_pod(claiming_pod(name, CLAIMS[name].claim_name))
    server = FakePodResources(tmp_path / "pr.sock")
    server.set_pods(*(resources_of("ml", name, {}, claims={"main": [CLAIMS[name]]})
                      for name in CONTAINERS))
    config = tmp_path / "footprint.yaml"
    config.write_text(f"kubernetes:\n  kubeconfig: {api.write_kubeconfig(tmp_path / 'kc')}\n"
                      f"  pod_resources_socket: {tmp_path / 'pr.sock'}\n"
                      f"attribution:\n  idle_watts: {{gpu: {IDLE_WATTS}}}\n")
    with server, Exporter(["--path.sysfs", str(root / "sys"), "--path.procfs",
                           str(root / "proc"), "--config.file", str(config),
                           "--collector.interval", "0.2"],
                          env={"NODE_NAME": NODE},
                          launcher=("-m", "tests.fakes.nvml_process",
                                    "tests.test_dra:four_dra_gpus")) as exp:
        deadline = time.monotonic() + 30
        while True:  # every claim resolved and charged
            before = exp.wait_ticks(2)
            charged = {dict(labels)["pod"] for (name, labels), v in before.items()
                       if name == "footprint_container_energy_joules_total"
                       and ("component", "gpu") in labels and v > 0}
            if charged == set(CONTAINERS):
                break
            assert time.monotonic() < deadline, f"charged only {sorted(charged)}"
        time.sleep(1.5)
        after = exp.wait_ticks(2)
        assert exp.stop() == 0
    assert not [line for line in exp.lines if "unattributed" in line and "DRA" in line]

    def gpu(uuid: str) -> float:
        return step(before, after, "footprint_gpu_energy_joules_total", uuid=uuid)

    def held(pod_name: str, mode: str | None = None) -> float:
        labels = {"pod": pod_name, "component": "gpu"} | ({"mode": mode} if mode else {})
        return step(before, after, "footprint_container_energy_joules_total", **labels)

    assert gpu(U[1]) > 1.0  # time passed
    # whole GPUs: all of it, whether a process runs on it or not
    assert math.isclose(held("serve-a"), gpu(U[0]), rel_tol=1e-6)
    assert math.isclose(held("serve-b"), gpu(U[1]), rel_tol=1e-6)
    # one claim shared by two pods: idle equally, dynamic by SM utilisation (70:30)
    assert math.isclose(held("chat-a", "idle"), held("chat-b", "idle"), rel_tol=1e-6)
    dynamic = held("chat-a", "dynamic") + held("chat-b", "dynamic")
    assert math.isclose(held("chat-a", "dynamic"), 0.7 * dynamic, rel_tol=1e-6)
    assert math.isclose(held("chat-a") + held("chat-b"), gpu(U[2]), rel_tol=1e-6)
    # MIG: each claimed slice its share of the board; the rest of the board is nobody's
    share = fractions()
    assert math.isclose(held("train"), share[MIG_3G] * gpu(BOARD), rel_tol=1e-6)
    assert math.isclose(held("small"), share[MIG_2G] * gpu(BOARD), rel_tol=1e-6)
    nobody = step(before, after, "footprint_unattributed_energy_joules_total", component="gpu")
    assert math.isclose(nobody, (1 - share[MIG_3G] - share[MIG_2G]) * gpu(BOARD), rel_tol=1e-6)
    assert_gpu_conserved(after)
    assert value(after, "footprint_source_up", source="resourceslices") == 1.0
    # the API server's load: one list and one watch of each resource
    assert (api.stats["list"], api.stats["watch"]) == (1, 1)
    assert (api.stats["resourceslices.list"], api.stats["resourceslices.watch"]) == (1, 1)
    (query,) = [q for _, path, q in api.requests if path.endswith("/resourceslices")
                and q.get("watch") != "true"]
    assert query["fieldSelector"] == f"spec.nodeName={NODE}"


def one_second(nvml: FakeNvml, clock: FakeClock, sampler: Sampler) -> Series:
    nvml.advance(1.0)
    clock.now += 1.0
    return parse(sampler.tick().text.decode())


def two_seconds(tmp_path: Path, api: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch, root: Path,
                nvml: FakeNvml, server: FakePodResources) -> tuple[Series, Series]:
    """The exporter in-process, once its two pods and the slices are known: the metrics after
    one second and after the next."""
    with server:
        sampler, clock = start(tmp_path, api, monkeypatch, root, nvml, server.socket_path)
        try:
            wait_for(lambda: len(pods_seen(sampler)) == 2, "the pods")
            wait_for(lambda: sampler._kubernetes is not None
                     and sampler._kubernetes.slices is not None
                     and sampler._kubernetes.slices.synced(), "the slices")
            sampler.tick()
            return one_second(nvml, clock, sampler), one_second(nvml, clock, sampler)
        finally:
            sampler.close()


def dra_node(tmp_path: Path, api: FakeKubeAPI, slice_: dict[str, Any]) -> tuple[Path, FakeNvml]:
    root = node_with_cgroups(tmp_path)
    gpu_processes(root)
    scenario = four_dra_gpus()
    api.add_slice(slice_)
    return root, scenario.nvml


def test_a_device_plugin_gpu_and_a_dra_gpu_on_one_node(tmp_path: Path, api: FakeKubeAPI,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root, nvml = dra_node(tmp_path, api, node_slice())
    api.add_pod(pod("serve-a", cid("1")))
    api.add_pod(claiming_pod("serve-b", "serve-b-gpu-x2"))
    server = FakePodResources(tmp_path / "pr.sock")
    server.set_pods(resources_of("ml", "serve-a", {"main": {"nvidia.com/gpu": [U[0]]}}),
                    resources_of("ml", "serve-b", {}, claims={"main": [CLAIMS["serve-b"]]}))
    before, after = two_seconds(tmp_path, api, monkeypatch, root, nvml, server)

    for name, uuid in (("serve-a", U[0]), ("serve-b", U[1])):
        charged = step(before, after, "footprint_container_energy_joules_total", pod=name,
                       component="gpu")
        assert math.isclose(charged, WATTS[uuid], rel_tol=1e-9), name
    assert_gpu_conserved(after)


def test_a_claimed_device_missing_from_the_slices_stays_unattributed(
        tmp_path: Path, api: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    missing = f"gpu-{MINOR[U[1]]}"
    root, nvml = dra_node(tmp_path, api, node_slice(without=missing))
    for name in ("serve-a", "serve-b"):
        api.add_pod(claiming_pod(name, CLAIMS[name].claim_name))
    server = FakePodResources(tmp_path / "pr.sock")
    server.set_pods(*(resources_of("ml", name, {}, claims={"main": [CLAIMS[name]]})
                      for name in ("serve-a", "serve-b")))
    caplog.set_level(logging.WARNING)
    before, after = two_seconds(tmp_path, api, monkeypatch, root, nvml, server)

    lines = [r.getMessage() for r in caplog.records if missing in r.getMessage()]
    assert len(lines) == 1, lines  # once, though three ticks saw it
    assert "in none of this node's ResourceSlices" in lines[0]
    assert "ml/serve-b-gpu-x2" in lines[0] and "stays unattributed" in lines[0]
    assert value(after, "footprint_exporter_errors_total", source="resourceslices",
                 reason="unresolved_device") == 1.0
    assert not [n for (n, labels) in after if n == "footprint_container_energy_joules_total"
                and ("pod", "serve-b") in labels and ("component", "gpu") in labels]
    served = step(before, after, "footprint_container_energy_joules_total", pod="serve-a",
                  component="gpu")
    assert math.isclose(served, WATTS[U[0]], rel_tol=1e-9)  # the other GPUs go on
    assert_gpu_conserved(after)


def test_only_the_newest_generation_of_a_pool_counts() -> None:
    old = parse_slice(node_slice(generation=1), {DRIVER})
    new = parse_slice(node_slice(generation=2, without=f"gpu-{MINOR[U[0]]}"), {DRIVER})
    index = DeviceIndex([old, new])
    assert index.resolve(*device(U[1])).uuid == U[1]
    stale = index.resolve(*device(U[0]))
    assert stale.uuid == "" and "older generation" in stale.reason
    assert index.resolve(*MIG_3G_DEVICE).uuid == MIG_3G


def test_devices_resolve_by_uuid_never_by_name() -> None:
    # a slice whose device names say nothing of NVML's index, and one device without `uuid`
    raw = node_slice()
    raw["spec"]["devices"][0]["attributes"].pop("uuid")
    index = DeviceIndex([parse_slice(raw, {DRIVER})])
    assert index.resolve(*device(U[2])).uuid == U[2]  # gpu-0 is NVML index 2 here
    nameless = index.resolve(*device(U[0]))
    assert nameless.uuid == "" and "no `uuid` attribute" in nameless.reason
    other = DeviceIndex([parse_slice(raw, {"example.com/tpu"})])  # a driver not watched
    assert other.devices == 0 and other.resolve(*device(U[2])).uuid == ""


def test_a_hostile_slice_is_bounded() -> None:
    raw = node_slice()
    raw["spec"]["devices"] = [gpu_device(i % 8, "GPU-" + "x" * 10_000) for i in range(5_000)]
    raw["spec"]["devices"].insert(0, "not a device")
    kept = parse_slice(raw, {DRIVER})
    assert len(kept.devices) == 127  # the API's 128 per slice, less the one that is no device
    assert all(len(d.uuid) == 256 for d in kept.devices)
    assert parse_slice({"spec": "garbage"}, {DRIVER}).devices == ()


def test_before_1_34_the_log_says_dra_needs_it_and_asks_rarely(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A 1.32/1.33 cluster serves no resource.k8s.io/v1: one clear line, then a request every
    10 minutes, not every backoff step."""
    from exporter.kube.client import connect
    from exporter.kube.slices import SliceWatcher

    caplog.set_level(logging.WARNING)
    with FakeKubeAPI(node_name=NODE, serve_dra=False) as old:
        cluster = connect(old.write_kubeconfig(tmp_path / "kubeconfig"))
        watcher = SliceWatcher(cluster.resource_api, NODE, {DRIVER}, backoff_base_seconds=0.01,
                               backoff_max_seconds=0.02)
        watcher.start()
        try:
            wait_for(lambda: watcher.errors() >= 1, "the refused list")
            time.sleep(0.5)  # fifty backoff steps' worth
            assert old.stats["resourceslices.list"] == 1
            assert not watcher.up() and not watcher.synced() and watcher.index().devices == 0
        finally:
            watcher.stop()
    (line,) = [r.getMessage() for r in caplog.records if "resource.k8s.io/v1" in r.getMessage()]
    assert "DRA attribution needs Kubernetes 1.34 or newer" in line
    assert "retrying in 6" in line  # 600 s, whatever the backoff says
