"""Which NVML device a DRA claim holds: this node's ResourceSlices, kept by one list-then-watch.

The kubelet's pod-resources API names a device claimed through Dynamic Resource Allocation by
(driver, pool, device name), never by UUID. The driver publishes the device's identity in the
node's ResourceSlices (`resource.k8s.io/v1`, GA in Kubernetes 1.34): NVIDIA's driver
(`gpu.nvidia.com`) gives a whole GPU and a MIG device each their NVML UUID in the `uuid`
attribute (a MIG device also `parentUUID` and `profile`). Device names carry the GPU's minor
number, which is not NVML's index, so a device is resolved by `uuid` only, never by its name
(docs/podresources.md#dra).

Only what resolution needs is kept of each slice (driver, pool, generation, and per device its
name, uuid, type and parent), so memory follows the node's devices, not the size of what the
API server sends. A pool may span several slices and be republished with a higher generation:
only the newest generation of each pool counts, as the scheduler does.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from exporter.kube.reflector import Reflector, _describe, status_of

MAX_DEVICES_PER_SLICE = 128
"""The API server's own limit (ResourceSliceMaxDevices): a slice claiming more is cut there."""
MAX_TEXT = 256
"""Longest attribute value kept: NVML UUIDs are 40-odd characters."""
NOT_SERVED_RETRY_SECONDS = 600.0
"""How often to ask again when the API server does not serve resource.k8s.io/v1 at all."""


@dataclass(frozen=True, slots=True)
class SliceDevice:
    """One device of a ResourceSlice, reduced to how it is resolved."""

    name: str
    uuid: str
    """The `uuid` attribute (NVML's `GPU-...` or `MIG-...`); "" when the driver gave none."""
    type: str = ""
    """The `type` attribute of NVIDIA's driver: gpu, mig (or another driver's word, or "")."""
    parent_uuid: str = ""


@dataclass(frozen=True, slots=True)
class Slice:
    """What is kept of one ResourceSlice: its pool and the devices that may be resolved."""

    driver: str
    pool: str
    generation: int
    devices: tuple[SliceDevice, ...] = ()


@dataclass(frozen=True, slots=True)
class Resolved:
    """A claimed device resolved to an NVML UUID, or the reason it could not be."""

    uuid: str
    reason: str = ""
    """Empty when resolved; else one line saying why, for the log."""


def _string(attributes: Mapping[str, Any], name: str) -> str:
    """A string attribute's value in the v1 wire form ({"string": ...}); "" otherwise."""
    value = attributes.get(name)
    text = value.get("string") if isinstance(value, Mapping) else None
    return text[:MAX_TEXT] if isinstance(text, str) else ""


def parse_slice(obj: Mapping[str, Any], drivers: Collection[str]) -> Slice:
    """The parts of a ResourceSlice that resolution needs; devices only for `drivers`."""
    spec = obj.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    pool = spec.get("pool")
    pool = pool if isinstance(pool, Mapping) else {}
    driver = spec.get("driver") if isinstance(spec.get("driver"), str) else ""
    generation = pool.get("generation")
    found = Slice(driver=str(driver)[:MAX_TEXT], pool=str(pool.get("name") or "")[:MAX_TEXT],
                  generation=generation if isinstance(generation, int) else 0)
    devices = spec.get("devices")
    if driver not in drivers or not isinstance(devices, list):
        return found
    kept = []
    for device in devices[:MAX_DEVICES_PER_SLICE]:
        if not isinstance(device, Mapping) or not isinstance(device.get("name"), str):
            continue
        attributes = device.get("attributes")
        attributes = attributes if isinstance(attributes, Mapping) else {}
        kept.append(SliceDevice(name=device["name"][:MAX_TEXT],
                                uuid=_string(attributes, "uuid"),
                                type=_string(attributes, "type"),
                                parent_uuid=_string(attributes, "parentUUID")))
    return Slice(found.driver, found.pool, found.generation, tuple(kept))


class DeviceIndex:
    """(driver, pool, device name) -> device, over the newest generation of each pool."""

    def __init__(self, slices: Collection[Slice]) -> None:
        newest: dict[tuple[str, str], int] = {}
        for s in slices:
            pool = (s.driver, s.pool)
            newest[pool] = max(newest.get(pool, s.generation), s.generation)
        self._devices: dict[tuple[str, str, str], SliceDevice] = {}
        self._stale: set[tuple[str, str, str]] = set()
        for s in slices:
            current = s.generation == newest[(s.driver, s.pool)]
            for device in s.devices:
                key = (s.driver, s.pool, device.name)
                if current:
                    self._devices[key] = device
                else:
                    self._stale.add(key)
        self.pools = len(newest)
        self.devices = len(self._devices)

    def resolve(self, driver: str, pool: str, device: str) -> Resolved:
        found = self._devices.get((driver, pool, device))
        where = f"DRA device {driver}/{pool}/{device}"
        if found is None:
            if (driver, pool, device) in self._stale:
                return Resolved("", f"{where} is only in an older generation of pool {pool}'s "
                                    "ResourceSlices (the driver is republishing them)")
            return Resolved("", f"{where} is in none of this node's ResourceSlices (a pool "
                                "the driver has not published, or a slice removed since the "
                                "claim was allocated)")
        if not found.uuid:
            return Resolved("", f"{where} has no `uuid` attribute in its ResourceSlice: only "
                                "drivers that publish the NVML UUID (NVIDIA's gpu.nvidia.com) "
                                "can be resolved")
        return Resolved(found.uuid)


class SliceWatcher(Reflector[Slice]):
    """This node's ResourceSlices (`spec.nodeName=<node>`), reduced to a `DeviceIndex`."""

    kind = "ResourceSlice"
    source = "resourceslices"

    def __init__(self, api: Any, node_name: str, drivers: Collection[str],
                 **kwargs: Any) -> None:
        """`api`: kubernetes.client.ResourceV1Api."""
        super().__init__(api.list_resource_slice, node_name, **kwargs)
        self._drivers = frozenset(drivers)
        self._index = DeviceIndex(())
        self._indexed = 0

    def keep(self, obj: Mapping[str, Any]) -> Slice:
        return parse_slice(obj, self._drivers)

    def explain(self, exc: BaseException) -> str:
        status = status_of(exc)
        if status == 404:
            return ("the API server does not serve resource.k8s.io/v1 ResourceSlices: DRA "
                    "attribution needs Kubernetes 1.34 or newer, so GPUs held through "
                    "ResourceClaims stay unattributed (set kubernetes.dra_drivers: [], chart "
                    "gpu.dra.enabled=false, where DRA is not used)")
        if status == 403:
            return ("forbidden: the exporter's ClusterRole needs get, list and watch on "
                    "resourceslices in resource.k8s.io (the chart grants them with "
                    "gpu.dra.enabled)")
        return _describe(exc)

    def retry_floor(self, exc: BaseException) -> float:
        return NOT_SERVED_RETRY_SECONDS if status_of(exc) == 404 else 0.0

    def up(self) -> bool:
        with self._lock:
            return self._up

    def synced(self) -> bool:
        with self._lock:
            return self._synced

    def errors(self) -> int:
        """Failed requests since start (a counter)."""
        with self._lock:
            return self._errors

    def index(self) -> DeviceIndex:
        """The devices as last known; rebuilt only when a slice changed."""
        with self._lock:
            if self._version == self._indexed:
                return self._index
            slices, version = tuple(self._items.values()), self._version
        self._index, self._indexed = DeviceIndex(slices), version
        return self._index
