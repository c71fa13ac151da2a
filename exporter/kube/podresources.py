"""Who holds which GPU: the kubelet's pod-resources API v1 (`List`), over its unix socket.

The kubelet assigns device-plugin devices to containers and is the only one that knows the
assignment; the Kubernetes API only has the requested counts. Devices claimed through Dynamic
Resource Allocation (ResourceClaims) come in the same answer, as `dynamic_resources`: (driver,
pool, device name) per claimed device, which exporter.kube.slices resolves to an NVML UUID.
The socket is normally /var/lib/kubelet/pod-resources/kubelet.sock; the exporter mounts that
directory (not the socket file), since a kubelet restart removes the socket and creates a new
one.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from exporter import logs
from exporter.config import KubernetesSettings
from exporter.kube import podresources_pb2 as pb
from exporter.kube import podresources_pb2_grpc as pb_grpc

log = logs.get("podresources")

DEFAULT_PREFIXES = KubernetesSettings().gpu_resources
"""The config's default (`kubernetes.gpu_resources`), defined there once."""
DEFAULT_DRIVERS = KubernetesSettings().dra_drivers

REFRESH_SECONDS = 30.0
"""The longest an answer is reused while nothing the tick sees has changed (`holders`)."""
"""The config's default (`kubernetes.dra_drivers`)."""

_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""What the kubelet's own pod-resources client accepts; gRPC's 4 MiB default is small for a
node with many pods holding many CPU ids."""

if TYPE_CHECKING:  # grpc's classes are generic only in the stubs
    _List = grpc.UnaryUnaryMultiCallable[pb.ListPodResourcesRequest, pb.ListPodResourcesResponse]

_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    # A private subchannel: a channel made after a failure must not inherit a shared
    # subchannel that is still waiting out gRPC's reconnect backoff (up to 2 minutes).
    ("grpc.use_local_subchannel_pool", 1),
    # Not min_reconnect_backoff_ms: it is also the connect timeout, and a busy kubelet may
    # take a while to answer the handshake; each call's deadline bounds the wait anyway.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


@dataclass(frozen=True, slots=True)
class DeviceHolder:
    """One device the kubelet has assigned to one container."""

    namespace: str
    pod: str
    container: str
    resource: str
    """The extended resource, e.g. "nvidia.com/gpu", "nvidia.com/mig-3g.40gb"."""
    device_id: str
    """As the kubelet reports it: "GPU-8f0c...", "MIG-1a2b...", "GPU-8f0c...::2" (shared)."""

    @property
    def device(self) -> str:
        """The device id without a "::N" sharing suffix: what NVML calls the UUID."""
        return device_of(self.device_id)


@dataclass(frozen=True, slots=True)
class ClaimHolder:
    """One device a ResourceClaim holds, for one container that names the claim."""

    namespace: str
    pod: str
    container: str
    claim_namespace: str
    claim: str
    driver: str
    """The DRA driver, e.g. "gpu.nvidia.com"."""
    pool: str
    device: str
    """The device's name in its ResourceSlice (e.g. "gpu-0", "gpu-2-mig-3g40gb-9-0"): not a
    UUID, and its number is the GPU's minor number, not NVML's index."""


Holder = DeviceHolder | ClaimHolder


def device_of(device_id: str) -> str:
    """Strips the "::N" replica suffix that GPU sharing (time-slicing, MPS) appends to an id."""
    base, sep, replica = device_id.rpartition("::")
    return base if sep and base and replica.isdigit() else device_id


def matches(resource: str, prefixes: Sequence[str]) -> bool:
    """The resource is one of ours: equal to a prefix, or starting with one."""
    return any(resource.startswith(prefix) for prefix in prefixes)


def holders_of(response: pb.ListPodResourcesResponse, prefixes: Sequence[str],
               drivers: Collection[str] = ()) -> list[Holder]:
    """Every device of a matching resource, and every device of a matching DRA driver that a
    claim holds, in a List response, in the kubelet's order."""
    found: list[Holder] = []
    for pod in response.pod_resources:
        for container in pod.containers:
            for devices in container.devices:
                if not matches(devices.resource_name, prefixes):
                    continue
                found.extend(DeviceHolder(namespace=pod.namespace, pod=pod.name,
                                          container=container.name,
                                          resource=devices.resource_name, device_id=device_id)
                             for device_id in devices.device_ids if device_id)
            for claim in container.dynamic_resources:
                found.extend(ClaimHolder(
                    namespace=pod.namespace, pod=pod.name, container=container.name,
                    claim_namespace=claim.claim_namespace, claim=claim.claim_name,
                    driver=r.driver_name, pool=r.pool_name, device=r.device_name)
                    for r in claim.claim_resources
                    if r.driver_name in drivers and r.device_name)
    return found


class PodResourcesClient:
    """The kubelet's pod-resources List, over a unix socket; one channel, reconnecting."""

    def __init__(self, socket_path: Path, *,
                 resource_prefixes: Sequence[str] = DEFAULT_PREFIXES,
                 dra_drivers: Collection[str] = DEFAULT_DRIVERS,
                 timeout_seconds: float = 2.0, refresh_seconds: float = REFRESH_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._path = Path(socket_path)
        self._refresh = refresh_seconds
        self._clock = clock
        self._answer: tuple[list[Holder], Hashable, object, float] | None = None
        """The last answer, what the tick saw then, the socket's identity and when it came."""
        self.asked = 0
        self.reused = 0
        self._prefixes = tuple(resource_prefixes)
        self._drivers = frozenset(dra_drivers)
        self._timeout = timeout_seconds
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._list: _List | None = None
        self._up = False
        self._last_error = "not called yet"
        self._last_count = 0
        self._throttle = logs.Throttle(log, source="podresources")

    def holders(self, seen: Hashable = None) -> list[Holder] | None:
        """The devices held now (device-plugin devices, and DRA devices of the drivers
        watched); None when the kubelet could not be asked (logged, throttled).

        `seen`: what the tick sees that a new allocation would change (its containers and
        their ids, the GPUs' processes). The kubelet allocates devices only when a container
        is created, so while `seen` and the socket (its inode: a restarted kubelet makes a new
        one) stay the same, the last answer is reused for up to `refresh_seconds`; a failed
        answer is never reused. The List costs 2 to 4 ms at 250 containers, the largest cost
        of a tick after the render (docs/performance.md)."""
        with self._lock:
            socket_id = self._socket_id()
            now = self._clock()
            last = self._answer
            if (last is not None and self._up and last[1] == seen and last[2] == socket_id
                    and now - last[3] < self._refresh):
                self.reused += 1
                return last[0]
            self.asked += 1
            try:
                call = self._connect()
                response = call(pb.ListPodResourcesRequest(), timeout=self._timeout)
                found = holders_of(response, self._prefixes, self._drivers)
            except Exception as exc:  # never raise into the sampler's tick
                self._fail(exc)
                return None
            self._up = True
            self._answer = (found, seen, socket_id, now)
            self._last_count = len(found)
            self._throttle.recovered("list", f"kubelet pod-resources at {self._path} answers "
                                             f"again: {len(found)} devices held")
            return found

    def _socket_id(self) -> object:
        try:
            st = os.stat(self._path)
        except OSError as exc:
            return exc.errno
        return st.st_dev, st.st_ino, st.st_ctime_ns

    def up(self) -> bool:
        """The last call succeeded."""
        return self._up

    def describe(self) -> str:
        """One line for logs and the startup banner."""
        state = (f"up, {self._last_count} devices held" if self._up
                 else f"down: {self._last_error}")
        wanted = ", ".join(f"{prefix}*" for prefix in self._prefixes)
        drivers = ", ".join(sorted(self._drivers)) or "none"
        return (f"kubelet pod-resources v1 at {self._path} ({state}; resources {wanted}; "
                f"DRA drivers {drivers})")

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _connect(self) -> _List:
        if self._list is None:
            self._channel = grpc.insecure_channel(f"unix://{self._path}",
                                                  options=_CHANNEL_OPTIONS)
            stub = pb_grpc.PodResourcesListerStub(self._channel)  # type: ignore[no-untyped-call]
            self._list = stub.List
        return self._list

    def _drop(self) -> None:
        channel, self._channel, self._list = self._channel, None, None
        if channel is not None:
            channel.close()

    def _fail(self, exc: Exception) -> None:
        # A fresh channel on the next call connects at once to a socket the kubelet has just
        # recreated, instead of waiting out the old channel's backoff.
        self._drop()
        self._up = False
        self._answer = None
        self._last_error = self._explain(exc)
        self._throttle.fault("list", f"kubelet pod-resources at {self._path}: "
                                     f"{self._last_error}; GPU holders unknown meanwhile",
                             path=self._path, err=self._last_error)

    def _explain(self, exc: Exception) -> str:
        if not self._path.exists():
            return ("the socket does not exist: mount the kubelet's pod-resources directory "
                    f"({self._path.parent}, hostPath type Directory) rather than the socket file, "
                    "so that the socket a restarted kubelet creates is seen")
        if not isinstance(exc, grpc.Call):
            return _first_line(exc)
        code, details = exc.code(), _first_line(exc.details() or "")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"no answer within {self._timeout:g} s"
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return (f"the kubelet does not serve pod-resources v1 List ({details}): the API is "
                    "on by default since Kubernetes 1.15 and GA since 1.28")
        if code == grpc.StatusCode.UNAVAILABLE and "ermission denied" in details:
            return (f"{details}: the socket is root's; run the exporter as root or give it "
                    "access to the socket")
        if code == grpc.StatusCode.UNAVAILABLE:
            return f"the kubelet is not answering (restarting?): {details}"
        return f"{code.name}: {details}"


def _first_line(value: object) -> str:
    text = str(value) or type(value).__name__
    return text.splitlines()[0][:300]
