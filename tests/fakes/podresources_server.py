"""A fake kubelet pod-resources v1 server: real gRPC, on a unix socket, with the kubelet's faults.

`FakePodResources(socket_path)` serves `v1.PodResourcesLister` with the generated servicer, so
the client under test speaks the real wire protocol. `set_pods()` replaces what `List`
answers; `pod()` builds one pod's entry. `stop()` shuts the server down and removes the socket
file, as a kubelet restart does; `start()` serves again on the same path with a new server.
`set_delay()` makes every `List` sleep first (a kubelet too slow to answer). `calls` counts
the `List` requests received, including those that were delayed.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent import futures
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc

from exporter.kube import podresources_pb2 as pb
from exporter.kube import podresources_pb2_grpc as pb_grpc

_UNIX_PATH_MAX = 107  # sun_path is 108 bytes, NUL included


def pod(namespace: str, name: str,
        containers: Mapping[str, Mapping[str, Sequence[str]]],
        *, cpu_ids: Sequence[int] = (),
        claims: Mapping[str, Sequence[pb.DynamicResource]] | None = None) -> pb.PodResources:
    """A pod's entry: container name -> resource name -> device ids (cpu_ids on each), and
    container name -> the DRA claims it names (`claim()`), as the kubelet reports them."""
    claims = claims or {}
    names = [*containers, *(c for c in claims if c not in containers)]
    return pb.PodResources(
        namespace=namespace, name=name,
        containers=[pb.ContainerResources(
            name=container, cpu_ids=list(cpu_ids),
            devices=[pb.ContainerDevices(
                resource_name=resource, device_ids=list(ids),
                topology=pb.TopologyInfo(nodes=[pb.NUMANode(ID=0)]))
                for resource, ids in containers.get(container, {}).items()],
            dynamic_resources=list(claims.get(container, ())))
            for container in names])


def claim(namespace: str, name: str, *devices: tuple[str, str, str]) -> pb.DynamicResource:
    """One allocated ResourceClaim as the kubelet reports it: (driver, pool, device) per
    device, each with the CDI device the driver prepared for it (NVIDIA's driver names them
    k8s.gpu.nvidia.com/claim=<claim uid>-<device>)."""
    return pb.DynamicResource(
        claim_name=name, claim_namespace=namespace,
        claim_resources=[pb.ClaimResource(
            driver_name=driver, pool_name=pool, device_name=device,
            cdi_devices=[pb.CDIDevice(name=f"k8s.{driver}/claim={name}-{device}")])
            for driver, pool, device in devices])


class _Servicer(pb_grpc.PodResourcesListerServicer):
    def __init__(self, fake: FakePodResources) -> None:
        self._fake = fake

    def List(self, request: pb.ListPodResourcesRequest,
             context: grpc.ServicerContext) -> pb.ListPodResourcesResponse:
        return self._fake._list()


class FakePodResources:
    """The kubelet's pod-resources server on `socket_path`, started and stopped at will."""

    def __init__(self, socket_path: Path) -> None:
        if len(str(socket_path)) > _UNIX_PATH_MAX:
            raise ValueError(f"unix socket path too long: {socket_path}")
        self.socket_path = socket_path
        self._lock = threading.Lock()
        self._pods: list[pb.PodResources] = []
        self._delay = 0.0
        self._stopping = threading.Event()
        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None
        self.calls = 0

    def set_pods(self, *pods: pb.PodResources) -> None:
        with self._lock:
            self._pods = list(pods)

    def set_delay(self, seconds: float) -> None:
        with self._lock:
            self._delay = seconds

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("already serving")
        self._stopping.clear()
        self._executor = futures.ThreadPoolExecutor(max_workers=4,
                                                    thread_name_prefix="fake-podresources")
        server = grpc.server(self._executor)
        pb_grpc.add_PodResourcesListerServicer_to_server(  # type: ignore[no-untyped-call]
            _Servicer(self), server)
        if not server.add_insecure_port(f"unix:{self.socket_path}"):
            raise RuntimeError(f"cannot listen on {self.socket_path}")
        server.start()
        self._server = server

    def stop(self) -> None:
        """Ends serving and removes the socket file, as a kubelet going away does."""
        server, executor, self._server, self._executor = (
            self._server, self._executor, None, None)
        self._stopping.set()  # wakes delayed handlers
        if server is not None:
            server.stop(grace=None).wait(5)
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        self.socket_path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _list(self) -> pb.ListPodResourcesResponse:
        with self._lock:
            self.calls += 1
            delay, pods = self._delay, list(self._pods)
        if delay:
            self._stopping.wait(delay)
        return pb.ListPodResourcesResponse(pod_resources=pods)
