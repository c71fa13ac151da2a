"""A protocol-faithful fake Kubernetes API server for the pod-watcher tests.

`FakeKubeAPI` serves plain HTTP on 127.0.0.1 (or HTTPS, as a real apiserver does, given
`tls_cert`/`tls_key` and the `tls_ca` that signed them) from its own thread and asyncio event
loop, so the real `kubernetes` client (or aiohttp, or a subprocess given `write_kubeconfig()`)
can talk to it while synchronous or async test code mutates its state. It reproduces these
behaviours of a real kube-apiserver (watch cache enabled, JSON only):

* `GET /api/v1/pods` lists pods of all namespaces as a `PodList` whose
  `metadata.resourceVersion` is the current global RV; items are ordered by namespace/name
  (etcd key order) and carry their own `metadata.resourceVersion`. `fieldSelector` supports
  `spec.nodeName=<node>` (also `==`) and nothing else: any other field label is answered
  400 `BadRequest` like the apiserver's "field label not supported". `labelSelector`,
  `limit`, `continue` and `resourceVersion` of a list are accepted and ignored (never
  paginates).
* The same path with `watch=true|1|True` streams HTTP 200, chunked, `application/json`, one
  `{"type": ..., "object": ...}` JSON document per line; objects carry `kind`/`apiVersion`.
  Watching from `resourceVersion=N` replays every logged event with RV > N before streaming
  live ones, atomically (no gap, no duplicate). A missing or `"0"` RV starts at "now" with a
  synthetic `ADDED` per current pod. An RV older than the compaction horizon gets HTTP 200
  followed by a single in-stream `ERROR` event holding a 410 `Expired` Status ("too old
  resource version: N (oldest)") and the end of the stream, exactly like the watch cache.
  (Not reproduced: an RV from the future is simply waited for, where the apiserver would
  answer "Too large resource version" after 3 s.)
* Field-selector transitions are reported like the watch cache's `cacheWatcher` does: an
  object that starts matching (an unscheduled pod bound to the node) arrives as `ADDED`, one
  that stops matching as `DELETED` (previous content, new RV); `DELETED` of a pod carries
  its last state with the deletion's RV.
* `allowWatchBookmarks=true` adds a `BOOKMARK` event (an object with only `kind`,
  `apiVersion` and `metadata.resourceVersion`) every `bookmark_interval` seconds. Its RV
  never runs ahead of the events already written to that stream, but does advance past
  mutations that did not match the selector (other nodes, node label changes).
* `timeoutSeconds=N` ends the stream cleanly (terminating chunk) after N seconds.
* `GET /api/v1/nodes/<name>` returns the Node (labels, capacity, allocatable, Ready
  condition); any other name is a 404 `NotFound` Status. Unknown paths are 404 and other
  methods 405, both as Status objects.
* One global, monotonically increasing resourceVersion (decimal string) is bumped by every
  mutation; pods get `metadata.uid`, `namespace` ("default"), `creationTimestamp` and
  `resourceVersion` on create, keep uid/creationTimestamp across replacements, and get
  `spec.containers: []` if they have none (so the client's models accept them).

Faults, for testing the client's recovery: `compact()` (every older RV becomes too old and
every open watch gets the in-stream 410 and ends), automatic compaction of the oldest half
of the event log beyond `max_events`, `set_outage()` (every request answered with a real
apiserver error Status of the chosen HTTP code, open watches cut abruptly with no ERROR
line), `drop_watches()` (transport aborted mid-stream, so the client sees a broken chunked
body), and `set_delay()` (latency before every response starts).

`stats` counts requests as received (including those answered with an outage error):
`list` (pod lists without watch), `watch` (pod watch requests), `node` (node GETs),
`open_watches` (streams currently open) and `outage_responses`; `requests` records every
request as `(method, path, query)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import ssl
import threading
import uuid
from collections.abc import Awaitable, Callable
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
NODE_PREFIX = "/api/v1/nodes/"
TOKEN = "fake-token"

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


def _parse_node_selector(selector: str) -> str | None:
    """`spec.nodeName=<node>` -> node; empty -> None (all pods); otherwise ValueError."""
    if selector == "":
        return None
    key, sep, value = selector.partition("==")
    if not sep:
        key, sep, value = selector.partition("=")
    if not sep or key.strip() != "spec.nodeName" or "," in value or "=" in value:
        raise ValueError(f'field label not supported: "{selector}"')
    return value.strip()


def _node_of(pod: JSON) -> str:
    spec = pod.get("spec") or {}
    return str(spec.get("nodeName") or "")


def _matches(pod: JSON | None, node: str | None) -> bool:
    return pod is not None and (node is None or _node_of(pod) == node)


def _with_kind(pod: JSON) -> JSON:
    obj = copy.deepcopy(pod)
    return {"kind": "Pod", "apiVersion": "v1", **obj}


def _with_rv(pod: JSON, rv: int) -> JSON:
    obj = copy.deepcopy(pod)
    obj.setdefault("metadata", {})["resourceVersion"] = str(rv)
    return obj


@dataclass(frozen=True)
class _Change:
    """One logged mutation: the object before (None on create) and after (None on delete)."""

    rv: int
    prev: JSON | None
    cur: JSON | None

    def project(self, node: str | None) -> JSON | None:
        """The watch event a watcher with this node selector sees, as the watch cache does."""
        was, now = _matches(self.prev, node), _matches(self.cur, node)
        if now and self.cur is not None:
            return {"type": "MODIFIED" if was else "ADDED", "object": _with_kind(self.cur)}
        if was and self.prev is not None:
            return {"type": "DELETED", "object": _with_kind(_with_rv(self.prev, self.rv))}
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
    node: str | None
    progress_rv: int
    queue: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)


class FakeKubeAPI:
    """A fake kube-apiserver for one node, served from a background thread (see module doc)."""

    def __init__(self, *, node_name: str = "node-a", node_labels: dict[str, str] | None = None,
                 allocatable_cpu: str = "16", allocatable_memory: str = "64Gi",
                 bookmark_interval: float = 1.0, max_events: int = 100_000,
                 tls_cert: Path | None = None, tls_key: Path | None = None,
                 tls_ca: Path | None = None) -> None:
        if (tls_cert is None) != (tls_key is None) or (tls_ca is not None and tls_cert is None):
            raise ValueError("HTTPS needs tls_cert and tls_key (and tls_ca for the kubeconfig)")
        self.node_name = node_name
        self._tls = (tls_cert, tls_key) if tls_cert is not None and tls_key is not None else None
        self._tls_ca = tls_ca
        self.bookmark_interval = bookmark_interval
        self.max_events = max_events
        self._lock = threading.RLock()
        self._rv = 1
        self._compacted_rv = 0
        self._log: list[_Change] = []
        self._pods: dict[tuple[str, str], JSON] = {}
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
        }
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
        obj = copy.deepcopy(pod)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            raise ValueError("pod needs metadata.name")
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        spec = obj.setdefault("spec", {})
        spec.setdefault("containers", [])
        key = (meta["namespace"], meta["name"])
        with self._lock:
            if key in self._pods:
                raise ValueError(f'pods "{key[1]}" already exists in namespace "{key[0]}"')
            rv = self._bump()
            meta["resourceVersion"] = str(rv)
            self._pods[key] = obj
            self._record(_Change(rv, None, obj))
            return copy.deepcopy(obj)

    def modify_pod(self, namespace: str, name: str, pod: dict[str, Any]) -> dict[str, Any]:
        """Replace a pod (uid/creationTimestamp kept unless given); emits MODIFIED."""
        obj = copy.deepcopy(pod)
        meta = obj.setdefault("metadata", {})
        meta["namespace"], meta["name"] = namespace, name
        obj.setdefault("spec", {}).setdefault("containers", [])
        with self._lock:
            prev = self._pods.get((namespace, name))
            if prev is None:
                raise KeyError(f'pods "{name}" not found in namespace "{namespace}"')
            meta.setdefault("uid", prev["metadata"]["uid"])
            meta.setdefault("creationTimestamp", prev["metadata"]["creationTimestamp"])
            rv = self._bump()
            meta["resourceVersion"] = str(rv)
            self._pods[(namespace, name)] = obj
            self._record(_Change(rv, prev, obj))
            return copy.deepcopy(obj)

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod; emits DELETED with its last state and the deletion's RV."""
        with self._lock:
            prev = self._pods.pop((namespace, name), None)
            if prev is None:
                raise KeyError(f'pods "{name}" not found in namespace "{namespace}"')
            self._record(_Change(self._bump(), prev, None))

    def pods(self) -> list[dict[str, Any]]:
        """Deep copies of the stored pods, in namespace/name order."""
        with self._lock:
            return [copy.deepcopy(self._pods[k]) for k in sorted(self._pods)]

    def set_node_labels(self, labels: dict[str, str]) -> None:
        """Replace the node's labels (bumps the RV; no pod event)."""
        with self._lock:
            self._node_labels = dict(labels)
            self._node_rv = self._bump()
            self._progress_all()

    def _bump(self) -> int:
        self._rv += 1
        return self._rv

    def _record(self, change: _Change) -> None:
        """Log a change and deliver it to every open watch (caller holds the lock)."""
        self._log.append(change)
        if len(self._log) > self.max_events:
            drop = len(self._log) // 2
            self._compacted_rv = self._log[drop - 1].rv
            del self._log[:drop]
        for watch in self._watches:
            event = change.project(watch.node)
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
        app.router.add_get(POD_PATH, self._handle_pods)
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
        if request.path == POD_PATH:
            try:
                watching = _parse_bool(query.get("watch"))
            except ValueError:
                watching = False
            self.stats["watch" if watching else "list"] += 1
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

    async def _handle_pods(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        try:
            node = _parse_node_selector(query.get("fieldSelector", ""))
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
            return await self._watch(request, node, query.get("resourceVersion", ""),
                                     bookmarks, timeout)
        with self._lock:
            items = [copy.deepcopy(p) for k, p in sorted(self._pods.items())
                     if _matches(p, node)]
            rv = self._rv
        return web.json_response({"kind": "PodList", "apiVersion": "v1",
                                  "metadata": {"resourceVersion": str(rv)}, "items": items})

    async def _watch(self, request: web.Request, node: str | None, rv_param: str,
                     bookmarks: bool, timeout: int | None) -> web.StreamResponse:
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
                first = [{"type": "ADDED", "object": _with_kind(p)}
                         for _, p in sorted(self._pods.items()) if _matches(p, node)]
            elif since < self._compacted_rv:
                first = [{"type": "ERROR", "object": status_object(
                    410, f"too old resource version: {since} ({self._compacted_rv})")}]
            else:
                first = [e for c in self._log if c.rv > since
                         if (e := c.project(node)) is not None]
            if since is None or since >= self._compacted_rv:
                watch = _Watch(request, node, max(since or 0, self._rv))
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
                            "kind": "Pod", "apiVersion": "v1",
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
