"""Who holds which GPU, asked of a real gRPC server that behaves like the kubelet's."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.kube.podresources import ClaimHolder, DeviceHolder, PodResourcesClient, device_of
from tests.fakes.podresources_server import FakePodResources, claim, pod

GPU_A = "GPU-8f0c5e6a-1b2c-3d4e-5f60-718293a4b5c6"
GPU_B = "GPU-1d2e3f40-5a6b-7c8d-9e0f-a1b2c3d4e5f6"
MIG_1 = "MIG-1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809"
MIG_2 = "MIG-9f8e7d6c-5b4a-3928-1706-f5e4d3c2b1a0"


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "pod-resources" / "kubelet.sock"


@pytest.fixture
def kubelet(socket_path: Path) -> Iterator[FakePodResources]:
    socket_path.parent.mkdir()
    with FakePodResources(socket_path) as fake:
        yield fake


@pytest.fixture
def client(socket_path: Path) -> Iterator[PodResourcesClient]:
    client = PodResourcesClient(socket_path, timeout_seconds=0.5)
    yield client
    client.close()


def faults(caplog: pytest.LogCaptureFixture, path: Path) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and str(path) in r.getMessage()]


def test_whole_gpus_by_container(kubelet: FakePodResources, client: PodResourcesClient) -> None:
    kubelet.set_pods(pod("ml", "trainer-0", {"main": {"nvidia.com/gpu": [GPU_A, GPU_B]},
                                             "sidecar": {}}),
                     pod("default", "notebook", {"jupyter": {"nvidia.com/gpu": [GPU_B]}}))
    assert client.holders() == [
        DeviceHolder("ml", "trainer-0", "main", "nvidia.com/gpu", GPU_A),
        DeviceHolder("ml", "trainer-0", "main", "nvidia.com/gpu", GPU_B),
        DeviceHolder("default", "notebook", "jupyter", "nvidia.com/gpu", GPU_B),
    ]
    assert client.up()
    assert "up, 3 devices held" in client.describe()
    assert kubelet.calls == 1


def test_dra_claims_beside_device_plugin_devices(kubelet: FakePodResources,
                                                 client: PodResourcesClient) -> None:
    """The kubelet reports a claimed device by (driver, pool, device name); a claim shared by
    two containers is reported for each; other drivers' devices are left out."""
    shared = claim("ml", "shared-gpu", ("gpu.nvidia.com", "node-a", "gpu-3"),
                   ("gpu.nvidia.com", "node-a", "gpu-2-mig-3g40gb-9-0"))
    tpu = claim("ml", "tpu", ("tpu.example.com", "node-a", "tpu-0"))
    kubelet.set_pods(pod("ml", "mixed", {"main": {"nvidia.com/gpu": [GPU_A]}},
                         claims={"main": [shared], "helper": [shared, tpu]}))
    holders = client.holders()
    assert holders == [
        DeviceHolder("ml", "mixed", "main", "nvidia.com/gpu", GPU_A),
        ClaimHolder("ml", "mixed", "main", "ml", "shared-gpu", "gpu.nvidia.com", "node-a",
                    "gpu-3"),
        ClaimHolder("ml", "mixed", "main", "ml", "shared-gpu", "gpu.nvidia.com", "node-a",
                    "gpu-2-mig-3g40gb-9-0"),
        ClaimHolder("ml", "mixed", "helper", "ml", "shared-gpu", "gpu.nvidia.com", "node-a",
                    "gpu-3"),
        ClaimHolder("ml", "mixed", "helper", "ml", "shared-gpu", "gpu.nvidia.com", "node-a",
                    "gpu-2-mig-3g40gb-9-0"),
    ]
    off = PodResourcesClient(client._path, dra_drivers=())  # kubernetes.dra_drivers: []
    try:
        assert off.holders() == [DeviceHolder("ml", "mixed", "main", "nvidia.com/gpu", GPU_A)]
        assert "DRA drivers none" in off.describe()
    finally:
        off.close()


def test_mig_devices_keep_their_profile(kubelet: FakePodResources,
                                        client: PodResourcesClient) -> None:
    kubelet.set_pods(pod("ml", "infer", {"a": {"nvidia.com/mig-3g.40gb": [MIG_1]},
                                         "b": {"nvidia.com/mig-1g.10gb": [MIG_2]}}))
    holders = client.holders()
    assert holders is not None
    assert [(h.container, h.resource, h.device) for h in holders] == [
        ("a", "nvidia.com/mig-3g.40gb", MIG_1), ("b", "nvidia.com/mig-1g.10gb", MIG_2)]


def test_time_sliced_replicas_name_the_same_gpu(kubelet: FakePodResources,
                                                client: PodResourcesClient) -> None:
    kubelet.set_pods(pod("a", "p1", {"c": {"nvidia.com/gpu": [f"{GPU_A}::0"]}}),
                     pod("b", "p2", {"c": {"nvidia.com/gpu.shared": [f"{GPU_A}::3"]}}))
    holders = client.holders()
    assert holders is not None
    assert [h.device_id for h in holders] == [f"{GPU_A}::0", f"{GPU_A}::3"]
    assert {h.device for h in holders} == {GPU_A}


def test_device_of_strips_only_a_numeric_replica_suffix() -> None:
    assert device_of(f"{MIG_1}::12") == MIG_1
    assert device_of(GPU_A) == GPU_A
    assert device_of("3") == "3"  # deviceIDStrategy=index
    assert device_of("gpu::a") == "gpu::a"
    assert device_of("::1") == "::1"


def test_other_resources_are_left_out(kubelet: FakePodResources,
                                      client: PodResourcesClient) -> None:
    kubelet.set_pods(pod("x", "mixed", {"c": {"example.com/foo": ["foo-1"],
                                              "nvidia.com/gpu": [GPU_A],
                                              "amd.com/gpu": ["0000:c1:00.0"]}},
                         cpu_ids=[2, 3]),
                     pod("x", "cpu-only", {"c": {}}, cpu_ids=[4, 5]))
    assert client.holders() == [DeviceHolder("x", "mixed", "c", "nvidia.com/gpu", GPU_A)]


def test_custom_prefixes(kubelet: FakePodResources, socket_path: Path) -> None:
    kubelet.set_pods(pod("x", "p", {"c": {"example.com/foo": ["foo-1"],
                                          "nvidia.com/gpu": [GPU_A]}}))
    client = PodResourcesClient(socket_path, resource_prefixes=("example.com/foo",))
    try:
        assert client.holders() == [DeviceHolder("x", "p", "c", "example.com/foo", "foo-1")]
    finally:
        client.close()


def test_empty_response_is_an_empty_list(kubelet: FakePodResources,
                                         client: PodResourcesClient) -> None:
    assert client.holders() == []
    assert client.up()


def test_absent_socket_is_none_logged_once(socket_path: Path, client: PodResourcesClient,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="footprint")
    assert client.holders() is None
    assert client.holders() is None
    assert not client.up()
    logged = faults(caplog, socket_path)
    assert len(logged) == 1, logged
    assert "mount the kubelet's pod-resources directory" in logged[0]
    assert str(socket_path.parent) in logged[0]
    assert "down: the socket does not exist" in client.describe()


def test_restarted_kubelet_is_found_again_by_the_same_client(
        kubelet: FakePodResources, client: PodResourcesClient, socket_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="footprint")
    kubelet.set_pods(pod("ml", "a", {"c": {"nvidia.com/gpu": [GPU_A]}}))
    assert client.holders() is not None
    kubelet.stop()
    assert not socket_path.exists()
    assert client.holders() is None
    assert not client.up()
    kubelet.set_pods(pod("ml", "b", {"c": {"nvidia.com/gpu": [GPU_B]}}))
    kubelet.start()
    started = time.monotonic()
    assert client.holders() == [DeviceHolder("ml", "b", "c", "nvidia.com/gpu", GPU_B)]
    assert time.monotonic() - started < 1.0  # no reconnect backoff waited out
    assert client.up()
    assert len(faults(caplog, socket_path)) == 1
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_kubelet_starting_after_the_client(socket_path: Path,
                                           client: PodResourcesClient) -> None:
    assert client.holders() is None
    socket_path.parent.mkdir()
    with FakePodResources(socket_path) as kubelet:
        kubelet.set_pods(pod("ml", "a", {"c": {"nvidia.com/gpu": [GPU_A]}}))
        assert client.holders() == [DeviceHolder("ml", "a", "c", "nvidia.com/gpu", GPU_A)]


def test_slow_kubelet_times_out(kubelet: FakePodResources, client: PodResourcesClient,
                                socket_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="footprint")
    kubelet.set_pods(pod("ml", "a", {"c": {"nvidia.com/gpu": [GPU_A]}}))
    kubelet.set_delay(5.0)
    started = time.monotonic()
    assert client.holders() is None
    assert time.monotonic() - started < 1.5  # timeout 0.5 s
    assert kubelet.calls == 1
    assert "no answer within 0.5 s" in faults(caplog, socket_path)[0]
    kubelet.set_delay(0.0)
    assert client.holders() == [DeviceHolder("ml", "a", "c", "nvidia.com/gpu", GPU_A)]


def test_a_socket_that_is_not_grpc_fails_quietly(socket_path: Path,
                                                 client: PodResourcesClient) -> None:
    import socket

    socket_path.parent.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(socket_path))
        listener.listen()  # accepts the connection, never speaks HTTP/2
        started = time.monotonic()
        assert client.holders() is None
        assert time.monotonic() - started < 1.5
    assert not client.up()
    assert "down: " in client.describe()


def test_an_answer_is_reused_only_while_nothing_seen_changes(
        kubelet: FakePodResources, socket_path: Path) -> None:
    """The List runs again when the tick's containers or GPU processes change, when the socket
    is a new one (a restarted kubelet), after `refresh_seconds`, and after any failure."""
    now = [0.0]
    client = PodResourcesClient(socket_path, timeout_seconds=0.5, refresh_seconds=30.0,
                                clock=lambda: now[0])
    try:
        kubelet.set_pods(pod("ml", "a", {"main": {"nvidia.com/gpu": [GPU_A]}}))
        first = client.holders(seen=("a",))
        assert client.holders(seen=("a",)) is first
        now[0] = 29.9
        assert client.holders(seen=("a",)) is first
        assert (kubelet.calls, client.asked, client.reused) == (1, 1, 2)

        # a new container: asked again, and the new allocation is seen at once
        kubelet.set_pods(pod("ml", "a", {"main": {"nvidia.com/gpu": [GPU_A]}}),
                         pod("ml", "b", {"main": {"nvidia.com/gpu": [GPU_B]}}))
        second = client.holders(seen=("a", "b"))
        assert second is not None and [h.pod for h in second] == ["a", "b"]
        assert kubelet.calls == 2

        # nothing seen changes, but the answer is 30 s old: asked again
        kubelet.set_pods(pod("ml", "a", {"main": {"nvidia.com/gpu": [GPU_B]}}),
                         pod("ml", "b", {"main": {"nvidia.com/gpu": [GPU_B]}}))
        assert client.holders(seen=("a", "b")) is second
        now[0] = 29.9 + 30.0
        third = client.holders(seen=("a", "b"))
        assert third is not None and [h.device for h in third] == [GPU_B, GPU_B]
        assert kubelet.calls == 3

        # the kubelet restarts: the socket vanishes (a failure, never reused) and a new one
        # comes; both are noticed with nothing else changed
        kubelet.stop()
        assert client.holders(seen=("a", "b")) is None
        assert client.holders(seen=("a", "b")) is None
        assert client.asked == 5
        kubelet.set_pods(pod("ml", "a", {"main": {"nvidia.com/gpu": [GPU_A]}}))
        kubelet.start()
        back = client.holders(seen=("a", "b"))
        assert back is not None and [h.device for h in back] == [GPU_A]
        assert client.up() and client.asked == 6
    finally:
        client.close()
