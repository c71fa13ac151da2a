"""The pods of this node, kept by one list-then-watch, and the node's own labels.

Like client-go's reflector: list once, then watch from the list's resourceVersion with bookmarks
on, resuming from the last resourceVersion seen whenever a watch ends; re-list only on 410 Gone.
Errors back off exponentially with jitter; meanwhile the last known pods are kept.

`stop()` never waits on a response's reader: a read blocked in the watch thread holds the
reader's lock until the next byte arrives, which on a quiet watch can be minutes. It shuts the
socket under the response down instead, which wakes that read at once (TLS included).
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from exporter import logs

log = logs.get("kubernetes")

Pod = Mapping[str, Any]


class ApiError(Exception):
    """The API server answered with an error, or with something that is not the API."""


class Gone(Exception):
    """410 Gone: the resourceVersion we resume from is too old; list again."""


class _Stopped(Exception):
    """stop() was called: end the watch thread quietly (no error counted, nothing logged)."""


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What the Node object says about this node."""

    labels: Mapping[str, str]
    allocatable_cores: float
    provider_id: str = ""
    """spec.providerID, e.g. aws:///us-east-1a/i-0abc, gce://project/zone/name, azure:///..."""


@dataclass(frozen=True, slots=True)
class PodView:
    """What a tick sees: the pods as last known, and whether the API is reachable."""

    pods: tuple[Pod, ...] = ()
    node: NodeFacts | None = None
    up: bool = False
    synced: bool = False
    """A list has completed at least once (before that, no pod is known)."""
    api_errors: int = 0
    """Failed requests since start (a counter)."""
    malformed: int = 0
    """Objects the API sent that are not pods (skipped), since start (a counter)."""


def parse_cpu_quantity(text: object) -> float:
    """Kubernetes CPU quantity ("2", "1500m", "0.5", "250u"...) in cores; ValueError if not one."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    if not isinstance(text, str) or not text:
        raise ValueError(f"not a CPU quantity: {text!r}")
    scale = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}.get(text[-1])
    number = text[:-1] if scale is not None else text
    value = float(number) * (scale or 1.0)
    if not value >= 0.0 or value == float("inf"):
        raise ValueError(f"not a CPU quantity: {text!r}")
    return value


def node_facts(node: Mapping[str, Any]) -> NodeFacts:
    metadata = node.get("metadata") or {}
    labels = metadata.get("labels") or {}
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    try:
        cores = parse_cpu_quantity(allocatable.get("cpu", "0"))
    except ValueError:
        cores = 0.0
    provider_id = (node.get("spec") or {}).get("providerID") or ""
    return NodeFacts(labels={str(k): str(v) for k, v in labels.items()}, allocatable_cores=cores,
                     provider_id=str(provider_id))


class PodWatcher:
    """Keeps this node's pods current from a background thread; `view()` is cheap and safe."""

    def __init__(self, api: Any, node_name: str, *, watch_timeout_seconds: float = 300.0,
                 backoff_base_seconds: float = 0.5, backoff_max_seconds: float = 30.0,
                 rng: random.Random | None = None) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        self._iter_lines: Callable[[Any], Iterable[str]] = iter_resp_lines
        self._api = api
        self._node = node_name
        self._selector = f"spec.nodeName={node_name}"
        self._watch_timeout = watch_timeout_seconds
        self._backoff = (backoff_base_seconds, backoff_max_seconds)
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._pods: dict[str, Pod] = {}
        self._node_facts: NodeFacts | None = None
        self._up = False
        self._synced = False
        self._errors = 0
        self._malformed = 0
        self._rv: str | None = None
        self._response: Any = None
        self._throttle = logs.Throttle(log)
        self._thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)
        self.lists = 0
        self.watches = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the watch thread; wait for it at most `timeout` seconds (it is a daemon).

        The response being read (a watch, or a list or node body) is interrupted by shutting
        its socket down, never by closing it: closing waits for the reader's lock, which the
        watch thread holds until the server sends something. A request still waiting for its
        response headers cannot be reached; the join's timeout bounds it."""
        self._stopping.set()
        _interrupt(self._response)  # set before reading: see _request for the other half
        self._thread.join(timeout)

    def view(self) -> PodView:
        with self._lock:
            return PodView(pods=tuple(self._pods.values()), node=self._node_facts,
                           up=self._up, synced=self._synced, api_errors=self._errors,
                           malformed=self._malformed)

    def _run(self) -> None:
        delay = self._backoff[0]
        while not self._stopping.is_set():
            try:
                if self._rv is None:
                    self._list()
                self._watch()
                delay = self._backoff[0]
            except Gone:
                if self._stopping.is_set():
                    break
                log.info("pod watch expired (410 Gone): listing again")
                self._rv = None
            except Exception as exc:
                if self._stopping.is_set():  # _Stopped, or a read cut short by stop()
                    break
                with self._lock:
                    self._up = False
                    self._errors += 1
                    known = len(self._pods)
                wait = delay * self._rng.uniform(0.5, 1.5)
                self._throttle.fault("api", f"Kubernetes API: {_describe(exc)}; keeping the "
                                            f"last known {known} pods, retrying in {wait:.1f} s")
                self._stopping.wait(wait)
                delay = min(delay * 2, self._backoff[1])

    def _request(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        """The response, its headers read; its body is read by the caller, who hands it back
        with `_done`. Published in `self._response` so that stop() can interrupt it."""
        if self._stopping.is_set():
            raise _Stopped()
        response = call(*args, _preload_content=False, **kwargs)
        self._response = response
        # stop() sets _stopping, then reads _response; this stores _response, then reads
        # _stopping: either stop() interrupts this response, or this sees the stop.
        if self._stopping.is_set():
            self._done(response)
            raise _Stopped()
        if not 200 <= response.status <= 299:
            try:
                body = response.data[:300].decode("utf-8", "replace")
            finally:
                self._done(response)
            raise ApiError(f"HTTP {response.status}: {_status_message(body)}")
        return response

    def _done(self, response: Any) -> None:
        """Give the connection back to the pool, or close it once stopping (stop() may have
        shut its socket down). Only the watch thread calls this: the reader's lock is free."""
        self._response = None
        if self._stopping.is_set():
            with contextlib.suppress(Exception):
                response.close()
        else:
            response.release_conn()

    def _list(self) -> None:
        response = self._request(self._api.list_pod_for_all_namespaces,
                                 field_selector=self._selector, _request_timeout=(10, 60))
        try:
            data = json.loads(response.data)
        except ValueError:
            raise ApiError("the pod list is not JSON: is the server a Kubernetes API?") from None
        finally:
            self._done(response)
        rv = (data.get("metadata") or {}).get("resourceVersion")
        if not isinstance(rv, str) or not isinstance(data.get("items"), list):
            raise ApiError("the pod list has no resourceVersion or items")
        pods = {}
        for item in data["items"]:
            uid = _uid(item)
            if uid is None:
                self._note_malformed(item)
                continue
            pods[uid] = item
        facts = self._read_node()
        with self._lock:
            self._pods = pods
            self._node_facts = facts or self._node_facts
            self._up = True
            self._synced = True
        self._rv = rv
        self.lists += 1
        self._throttle.recovered("api", f"Kubernetes API reachable again: {len(pods)} pods")
        log.debug(f"listed {len(pods)} pods on {self._node} at resourceVersion {rv}")

    def _read_node(self) -> NodeFacts | None:
        try:
            response = self._request(self._api.read_node, self._node, _request_timeout=(10, 30))
            try:
                return node_facts(json.loads(response.data))
            finally:
                self._done(response)
        except Exception as exc:
            if self._stopping.is_set():
                raise _Stopped() from None
            self._throttle.fault("node", f"cannot read Node {self._node}: {_describe(exc)}; "
                                         "zone, region and allocatable CPU stay unknown")
            return None

    def _watch(self) -> None:
        timeout = int(self._watch_timeout * self._rng.uniform(1.0, 2.0))
        response = self._request(
            self._api.list_pod_for_all_namespaces, field_selector=self._selector, watch=True,
            resource_version=self._rv, allow_watch_bookmarks=True, timeout_seconds=timeout,
            _request_timeout=(10, timeout + 30))
        self.watches += 1
        try:
            with self._lock:
                self._up = True
            for line in self._iter_lines(response):
                if self._stopping.is_set():
                    return
                self._apply(json.loads(line))
        finally:
            self._done(response)

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(obj, Mapping):
            raise ApiError(f"watch event without an object: {str(event)[:200]}")
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise ApiError(f"watch error {obj.get('code')}: {obj.get('message', '')[:200]}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            if isinstance(rv, str):
                self._rv = rv
            return
        uid = _uid(obj)
        if uid is None or kind not in ("ADDED", "MODIFIED", "DELETED"):
            self._note_malformed(obj)
        else:
            with self._lock:
                if kind == "DELETED":
                    self._pods.pop(uid, None)
                else:
                    self._pods[uid] = obj
        if isinstance(rv, str):
            self._rv = rv

    def _note_malformed(self, obj: object) -> None:
        with self._lock:
            self._malformed += 1
        self._throttle.fault("malformed", "skipped an object without metadata.uid: "
                                          f"{str(obj)[:120]}")


def _socket_of(response: Any) -> socket.socket | None:
    """The TCP socket a urllib3 response reads from, without taking any lock."""
    sock = getattr(getattr(response, "connection", None), "sock", None)  # urllib3 2.x
    if sock is None:  # urllib3 1.x, or a connection already handed back: http.client's reader
        sock = getattr(getattr(getattr(getattr(response, "_fp", None), "fp", None), "raw",
                               None), "_sock", None)
    sock = getattr(sock, "socket", sock)  # urllib3's SSLTransport (TLS in TLS) wraps a socket
    return sock if isinstance(sock, socket.socket) else None


def _interrupt(response: Any) -> None:
    """Wake a read blocked on `response` in another thread: shut its socket down for both
    directions (the blocked recv returns end-of-file; the server sees the client go). The
    plain socket's shutdown is called even on an ssl.SSLSocket, whose own shutdown() would
    also drop its TLS state under the reading thread; the TLS read sees end-of-file too."""
    if response is None:
        return
    sock = _socket_of(response)
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed, or never connected
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _uid(obj: object) -> str | None:
    if not isinstance(obj, Mapping):
        return None
    metadata = obj.get("metadata")
    uid = metadata.get("uid") if isinstance(metadata, Mapping) else None
    return uid if isinstance(uid, str) and uid else None


def _status_message(body: str) -> str:
    try:
        status = json.loads(body)
        return str(status.get("message") or status.get("reason") or body)[:200]
    except ValueError:
        return body[:200]


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]
