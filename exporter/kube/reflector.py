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
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from exporter import boundedjson, logs

log = logs.get("kubernetes")

T = TypeVar("T")

MAX_OBJECT_BYTES = 2 * 1024 * 1024
"""The longest watch line (one event) or list item allowed: etcd refuses objects over 1.5 MiB
(its default --max-request-bytes), so a real API server never sends more than that plus the
event's framing. A longer line ends the watch with an error instead of growing memory."""
FIRST_PAGE = 5
"""Objects in a list's first page (`limit`): the list is read page by page, never whole."""
PAGE_BYTES = 4 * 1024 * 1024
"""What a page's body should hold: each next page asks for as many objects as fit, at the
largest mean object size seen in this list, between 1 and MAX_PAGE. Pods of a few KB are read
500 a page; pods near etcd's 1.5 MiB limit 2 a page, so memory holds one page's body and its
parsed objects at a time, whatever the pods (docs/performance.md#pods)."""
MAX_PAGE = 500
"""client-go's page size."""
_READ = 64 * 1024


class ApiError(Exception):
    """The API server answered with an error, or with something that is not the API."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        """The HTTP status, where the server answered with one."""


class Gone(Exception):
    """410 Gone: the resourceVersion we resume from (or a list's continue token) is too old;
    list again."""


class _Stopped(Exception):
    """stop() was called: end the watch thread quietly (no error counted, nothing logged)."""


class Reflector(Generic[T]):
    """This node's objects of one kind (`field_selector` spec.nodeName=<node>), current from a
    background thread. Subclasses say what to keep of each object (`keep`), may read more after
    each list (`after_list`), and explain errors of their own (`explain`)."""

    kind = "object"
    source = "kubernetes"
    """The `source` field of its log lines (and label of its errors)."""
    """What one object is called in the log, e.g. "pod"."""

    def __init__(self, list_call: Callable[..., Any], node_name: str, *,
                 watch_timeout_seconds: float = 300.0, backoff_base_seconds: float = 0.5,
                 backoff_max_seconds: float = 30.0, rng: random.Random | None = None) -> None:
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
        self._throttle = logs.Throttle(log, source=self.source)
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
                if status_of(exc) == 410:  # a list's continue token expired mid-list
                    log.info(f"{self.kind} list expired (410 Gone): listing again")
                    self._rv = None
                    continue
                with self._lock:
                    self._up = False
                    self._errors += 1
                    known = len(self._items)
                wait = max(delay * self._rng.uniform(0.5, 1.5), self.retry_floor(exc))
                self._throttle.fault("api", f"Kubernetes API ({self.kind}s): "
                                            f"{self.explain(exc)}; keeping the last known "
                                            f"{known} {self.kind}s, retrying in {wait:.1f} s",
                                     err=self.explain(exc))
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

    def _page(self, token: str | None, limit: int
              ) -> tuple[str, str | None, list[Any], int]:
        """One page of the list: its resourceVersion, the next page's continue token, its
        items and its body's size."""
        continued = {"_continue": token} if token else {}
        response = self._request(self._list_call, field_selector=self._selector,
                                 limit=limit, _request_timeout=(10, 60), **continued)
        try:
            body = _read_bounded(response, limit * MAX_OBJECT_BYTES + _READ,
                                 f"a page of the {self.kind} list")
        finally:
            self._done(response)
        size = len(body)
        try:
            data = boundedjson.loads(body, max_bytes=len(body), what=f"the {self.kind} list")
        except boundedjson.JsonError as exc:
            raise ApiError(f"{exc}: is the server a Kubernetes API?") from None
        del body
        metadata = data.get("metadata") if isinstance(data, Mapping) else None
        rv = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
        items = data.get("items") if isinstance(data, Mapping) else None
        if not isinstance(rv, str) or not isinstance(items, list):
            raise ApiError(f"the {self.kind} list has no resourceVersion or items")
        following = metadata.get("continue") if isinstance(metadata, Mapping) else None
        return rv, following if isinstance(following, str) and following else None, items, size

    def _list(self) -> None:
        """List page by page: each page's objects are reduced (`keep`) before the next is read.
        Every page is a snapshot at the first page's resourceVersion; an expired continue token
        (410) lists again from the start."""
        items: dict[str, T] = {}
        largest = 0.0
        rv, token, page, size = self._page(None, FIRST_PAGE)
        while True:
            largest = max(largest, size / max(len(page), 1))
            for item in page:
                uid = _uid(item)
                if uid is None:
                    self._note_malformed(item)
                    continue
                items[uid] = self.keep(item)
            if token is None:
                break
            page = []  # this page's objects go before the next is read
            limit = max(1, min(MAX_PAGE, int(PAGE_BYTES // max(largest, 1.0))))
            _, token, page, size = self._page(token, limit)
        del page
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
            for line in _lines(response, MAX_OBJECT_BYTES, f"{self.kind} watch"):
                if self._stopping.is_set():
                    return
                self._apply(boundedjson.loads(line, max_bytes=MAX_OBJECT_BYTES,
                                              what=f"a {self.kind} watch event"))
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


def _read_bounded(response: Any, limit: int, what: str) -> bytearray:
    """The whole body, or ApiError once it passes `limit` bytes (never read further)."""
    body = bytearray()
    for part in response.stream(_READ, decode_content=True):
        body += part
        if len(body) > limit:
            raise ApiError(f"{what} is over {limit} bytes: not a Kubernetes API server's answer "
                           "(objects are at most 1.5 MiB)")
    return body


def _lines(response: Any, limit: int, what: str) -> Iterator[bytes]:
    """The lines of a streamed body as they arrive, each at most `limit` bytes: a longer one
    raises ApiError instead of being held whole."""
    buffer = bytearray()
    for part in response.stream(_READ, decode_content=True):
        buffer += part
        start = 0
        while (end := buffer.find(b"\n", start)) != -1:
            if end > start:
                yield bytes(buffer[start:end])
            start = end + 1
        del buffer[:start]
        if len(buffer) > limit:
            raise ApiError(f"a {what} line is over {limit} bytes: not a Kubernetes API "
                           "server's event (objects are at most 1.5 MiB); watching again")
    if buffer.strip():
        yield bytes(buffer)


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
