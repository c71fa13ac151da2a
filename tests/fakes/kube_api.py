"""A protocol-faithful fake Kubernetes API server for the pod- and ResourceSlice-watcher tests.

`FakeKubeAPI` serves plain HTTP on 127.0.0.1 (or HTTPS, as a real apiserver does, given
`tls_cert`/`tls_key` and the `tls_ca` that signed them) from its own thread and asyncio event
loop, so the real `kubernetes` client (or aiohttp, or a subprocess given `write_kubeconfig()`)
can talk to it while synchronous or async test code mutates its state. It reproduces these
behaviours of a real kube-apiserver (watch cache enabled, JSON only):

* Two watchable collections, described by one table of resource kinds (`KINDS`) and served by
  the same code: `GET /api/v1/pods` (pods of all namespaces, `PodList`, kind `Pod`, apiVersion
  `v1`) and `GET /apis/resource.k8s.io/v1/resourceslices` (cluster-scoped DRA ResourceSlices,
  `ResourceSliceList`, kind `ResourceSlice`, apiVersion `resource.k8s.io/v1`, as served by
  Kubernetes 1.34+). A list's `metadata.resourceVersion` is the current global RV; items are
  ordered by namespace/name (etcd key order; by name for slices), carry their own
  `metadata.resourceVersion` and, as in a real list, no `kind`/`apiVersion`.
  `limit=N` pages the list as the apiserver does from etcd: N items, then
  `metadata.continue` (an opaque token) and `remainingItemCount` while more remain; `continue`
  serves the next page of the same snapshot, at the first page's resourceVersion. A token
  older than the compaction horizon (`compact()`) is answered 410 `Expired` ("The provided
  continue parameter is too old ..."). `labelSelector` and a list's `resourceVersion` are
  accepted and ignored.
* `fieldSelector` takes `label=value` (also `==`) terms, comma-joined, all of which must
  match: pods support `spec.nodeName`, slices `spec.nodeName` and `spec.driver`. Any other
  field label is answered 400 `BadRequest` with the apiserver's "field label not supported"
  message (unlike the apiserver, `!=` and `metadata.*` labels are refused the same way).
* The same paths with `watch=true|1|True` stream HTTP 200, chunked, `application/json`, one
  `{"type": ..., "object": ...}` JSON document per line; objects carry `kind`/`apiVersion`.
  Watching from `resourceVersion=N` replays every logged event of that resource with RV > N
  before streaming live ones, atomically (no gap, no duplicate). A missing or `"0"` RV starts
  at "now" with a synthetic `ADDED` per current object. An RV older than the compaction
  horizon gets HTTP 200 followed by a single in-stream `ERROR` event holding a 410 `Expired`
  Status ("too old resource version: N (oldest)") and the end of the stream, exactly like the
  watch cache. (Not reproduced: an RV from the future is simply waited for, where the
  apiserver would answer "Too large resource version" after 3 s.)
* Field-selector transitions are reported like the watch cache's `cacheWatcher` does: an
  object that starts matching (an unscheduled pod bound to the node, a slice moved to the
  node) arrives as `ADDED`, one that stops matching as `DELETED` (previous content, new RV);
  `DELETED` carries the object's last state with the deletion's RV. A pod watch sees only pod
  events and a slice watch only slice events.
* `allowWatchBookmarks=true` adds a `BOOKMARK` event (an object with only `kind` (`Pod` or
  `ResourceSlice`), `apiVersion` and `metadata.resourceVersion`) every `bookmark_interval`
  seconds. Its RV never runs ahead of the events already written to that stream, but does
  advance past mutations that it did not see (other nodes or drivers, the other resource,
  node label changes), as the watch cache's progress notifications do.
* `timeoutSeconds=N` ends the stream cleanly (terminating chunk) after N seconds.
* `serve_dra=False` leaves `resource.k8s.io/v1` out, as on a 1.32/1.33 cluster: its path is
  answered 404 `NotFound` ("the server could not find the requested resource").
* `GET /api/v1/nodes/<name>` returns the Node (labels, capacity, allocatable, Ready
  condition); any other name is a 404 `NotFound` Status. Unknown paths are 404 and other
  methods 405, both as Status objects.
* One global, monotonically increasing resourceVersion (decimal string) and one event log
  (one etcd) for all resources, bumped by every mutation. Created objects get
  `metadata.uid`, `creationTimestamp` and `resourceVersion` and keep uid/creationTimestamp
  across replacements; pods also get `namespace` ("default") and `spec.containers: []` if
  they have none (so the client's models accept them); slices (cluster-scoped, any namespace
  dropped) get `metadata.generation` 1, bumped when a replacement changes the spec. Given
  `kind`/`apiVersion` fields are not stored.

Faults, for testing the client's recovery: `compact()` (every older RV becomes too old and
every open watch gets the in-stream 410 and ends), automatic compaction of the oldest half
of the event log beyond `max_events`, `set_outage()` (every request answered with a real
apiserver error Status of the chosen HTTP code, open watches cut abruptly with no ERROR
line), `drop_watches()` (transport aborted mid-stream, so the client sees a broken chunked
body), and `set_delay()` (latency before every response starts). All of them act on watches
of both resources.

`stats` counts requests as received (including those answered with an outage error or, with
`serve_dra=False`, a 404): `list` (pod lists without watch), `watch` (pod watch requests),
`resourceslices.list` and `resourceslices.watch` (the same for slices), `continue` and
`resourceslices.continue` (a list's later pages: a paged list counts once in `list`), `node`
(node GETs),
`open_watches` (streams of either resource currently open) and `outage_responses`;
`requests` records every request as `(method, path, query)`.

Mutations: `add_pod`/`modify_pod`/`delete_pod`/`pods` and `add_slice`/`modify_slice`/
`delete_slice`/`slices`. `gpu_slice()`, `gpu_device()` and `mig_device()` build
ResourceSlices as NVIDIA's DRA driver (`gpu.nvidia.com`) publishes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import ssl
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import yaml
from aiohttp import web

from tests.fakes.threaded import start_loop_thread, stop_loop_thread

JSON = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

POD_PATH = "/api/v1/pods"
SLICE_PATH = "/apis/resource.k8s.io/v1/resourceslices"
NODE_PREFIX = "/api/v1/nodes/"
TOKEN = "fake-token"
NVIDIA_DRIVER = "gpu.nvidia.com"

_REASONS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "bad request"),
    401: ("Unauthorized", "Unauthorized"),
    403: ("Forbidden", "forbidden: fake apiserver refuses the request"),
    404: ("NotFound", "the server could not find the requested resource"),
    405: ("MethodNotAllowed", "the server does not allow this method on the requested resource"),
    409: ("Conflict", "conflict"),
    410: ("Expired", "too old resource version"),
    429: ("TooManyRequests", "storage is (re)initializing"),
    500: ("InternalError", "Internal error occurred: fake apiserver outage"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: ("Timeout", "Timeout: request did not complete within requested timeout"),
}
_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})  # Go's strconv.ParseBool
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})


def status_object(code: int, message: str | None = None, reason: str | None = None,
                  details: JSON | None = None) -> JSON:
    """A `v1.Status` failure object as the apiserver sends it."""
    default_reason, default_message = _REASONS.get(code, ("InternalError", "error"))
    body: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message if message is not None else default_message,
        "reason": reason if reason is not None else default_reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


def _status_response(code: int, message: str | None = None, reason: str | None = None,
                     details: JSON | None = None, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response(status_object(code, message, reason, details), status=code,
                             headers=headers)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_bool(value: str | None) -> bool:
    if value is None or value == "":
        return False
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"invalid boolean {value!r}")


# -- resource kinds -------------------------------------------------------------------------

FieldGetter = Callable[[JSON], str]
Selector = tuple[tuple[FieldGetter, str], ...]
"""A parsed field selector: (field getter, wanted value) terms, all of which must match."""


def _spec_field(name: str) -> FieldGetter:
    def get(obj: JSON) -> str:
        spec = obj.get("spec") or {}
        return str(spec.get(name) or "")
    return get


def _fill_pod(obj: JSON) -> None:
    obj.setdefault("spec", {}).setdefault("containers", [])


def _fill_nothing(obj: JSON) -> None:
    pass


@dataclass(frozen=True, eq=False)
class _Kind:
    """One watchable resource: where it is served, how it is named and filtered."""

    resource: str  # plural, as in RBAC and stats: "pods"
    group: str  # "" for the core group
    kind: str
    list_kind: str
    api_version: str
    path: str
    namespaced: bool
    fields: Mapping[str, FieldGetter]  # supported field-selector labels
    field_error: str  # the apiserver's message for another label; {label} is filled in
    fill: Callable[[JSON], None] = _fill_nothing  # defaults the apiserver would set
    generation: bool = False  # metadata.generation kept by the registry strategy
    stat_prefix: str = ""  # stats keys: f"{prefix}list", f"{prefix}watch"

    @property
    def qualified(self) -> str:
        """The resource as errors name it: `pods`, `resourceslices.resource.k8s.io`."""
        return f"{self.resource}.{self.group}" if self.group else self.resource

    def with_kind(self, obj: JSON) -> JSON:
        return {"kind": self.kind, "apiVersion": self.api_version, **copy.deepcopy(obj)}

    def parse_selector(self, selector: str) -> Selector:
        """`label=value[,label==value...]` -> terms; ValueError (a 400) for anything else.

        Splits terms and operators as apimachinery's `fields.ParseSelector` does (no escapes).
        """
        terms: list[tuple[FieldGetter, str]] = []
        for term in selector.split(","):
            if term == "":
                continue
            at = term.find("=")
            if at < 0:
                raise ValueError(f"invalid selector: '{selector}'; can't understand '{term}'")
            if at > 0 and term[at - 1] == "!":
                label, value = term[:at - 1], None  # "!=": not offered by this fake
            elif term[at + 1:at + 2] == "=":
                label, value = term[:at], term[at + 2:]
            else:
                label, value = term[:at], term[at + 1:]
            label = label.strip()
            getter = self.fields.get(label)
            if getter is None or value is None:
                raise ValueError(self.field_error.format(label=label))
            if "=" in value:
                raise ValueError(f"invalid field selector value: unescaped '=' in '{value}'")
            terms.append((getter, value.strip()))
        return tuple(terms)


PODS = _Kind(
    resource="pods", group="", kind="Pod", list_kind="PodList", api_version="v1",
    path=POD_PATH, namespaced=True, fields={"spec.nodeName": _spec_field("nodeName")},
    field_error="field label not supported: {label}", fill=_fill_pod)
RESOURCE_SLICES = _Kind(
    resource="resourceslices", group="resource.k8s.io", kind="ResourceSlice",
    list_kind="ResourceSliceList", api_version="resource.k8s.io/v1", path=SLICE_PATH,
    namespaced=False,
    fields={"spec.nodeName": _spec_field("nodeName"), "spec.driver": _spec_field("driver")},
    field_error="field label not supported for resource.k8s.io/v1, Kind=ResourceSlice: {label}",
    generation=True, stat_prefix="resourceslices.")
KINDS: tuple[_Kind, ...] = (PODS, RESOURCE_SLICES)


def _matches(obj: JSON | None, selector: Selector) -> bool:
    return obj is not None and all(get(obj) == value for get, value in selector)


def _with_rv(obj: JSON, rv: int) -> JSON:
    out = copy.deepcopy(obj)
    out.setdefault("metadata", {})["resourceVersion"] = str(rv)
    return out


# -- NVIDIA DRA driver objects ----------------------------------------------------------------

_H100_BUS_IDS = ("0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0",
                 "0000:9a:00.0", "0000:ab:00.0", "0000:ba:00.0", "0000:db:00.0")
# H100 80GB GPU-instance profiles: multiprocessors and memory (about what NVML reports).
_H100_MIG: dict[str, tuple[int, str]] = {
    "1g.10gb": (16, "9856Mi"), "1g.20gb": (26, "19968Mi"), "2g.20gb": (32, "19968Mi"),
    "3g.40gb": (60, "40192Mi"), "4g.40gb": (64, "40192Mi"), "7g.80gb": (132, "80768Mi"),
}
_COMMON_GPU_ATTRIBUTES: JSON = {
    "productName": {"string": "NVIDIA H100 80GB HBM3"},
    "architecture": {"string": "Hopper"},
    "brand": {"string": "Nvidia"},
    "cudaComputeCapability": {"version": "9.0.0"},
    "driverVersion": {"version": "570.172.8"},
    "cudaDriverVersion": {"version": "12.8.0"},
}


def gpu_device(minor: int, uuid: str) -> dict[str, Any]:
    """A full H100 as NVIDIA's DRA driver lists it in a ResourceSlice (v1 wire form)."""
    return {
        "name": f"gpu-{minor}",
        "attributes": {
            "type": {"string": "gpu"},
            "uuid": {"string": uuid},
            **copy.deepcopy(_COMMON_GPU_ATTRIBUTES),
            "resource.kubernetes.io/pciBusID": {
                "string": _H100_BUS_IDS[minor % len(_H100_BUS_IDS)]},
        },
        "capacity": {"memory": {"value": "80Gi"}},
    }


def mig_device(parent_minor: int, profile: str, profile_id: int, start: int, uuid: str,
               parent_uuid: str) -> dict[str, Any]:
    """A MIG device of an H100 (e.g. profile "3g.40gb", id 9, placement start 0) as NVIDIA's
    DRA driver lists it: named `gpu-2-mig-3g40gb-9-0`."""
    known = _H100_MIG.get(profile)
    if known is not None:
        multiprocessors, memory = known
    else:  # another "<N>g.<M>gb" profile: N compute slices of 16 SMs, M GiB
        compute, _, size = profile.partition("g.")
        multiprocessors = 16 * int(compute) if compute.isdigit() else 16
        memory = f"{size.removesuffix('gb') or '10'}Gi"
    return {
        "name": f"gpu-{parent_minor}-mig-{profile.replace('.', '')}-{profile_id}-{start}",
        "attributes": {
            "type": {"string": "mig"},
            "uuid": {"string": uuid},
            "parentUUID": {"string": parent_uuid},
            "profile": {"string": profile},
            **copy.deepcopy(_COMMON_GPU_ATTRIBUTES),
        },
        "capacity": {
            "multiprocessors": {"value": str(multiprocessors)},
            "memory": {"value": memory},
        },
    }


def gpu_slice(node: str, *, name: str, pool: str | None = None, generation: int = 1,
              devices: list[dict[str, Any]]) -> dict[str, Any]:
    """A ResourceSlice as NVIDIA's DRA driver publishes it for `node` (driver
    `gpu.nvidia.com`, one slice per pool, pool named after the node unless `pool` is given)."""
    return {
        "apiVersion": RESOURCE_SLICES.api_version,
        "kind": RESOURCE_SLICES.kind,
        "metadata": {"name": name, "generateName": f"{node}-{NVIDIA_DRIVER}-"},
        "spec": {
            "driver": NVIDIA_DRIVER,
            "nodeName": node,
            "pool": {"name": pool if pool is not None else node, "generation": generation,
                     "resourceSliceCount": 1},
            "devices": copy.deepcopy(devices),
        },
    }


# -- the store's log and watches --------------------------------------------------------------


@dataclass(frozen=True)
class _Change:
    """One logged mutation: the object before (None on create) and after (None on delete)."""

    kind: _Kind
    rv: int
    prev: JSON | None
    cur: JSON | None

    def project(self, selector: Selector) -> JSON | None:
        """The watch event a watcher with this selector sees, as the watch cache does."""
        was, now = _matches(self.prev, selector), _matches(self.cur, selector)
        if now and self.cur is not None:
            return {"type": "MODIFIED" if was else "ADDED", "object": self.kind.with_kind(self.cur)}
        if was and self.prev is not None:
            return {"type": "DELETED",
                    "object": self.kind.with_kind(_with_rv(self.prev, self.rv))}
        return None


@dataclass
class _Item:
    """Something delivered to an open watch, in order, through its queue."""

    kind: Literal["event", "progress", "expire", "abort", "close"]
    rv: int = 0
    event: JSON | None = None


@dataclass(eq=False)
class _Watch:
    request: web.Request
    kind: _Kind
    selector: Selector
    progress_rv: int
    queue: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)


class FakeKubeAPI:
    """A fake kube-apiserver for one node, served from a background thread (see module doc)."""

    def __init__(self, *, node_name: str = "node-a", node_labels: dict[str, str] | None = None,
                 allocatable_cpu: str = "16", allocatable_memory: str = "64Gi",
                 bookmark_interval: float = 1.0, max_events: int = 100_000,
                 tls_cert: Path | None = None, tls_key: Path | None = None,
                 tls_ca: Path | None = None, serve_dra: bool = True) -> None:
        if (tls_cert is None) != (tls_key is None) or (tls_ca is not None and tls_cert is None):
            raise ValueError("HTTPS needs tls_cert and tls_key (and tls_ca for the kubeconfig)")
        self.node_name = node_name
        self._tls = (tls_cert, tls_key) if tls_cert is not None and tls_key is not None else None
        self._tls_ca = tls_ca
        self.bookmark_interval = bookmark_interval
        self.max_events = max_events
        self.serve_dra = serve_dra
        self._lock = threading.RLock()
        self._rv = 1
        self._compacted_rv = 0
        self._log: list[_Change] = []
        # resource -> (namespace or "", name) -> stored object
        self._objects: dict[str, dict[tuple[str, str], JSON]] = {k.resource: {} for k in KINDS}
        self._node_labels = dict(node_labels) if node_labels is not None else {
            "kubernetes.io/hostname": node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        }
        self._node_rv = self._rv
        self._node_uid = str(uuid.uuid4())
        self._node_created = _now()
        self._allocatable = {"cpu": allocatable_cpu, "memory": allocatable_memory, "pods": "110"}
        self._watches: set[_Watch] = set()
        self._outage: int | None = None
        self._retry_after: int | None = None
        self._delay = 0.0
        self.stats: dict[str, int] = {
            "list": 0, "watch": 0, "node": 0, "open_watches": 0, "outage_responses": 0,
            "resourceslices.list": 0, "resourceslices.watch": 0,
            "continue": 0, "resourceslices.continue": 0,
        }
        self._snapshots: dict[str, tuple[int, list[JSON]]] = {}
        """continue token -> (the list's RV, the items not served yet)."""
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:43125` or `https://...` (only once started)."""
        if not self._url:
            raise RuntimeError("FakeKubeAPI is not started")
        return self._url

    @property
    def resource_version(self) -> str:
        """The current global resourceVersion."""
        with self._lock:
            return str(self._rv)

    def start(self) -> str:
        """Start the server thread on 127.0.0.1 with an ephemeral port; returns the base URL."""
        if self._thread is not None:
            raise RuntimeError("FakeKubeAPI already started")
        self._loop, self._thread, self._url = start_loop_thread(self._serve,
                                                                name="fake-kube-api")
        return self._url

    def stop(self) -> None:
        """End every open stream cleanly, close the server and join its thread."""
        loop = self._loop
        if loop is None:
            return
        with self._lock:
            watches = list(self._watches)
        for watch in watches:
            self._post(watch, _Item("close"))
        if self._runner is not None:
            future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop)
            future.result(timeout=10)
            self._runner = None
        self._halt_loop()

    def _halt_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        stop_loop_thread(loop, thread)
        self._loop = None
        self._thread = None
        self._url = ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig (bearer token, current-context set, and with HTTPS the CA given as
        `tls_ca`, else the server's own certificate) for this server."""
        cluster: JSON = {"server": self.url}
        if self._tls is not None:
            cluster["certificate-authority"] = str(self._tls_ca or self._tls[0])
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "fake", "user": {"token": TOKEN}}],
            "contexts": [{"name": "fake",
                          "context": {"cluster": "fake", "user": "fake", "namespace": "default"}}],
            "current-context": "fake",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path


    # -- state and mutations (any thread) -------------------------------------------------

    def add_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        """Create a pod (deep-copied, defaults filled); emits ADDED. Returns the stored copy."""
        return self._create(PODS, pod)

    def modify_pod(self, namespace: str, name: str, pod: dict[str, Any]) -> dict[str, Any]:
        """Replace a pod (uid/creationTimestamp kept unless given); emits MODIFIED."""
        return self._replace(PODS, namespace, name, pod)

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod; emits DELETED with its last state and the deletion's RV."""
        self._delete(PODS, namespace, name)

    def pods(self) -> list[dict[str, Any]]:
        """Deep copies of the stored pods, in namespace/name order."""
        return self._stored(PODS)

    def add_slice(self, resource_slice: dict[str, Any]) -> dict[str, Any]:
        """Create a ResourceSlice (deep-copied, metadata filled, `generation` 1); emits ADDED.
        Returns the stored copy."""
        return self._create(RESOURCE_SLICES, resource_slice)

    def modify_slice(self, name: str, resource_slice: dict[str, Any]) -> dict[str, Any]:
        """Replace a ResourceSlice (uid/creationTimestamp kept unless given, `generation`
        bumped if the spec changed); emits MODIFIED."""
        return self._replace(RESOURCE_SLICES, "", name, resource_slice)

    def delete_slice(self, name: str) -> None:
        """Delete a ResourceSlice; emits DELETED with its last state and the deletion's RV."""
        self._delete(RESOURCE_SLICES, "", name)

    def slices(self) -> list[dict[str, Any]]:
        """Deep copies of the stored ResourceSlices, in name order."""
        return self._stored(RESOURCE_SLICES)

    def set_node_labels(self, labels: dict[str, str]) -> None:
        """Replace the node's labels (bumps the RV; no watch event)."""
        with self._lock:
            self._node_labels = dict(labels)
            self._node_rv = self._bump()
            self._progress_all()

    @staticmethod
    def _normalized(kind: _Kind, given: JSON, namespace: str | None = None,
                    name: str | None = None) -> tuple[JSON, tuple[str, str]]:
        obj = copy.deepcopy(given)
        obj.pop("kind", None)
        obj.pop("apiVersion", None)
        meta = obj.setdefault("metadata", {})
        if name is not None:
            meta["name"] = name
        if not meta.get("name"):
            raise ValueError(f"{kind.resource.removesuffix('s')} needs metadata.name")
        if not kind.namespaced:
            meta.pop("namespace", None)
        elif namespace is not None:
            meta["namespace"] = namespace
        else:
            meta.setdefault("namespace", "default")
        kind.fill(obj)
        return obj, (meta.get("namespace", ""), meta["name"])

    @staticmethod
    def _describe(kind: _Kind, key: tuple[str, str]) -> tuple[str, str]:
        where = f' in namespace "{key[0]}"' if kind.namespaced else ""
        return f'{kind.qualified} "{key[1]}"', where

    def _create(self, kind: _Kind, given: JSON) -> JSON:
        obj, key = self._normalized(kind, given)
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        if kind.generation:
            meta["generation"] = 1
        store = self._objects[kind.resource]
        with self._lock:
            if key in store:
                what, where = self._describe(kind, key)
                raise ValueError(f"{what} already exists{where}")
            rv = self._bump()
            meta["resourceVersion"] = str(rv)
            store[key] = obj
            self._record(_Change(kind, rv, None, obj))
            return copy.deepcopy(obj)

    def _replace(self, kind: _Kind, namespace: str, name: str, given: JSON) -> JSON:
        obj, key = self._normalized(kind, given, namespace, name)
        meta = obj["metadata"]
        store = self._objects[kind.resource]
        with self._lock:
            prev = store.get(key)
            if prev is None:
                what, where = self._describe(kind, key)
                raise KeyError(f"{what} not found{where}")
            meta.setdefault("uid", prev["metadata"]["uid"])
            meta.setdefault("creationTimestamp", prev["metadata"]["creationTimestamp"])
            if kind.generation:
                old = int(prev["metadata"].get("generation", 1))
                meta["generation"] = old + (obj.get("spec") != prev.get("spec"))
            rv = self._bump()
            meta["resourceVersion"] = str(rv)
            store[key] = obj
            self._record(_Change(kind, rv, prev, obj))
            return copy.deepcopy(obj)

    def _delete(self, kind: _Kind, namespace: str, name: str) -> None:
        key = (namespace if kind.namespaced else "", name)
        with self._lock:
            prev = self._objects[kind.resource].pop(key, None)
            if prev is None:
                what, where = self._describe(kind, key)
                raise KeyError(f"{what} not found{where}")
            self._record(_Change(kind, self._bump(), prev, None))

    def _stored(self, kind: _Kind, selector: Selector = ()) -> list[JSON]:
        """Deep copies of the stored objects of a kind matching `selector`, in key order."""
        with self._lock:
            store = self._objects[kind.resource]
            return [copy.deepcopy(store[k]) for k in sorted(store)
                    if _matches(store[k], selector)]

    def _bump(self) -> int:
        self._rv += 1
        return self._rv

    def _record(self, change: _Change) -> None:
        """Log a change and deliver it to every open watch (caller holds the lock): as an
        event where the watch's resource and selector see it, else as progress."""
        self._log.append(change)
        if len(self._log) > self.max_events:
            drop = len(self._log) // 2
            self._compacted_rv = self._log[drop - 1].rv
            del self._log[:drop]
        for watch in self._watches:
            event = change.project(watch.selector) if change.kind is watch.kind else None
            kind: Literal["event", "progress"] = "progress" if event is None else "event"
            self._post(watch, _Item(kind, change.rv, event))

    def _progress_all(self) -> None:
        for watch in self._watches:
            self._post(watch, _Item("progress", self._rv))

    def _post(self, watch: _Watch, item: _Item) -> None:
        """Hand an item to a watch on the server loop; calls made in order arrive in order."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed: nobody to tell
            loop.call_soon_threadsafe(self._deliver, watch, item)

    @staticmethod
    def _deliver(watch: _Watch, item: _Item) -> None:
        watch.queue.put_nowait(item)
        if item.kind == "abort" and watch.request.transport is not None:
            watch.request.transport.abort()

    # -- faults ---------------------------------------------------------------------------

    def compact(self) -> None:
        """Forget the event log: any RV before now is too old; open watches get 410 and end."""
        with self._lock:
            self._log.clear()
            self._compacted_rv = self._rv
            for watch in self._watches:
                self._post(watch, _Item("expire", self._compacted_rv))

    def set_outage(self, on: bool, *, status: int = 500, retry_after: int | None = None) -> None:
        """While on, answer every request with HTTP `status` and a Status body; cut watches.

        `retry_after` adds a `Retry-After` header (the apiserver sends `1` with its 429s).
        Beware: urllib3's default `Retry(total=3)`, which the kubernetes client uses, silently
        retries 413/429/503 answers that carry Retry-After, sleeping that long each time.
        """
        with self._lock:
            self._outage = status if on else None
            self._retry_after = retry_after
        if on:
            self.drop_watches()

    def drop_watches(self) -> None:
        """Abort every open watch connection (no ERROR line, no terminating chunk)."""
        with self._lock:
            for watch in self._watches:
                self._post(watch, _Item("abort"))

    def set_delay(self, seconds: float) -> None:
        """Wait `seconds` before every response starts (0 to turn off)."""
        self._delay = seconds

    # -- HTTP -----------------------------------------------------------------------------

    async def _serve(self) -> str:
        app = web.Application(middlewares=[self._middleware])
        for kind in KINDS:
            if kind is RESOURCE_SLICES and not self.serve_dra:
                continue  # a cluster without resource.k8s.io/v1: 404 like any unknown path
            app.router.add_get(kind.path, self._collection_handler(kind))
        app.router.add_get(NODE_PREFIX + "{name}", self._handle_node)
        # handler_cancellation: a watch whose client hung up ends at once (open_watches drops),
        # as the apiserver's request context is cancelled on disconnect.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0,
                               handler_cancellation=True, handle_signals=False)
        await runner.setup()
        context = None
        if self._tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self._tls)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self._runner = runner
        host, port = runner.addresses[0][:2]
        return f"{'https' if context is not None else 'http'}://{host}:{port}"

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append((request.method, request.path, query))
        kind = next((k for k in KINDS if k.path == request.path), None)
        if kind is not None:
            try:
                watching = _parse_bool(query.get("watch"))
            except ValueError:
                watching = False
            page = "continue" if query.get("continue") and not watching else ""
            self.stats[kind.stat_prefix + (page or ("watch" if watching else "list"))] += 1
        elif request.path.startswith(NODE_PREFIX):
            self.stats["node"] += 1
        if self._delay > 0:
            await asyncio.sleep(self._delay)
        with self._lock:
            outage, retry_after = self._outage, self._retry_after
        if outage is not None:
            self.stats["outage_responses"] += 1
            return _status_response(outage, retry_after=retry_after)
        try:
            return await handler(request)
        except web.HTTPException as exc:
            return _status_response(exc.status, reason=exc.reason if exc.status not in _REASONS
                                    else None)

    async def _handle_node(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        with self._lock:
            if name != self.node_name:
                return _status_response(404, f'nodes "{name}" not found',
                                        details={"name": name, "kind": "nodes"})
            node: JSON = {
                "kind": "Node",
                "apiVersion": "v1",
                "metadata": {
                    "name": self.node_name,
                    "uid": self._node_uid,
                    "resourceVersion": str(self._node_rv),
                    "creationTimestamp": self._node_created,
                    "labels": dict(self._node_labels),
                },
                "spec": {},
                "status": {
                    "capacity": dict(self._allocatable),
                    "allocatable": dict(self._allocatable),
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                    "message": "kubelet is posting ready status"}],
                },
            }
        return web.json_response(node)

    def _collection_handler(self, kind: _Kind) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle_collection(kind, request)
        return handle

    async def _handle_collection(self, kind: _Kind, request: web.Request) -> web.StreamResponse:
        query = request.query
        try:
            selector = kind.parse_selector(query.get("fieldSelector", ""))
        except ValueError as exc:
            return _status_response(400, str(exc))
        try:
            watching = _parse_bool(query.get("watch"))
            bookmarks = _parse_bool(query.get("allowWatchBookmarks"))
            timeout_param = query.get("timeoutSeconds")
            timeout = int(timeout_param) if timeout_param else None
        except ValueError as exc:
            return _status_response(400, str(exc))
        if watching:
            return await self._watch(request, kind, selector, query.get("resourceVersion", ""),
                                     bookmarks, timeout)
        try:
            limit = int(query.get("limit") or 0)
        except ValueError as exc:
            return _status_response(400, str(exc))
        token = query.get("continue", "")
        with self._lock:
            if token:
                snapshot = self._snapshots.pop(token, None)
                if snapshot is None or snapshot[0] < self._compacted_rv:
                    return _status_response(410, (
                        "The provided continue parameter is too old to display a consistent "
                        "list result. You can start a new list without the continue parameter, "
                        "or use the continue token in this response to retrieve the remainder "
                        "of the results. Continuing with the provided token results in an "
                        "inconsistent list - objects that were created, modified, or deleted "
                        "between the time the first chunk was returned and now may show up in "
                        "the list."))
                rv, items = snapshot
            else:
                items, rv = self._stored(kind, selector), self._rv
            metadata: JSON = {"resourceVersion": str(rv)}
            if 0 < limit < len(items):
                following = str(uuid.uuid4())
                self._snapshots[following] = (rv, items[limit:])
                items = items[:limit]
                metadata["continue"] = following
                metadata["remainingItemCount"] = len(self._snapshots[following][1])
        return web.json_response({"kind": kind.list_kind, "apiVersion": kind.api_version,
                                  "metadata": metadata, "items": items})

    async def _watch(self, request: web.Request, kind: _Kind, selector: Selector,
                     rv_param: str, bookmarks: bool, timeout: int | None) -> web.StreamResponse:
        try:
            since = int(rv_param) if rv_param not in ("", "0") else None
        except ValueError:
            return _status_response(400, f'resourceVersion: Invalid value: "{rv_param}"')
        watch: _Watch | None = None
        with self._lock:  # snapshot + registration are atomic w.r.t. mutations and faults
            if self._outage is not None:  # switched on since the middleware looked
                self.stats["outage_responses"] += 1
                return _status_response(self._outage, retry_after=self._retry_after)
            if since is None:
                first = [{"type": "ADDED", "object": kind.with_kind(obj)}
                         for obj in self._stored(kind, selector)]
            elif since < self._compacted_rv:
                first = [{"type": "ERROR", "object": status_object(
                    410, f"too old resource version: {since} ({self._compacted_rv})")}]
            else:
                first = [e for c in self._log if c.rv > since and c.kind is kind
                         if (e := c.project(selector)) is not None]
            if since is None or since >= self._compacted_rv:
                watch = _Watch(request, kind, selector, max(since or 0, self._rv))
                self._watches.add(watch)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        if watch is None:  # expired: HTTP 200, one ERROR line, clean end
            await resp.prepare(request)
            await resp.write(json.dumps(first[0]).encode() + b"\n")
            await resp.write_eof()
            return resp
        self.stats["open_watches"] += 1
        try:
            await resp.prepare(request)
            await self._stream(resp, watch, first, bookmarks, timeout)
        except ConnectionError:
            pass  # aborted by us or the client went away; aiohttp's write_eof fails quietly
        finally:
            with self._lock:
                self._watches.discard(watch)
            self.stats["open_watches"] -= 1
        return resp

    async def _stream(self, resp: web.StreamResponse, watch: _Watch, first: list[JSON],
                      bookmarks: bool, timeout: int | None) -> None:
        loop = asyncio.get_running_loop()
        for event in first:
            await resp.write(json.dumps(event).encode() + b"\n")
        deadline = loop.time() + timeout if timeout is not None else None
        next_bookmark = loop.time() + self.bookmark_interval if bookmarks else None
        getter: asyncio.Task[_Item] = asyncio.ensure_future(watch.queue.get())
        try:
            while True:
                wakeups = [t for t in (deadline, next_bookmark) if t is not None]
                wait = max(0.0, min(wakeups) - loop.time()) if wakeups else None
                done, _ = await asyncio.wait({getter}, timeout=wait)
                if not done:
                    now = loop.time()
                    if deadline is not None and now >= deadline:
                        await resp.write_eof()
                        return
                    if next_bookmark is not None and now >= next_bookmark:
                        await resp.write(json.dumps({"type": "BOOKMARK", "object": {
                            "kind": watch.kind.kind, "apiVersion": watch.kind.api_version,
                            "metadata": {"resourceVersion": str(watch.progress_rv)}}}).encode()
                            + b"\n")
                        next_bookmark = now + self.bookmark_interval
                    continue
                item = getter.result()
                getter = asyncio.ensure_future(watch.queue.get())
                if item.kind == "event" and item.event is not None:
                    watch.progress_rv = max(watch.progress_rv, item.rv)
                    await resp.write(json.dumps(item.event).encode() + b"\n")
                elif item.kind == "progress":
                    watch.progress_rv = max(watch.progress_rv, item.rv)
                elif item.kind == "expire":
                    await resp.write(json.dumps({"type": "ERROR", "object": status_object(
                        410, f"too old resource version: {watch.progress_rv} ({item.rv})")}
                    ).encode() + b"\n")
                    await resp.write_eof()
                    return
                elif item.kind == "close":
                    await resp.write_eof()
                    return
                elif item.kind == "abort":
                    raise ConnectionResetError("watch aborted by the fake apiserver")
        finally:
            getter.cancel()
