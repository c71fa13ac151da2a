"""One list-then-watch of one kind of object on this node, kept current from a thread.

Like client-go's reflector: list once, then watch from the list's resourceVersion with bookmarks
on, resuming from the last resourceVersion seen whenever a watch ends; re-list only on 410 Gone.
Errors back off exponentially with jitter; meanwhile the last known objects are kept. The pod
watch (exporter.kube.pods) and the ResourceSlice watch (exporter.kube.slices) are two of these:
each is one list and one watch on the API server, whatever the node does.

What is kept of each object is the subclass's choice (`keep`): the pod watch keeps pods, the
slice watch only the few attributes it resolves devices by, so memory follows what is used, not
what the API server sends.

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
from typing import Any, Generic, TypeVar

from exporter import logs

log = logs.get("kubernetes")

T = TypeVar("T")


class ApiError(Exception):
    """The API server answered with an error, or with something that is not the API."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        """The HTTP status, where the server answered with one."""


class Gone(Exception):
    """410 Gone: the resourceVersion we resume from is too old; list again."""


class _Stopped(Exception):
    """stop() was called: end the watch thread quietly (no error counted, nothing logged)."""


class Reflector(Generic[T]):
    """This node's objects of one kind (`field_selector` spec.nodeName=<node>), current from a
    background thread. Subclasses say what to keep of each object (`keep`), may read more after
    each list (`after_list`), and explain errors of their own (`explain`)."""

    kind = "object"
    """What one object is called in the log, e.g. "pod"."""

    def __init__(self, list_call: Callable[..., Any], node_name: str, *,
                 watch_timeout_seconds: float = 300.0, backoff_base_seconds: float = 0.5,
                 backoff_max_seconds: float = 30.0, rng: random.Random | None = None) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        self._iter_lines: Callable[[Any], Iterable[str]] = iter_resp_lines
        self._list_call = list_call
        self._node = node_name
        self._selector = f"spec.nodeName={node_name}"
        self._watch_timeout = watch_timeout_seconds
        self._backoff = (backoff_base_seconds, backoff_max_seconds)
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._items: dict[str, T] = {}
        self._version = 0
        """Bumped whenever `_items` changes, so that what is derived from them is cached."""
        self._up = False
        self._synced = False
        self._errors = 0
        self._malformed = 0
        self._rv: str | None = None
        self._response: Any = None
        self._throttle = logs.Throttle(log)
        self._thread = threading.Thread(target=self._run, name=f"{self.kind}-watch",
                                        daemon=True)
        self.lists = 0
        self.watches = 0

    # -- what subclasses decide ------------------------------------------------------------

    def keep(self, obj: Mapping[str, Any]) -> T:
        """What is kept of one object the API sent (its uid is known to be there)."""
        raise NotImplementedError

    def after_list(self) -> None:
        """Called in the watch thread after each successful list, outside the lock."""

    def explain(self, exc: BaseException) -> str:
        """One line on a failed request, with the fix where one is known."""
        return _describe(exc)

    def retry_floor(self, exc: BaseException) -> float:
        """The least wait before retrying after `exc` (an answer that will not change soon)."""
        return 0.0

    # -- lifecycle -------------------------------------------------------------------------

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

    # -- the watch thread ------------------------------------------------------------------

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
                log.info(f"{self.kind} watch expired (410 Gone): listing again")
                self._rv = None
            except Exception as exc:
                if self._stopping.is_set():  # _Stopped, or a read cut short by stop()
                    break
                with self._lock:
                    self._up = False
                    self._errors += 1
                    known = len(self._items)
                wait = max(delay * self._rng.uniform(0.5, 1.5), self.retry_floor(exc))
                self._throttle.fault("api", f"Kubernetes API ({self.kind}s): "
                                            f"{self.explain(exc)}; keeping the last known "
                                            f"{known} {self.kind}s, retrying in {wait:.1f} s")
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
            raise ApiError(f"HTTP {response.status}: {_status_message(body)}", response.status)
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
        response = self._request(self._list_call, field_selector=self._selector,
                                 _request_timeout=(10, 60))
        try:
            data = json.loads(response.data)
        except ValueError:
            raise ApiError(f"the {self.kind} list is not JSON: is the server a Kubernetes "
                           "API?") from None
        finally:
            self._done(response)
        rv = (data.get("metadata") or {}).get("resourceVersion")
        if not isinstance(rv, str) or not isinstance(data.get("items"), list):
            raise ApiError(f"the {self.kind} list has no resourceVersion or items")
        items: dict[str, T] = {}
        for item in data["items"]:
            uid = _uid(item)
            if uid is None:
                self._note_malformed(item)
                continue
            items[uid] = self.keep(item)
        del data  # the parsed list, before the node is read
        with self._lock:
            self._items = items
            self._version += 1
        self.after_list()
        with self._lock:
            self._up = True
            self._synced = True
        self._rv = rv
        self.lists += 1
        self._throttle.recovered("api", f"Kubernetes API reachable again: {len(items)} "
                                        f"{self.kind}s")
        log.debug(f"listed {len(items)} {self.kind}s on {self._node} at resourceVersion {rv}")

    def _watch(self) -> None:
        timeout = int(self._watch_timeout * self._rng.uniform(1.0, 2.0))
        response = self._request(
            self._list_call, field_selector=self._selector, watch=True,
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
        elif kind == "DELETED":
            with self._lock:
                self._items.pop(uid, None)
                self._version += 1
        else:
            kept = self.keep(obj)
            with self._lock:
                self._items[uid] = kept
                self._version += 1
        if isinstance(rv, str):
            self._rv = rv

    def _note_malformed(self, obj: object) -> None:
        with self._lock:
            self._malformed += 1
        self._throttle.fault("malformed", f"skipped a {self.kind} without metadata.uid: "
                                          f"{str(obj)[:120]}")


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an API error carries: ours (ApiError) or the client's ApiException,
    which it raises itself for a non-2xx answer."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


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
