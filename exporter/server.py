"""HTTP: `/metrics` serves the last tick's bytes; `/healthz`, `/readyz` and a landing page.

The HTTP server is aiohttp's, with limits fit for an exporter (docs/web-config.md, "Server
limits"): request line and headers bounded in count, line length and total bytes, a deadline
for a connection's request headers distinct from the keep-alive timeout, and a cap on open
connections. aiohttp has options for the first only: `LimitedConnection`, its per-connection
protocol, adds the others. Connections are accepted by `Listener`, which counts each from its
accept (`ConnectionGuard`: at the cap an idle connection makes room; per-address limit; keep-
alive shortened near the cap) and, with TLS, bounds the handshakes in progress before handing
the connection to asyncio ("Connections at the cap").
"""

from __future__ import annotations

import array
import asyncio
import concurrent.futures
import contextlib
import ctypes
import enum
import errno
import fcntl
import gc
import html
import ipaddress
import math
import signal
import socket
import ssl
import termios
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from exporter import __version__, logs
from exporter.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, Snapshot

log = logs.get("server")
http_log = logs.get("http")

OPENMETRICS_VERSIONS = (None, "1.0.0")


def _media_ranges(header: str) -> list[tuple[str, dict[str, str], float]]:
    ranges = []
    for part in header.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        values = {}
        for param in params:
            key, _, value = param.partition("=")
            values[key.strip().lower()] = value.strip().strip('"')
        try:
            q = float(values.pop("q", "1"))
        except ValueError:
            q = 0.0
        ranges.append((media.lower(), values, q))
    return ranges


def wants_openmetrics(accept: str) -> bool:
    """True when the client's best-rated acceptable format is OpenMetrics 1.0.0 (ties: text)."""
    best_om = best_text = 0.0
    for media, params, q in _media_ranges(accept):
        if media == "application/openmetrics-text":
            if params.get("version") in OPENMETRICS_VERSIONS:
                best_om = max(best_om, q)
        elif media in ("text/plain", "text/*", "*/*"):
            best_text = max(best_text, q)
    return best_om > 0 and best_om > best_text


def accepts_gzip(accept_encoding: str) -> bool:
    return any(media in ("gzip", "*") and q > 0
               for media, _, q in _media_ranges(accept_encoding))


MIN_STALL_SECONDS = 30.0


def stall_threshold(interval_seconds: float) -> float:
    """How long without a completed tick before /healthz fails: three intervals, at least
    30 s (a slow tick on a loaded node is not a hung one)."""
    return max(3 * interval_seconds, MIN_STALL_SECONDS)


class InputRow(Protocol):
    """One row of the landing page's table of inputs (`sampler.InputState`)."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def covers(self) -> str: ...
    @property
    def detail(self) -> str: ...


class Ticker(Protocol):
    """What the server needs of the application's tick (`sampler.Sampler`): this module
    imports nothing from the tick's side."""

    def tick(self) -> Snapshot: ...

    def inputs(self) -> Sequence[InputRow]: ...


@dataclass
class ExporterState:
    """What the handlers read: the sampler's sources and the last snapshot."""

    sampler: Ticker
    telemetry_path: str
    snapshot: Snapshot | None = None
    last_tick: float = field(default_factory=time.monotonic)
    """`time.monotonic()` when the last tick completed (or failed), or run_ticks started."""
    stall_seconds: float | None = None
    """/healthz fails when `last_tick` is older than this; None: it never fails."""

    def stalled(self, now: float | None = None) -> float | None:
        """Seconds since the last tick completed, when that is over `stall_seconds`."""
        if self.stall_seconds is None:
            return None
        age = (time.monotonic() if now is None else now) - self.last_tick
        return age if age > self.stall_seconds else None


STATE = web.AppKey("state", ExporterState)


async def metrics(request: web.Request) -> web.Response:
    snapshot = request.app[STATE].snapshot
    if snapshot is None:
        return web.Response(status=503, text="no tick has completed yet\n")
    openmetrics = wants_openmetrics(request.headers.get("Accept", ""))
    gzipped = accepts_gzip(request.headers.get("Accept-Encoding", ""))
    headers = {
        "Content-Type": OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE,
        "Vary": "Accept, Accept-Encoding",
    }
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    if snapshot.rendered:
        body = snapshot.body(openmetrics=openmetrics, gzipped=gzipped)
    else:  # the first scrape since the tick renders it, off the event loop
        body = await asyncio.to_thread(snapshot.body, openmetrics=openmetrics, gzipped=gzipped)
    return web.Response(body=body, headers=headers)


async def healthz(request: web.Request) -> web.Response:
    """Liveness: 503 once no tick has completed for `stall_seconds` (a hung read, a deadlock),
    so that the kubelet restarts the pod."""
    state = request.app[STATE]
    age = state.stalled()
    if age is not None:
        return web.Response(status=503, text=f"tick loop stalled: no tick completed for "
                                             f"{age:.0f} s (limit {state.stall_seconds:g} s)\n")
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    if request.app[STATE].snapshot is None:
        return web.Response(status=503, text="waiting for the first tick\n")
    return web.Response(text="ready\n")


async def landing(request: web.Request) -> web.Response:
    state = request.app[STATE]
    rows = "".join(
        f"<tr><td>{html.escape(row.name)}</td><td>{html.escape(row.state)}</td>"
        f"<td>{html.escape(row.covers)}</td><td>{html.escape(row.detail)}</td></tr>"
        for row in state.sampler.inputs())
    path = html.escape(state.telemetry_path)
    body = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Footprint exporter</title>"
        "</head><body><h1>Footprint exporter</h1>"
        f"<p>Version {html.escape(__version__)}. Energy and CO2e of this node's workloads.</p>"
        f"<p><a href='{path}'>Metrics</a> &middot; <a href='/healthz'>healthz</a> &middot; "
        "<a href='/readyz'>readyz</a></p><h2>Inputs</h2><table border='1' cellpadding='4'>"
        "<tr><th>input</th><th>state</th><th>covers</th><th>detail</th></tr>"
        f"{rows}</table></body></html>")
    return web.Response(text=body, content_type="text/html")


def make_app(state: ExporterState, middlewares: Sequence[Middleware] = ()) -> web.Application:
    app = web.Application(middlewares=middlewares)
    app[STATE] = state
    app.router.add_get(state.telemetry_path, metrics)
    # named so that basic auth exempts them (webconfig.UNAUTHENTICATED_ROUTES): the kubelet's
    # probes cannot easily send credentials
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    if state.telemetry_path != "/":
        app.router.add_get("/", landing)
    return app


async def run_ticks(state: ExporterState, *, interval_seconds: float,
                    stop: asyncio.Event) -> None:
    """Tick every interval in a worker thread; a failed tick is logged and the last bytes stay.
    `state.last_tick` says when the last one completed, for /healthz."""
    loop = asyncio.get_running_loop()
    state.last_tick = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tick") as pool:
        next_at = loop.time()
        while not stop.is_set():
            try:
                state.snapshot = await loop.run_in_executor(pool, state.sampler.tick)
            except Exception:
                log.exception("tick failed; serving the previous tick's metrics")
            state.last_tick = time.monotonic()
            next_at += interval_seconds
            now = loop.time()
            if next_at < now:
                log.warning(f"tick took longer than --collector.interval ({interval_seconds:g} s)"
                            "; skipping to the next interval")
                next_at = now + interval_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=next_at - now)


@dataclass(frozen=True)
class ServerLimits:
    """What one client may cost the listener before it has authenticated (docs/web-config.md,
    "Server limits"). The defaults let Prometheus through with an 8 KB bearer token."""

    max_connections: int = 256
    """Open connections at once (`--web.max-connections`), counted from their accept, TLS
    handshake included. At the cap a new one closes an idle one (`ConnectionGuard`); when none
    is idle it is refused (503 on plain HTTP, closed unanswered with TLS)."""
    max_connections_per_address: int | None = None
    """Connections in progress (not idle: TLS handshakes, requests being sent or served) from
    one client address (an IPv6 client: its /64; not 127.0.0.1 and ::1, `LOCALHOST`); more
    are refused. None: a quarter of `max_connections`, at least 1."""
    max_handshakes: int = 32
    """TLS handshakes in progress at once (asyncio holds about 0.3 MB for each); more wait,
    counted, for a slot. A connection takes one only once its first bytes have arrived."""
    read_header_timeout: float = 10.0
    """Seconds a connection has to send a request's line and headers (`--web.read-header-
    timeout`), from its accept or TLS handshake, or the first byte of a kept-alive request. With
    TLS the handshake has as long again, from the accept, waiting for a slot included."""
    max_header_bytes: int = 32 * 1024
    """Request line and headers together; more: 431 and close."""
    max_line_size: int = 8190
    """The request line (method, path, query); longer: 400."""
    max_field_size: int = 8190
    """One header, name and value; longer: 400."""
    max_headers: int = 32
    """Header lines per request; more: 400."""
    keepalive_timeout: float = 120.0
    """An idle kept-alive connection is closed after this long (aiohttp's default is 3630 s),
    sooner once more than 3/4 of `max_connections` are open (`ConnectionGuard.keepalive`)."""
    crowded_keepalive_timeout: float = 5.0
    """The keep-alive timeout with `max_connections` open; from 3/4 of it up, the timeout falls
    linearly from `keepalive_timeout` to this."""
    linger_seconds: float = 1.0
    """After a 408/431, what the client still sends is read and dropped this long, so that it
    reads the answer rather than a reset."""

    def per_address(self) -> int:
        if self.max_connections_per_address is not None:
            return self.max_connections_per_address
        return max(self.max_connections // 4, 1)


class Stage(enum.Enum):
    """Where an accepted connection is, from accept to close."""

    WAITING = "waiting"
    """TLS: accepted, no byte received yet (no TLS state allocated)."""
    QUEUED = "queued"
    """TLS: its first bytes arrived; it waits for a handshake slot."""
    HANDSHAKE = "handshake"
    """TLS handshake in progress."""
    HANDOVER = "handover"
    """Plain HTTP: the transport is being made."""
    HTTP = "http"
    """A `LimitedConnection` serves it."""
    CLOSED = "closed"


class Connection:
    """One accepted TCP connection as the listener counts it, from accept to close."""

    __slots__ = ("_loop", "accepted", "address", "fd", "last_active", "protocol", "sock",
                 "stage", "timer")

    def __init__(self, address: str, accepted: float, *, sock: socket.socket | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.address = address
        self.fd = sock.fileno() if sock is not None else -1
        """The socket's descriptor: open as long as the guard counts the connection (asyncio
        calls `connection_lost` before it closes the socket)."""
        """The client's address (IPv6: its /64), the key of the per-address limit."""
        self.accepted = accepted
        self.last_active = accepted
        """`loop.time()` of the last bytes received, handshake completed or response sent."""
        self.stage = Stage.WAITING
        self.sock = sock
        """The socket until a transport owns it."""
        self.protocol: LimitedConnection | None = None
        self.timer: asyncio.TimerHandle | None = None
        """The accept's deadline while WAITING or QUEUED."""
        self._loop = loop

    def idle(self) -> bool:
        """Nothing in flight: no byte received yet, or waiting for a kept-alive's next request
        with nothing of it received and nothing left to send. Only these are closed to make
        room for a new connection or by the crowded keep-alive."""
        return self.quiet() and not self.unread()

    def quiet(self) -> bool:
        """`idle` as far as the exporter has read (no system call)."""
        if self.stage in (Stage.WAITING, Stage.HANDOVER):
            return True
        return self.stage is Stage.HTTP and self.protocol is not None and self.protocol.idle()

    def unread(self) -> int:
        """Bytes received by the kernel that the exporter has not read yet (a request that
        arrived while the event loop was busy: not idle)."""
        if self.fd < 0:
            return 0
        count = array.array("i", [0])
        try:
            fcntl.ioctl(self.fd, termios.FIONREAD, count, True)
        except OSError:
            return 0
        return count[0]

    def tier(self) -> int | None:
        """How readily the connection is closed to make room for a new one, as far as the
        exporter has read (`quiet`; the caller checks `unread`): 0, a kept-alive one idle
        between requests; 1, one that has sent nothing yet; 2, one queued for a TLS handshake
        slot (a socket with its ClientHello unread); None: in progress."""
        if self.stage is Stage.QUEUED:
            return 2
        if not self.quiet():
            return None
        return 1 if self.fresh() else 0

    def fresh(self) -> bool:
        """No request received yet: given a chance before kept-alive idle ones are closed."""
        if self.stage is Stage.HTTP:
            return self.protocol is None or self.protocol.requests == 0
        return True

    def drop(self) -> None:
        """Close an idle connection now (no TLS close_notify, no lingering)."""
        if self.stage in (Stage.WAITING, Stage.QUEUED):  # the listener skips it in its queue
            self.close_socket()
        elif self.stage is Stage.HANDOVER:  # its transport aborts it once made
            self.stage = Stage.CLOSED
        elif self.stage is Stage.HTTP and self.protocol is not None:
            transport = self.protocol.transport
            if transport is not None:
                transport.abort()

    def close_socket(self) -> None:
        """Close the socket the listener still holds (WAITING, QUEUED)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        sock, self.sock = self.sock, None
        if sock is not None:
            if self.stage is Stage.WAITING and self._loop is not None:
                self._loop.remove_reader(sock)
            sock.close()
        self.stage = Stage.CLOSED


class ConnectionGuard:
    """Counts open connections, from their accept, against `limit`, and the connections in
    progress (not `idle`) of one client address against `per_address`.

    At the limit a new connection closes an idle connection and takes its place, as nginx
    reuses its connections: a kept-alive one waiting for its next request, or if there is
    none, one that has not sent anything yet, or one queued for a TLS handshake slot
    (`Connection.tier`); of the address holding the most connections first, then the longest
    idle (connections are kept least recently active first). Only when there is none is the
    new one refused. An address with `per_address` connections in progress
    (handshakes, requests being sent or served) has its new ones refused: those cannot be
    taken back, idle ones can. Reaching the limit is logged once, with a warning (at most one
    per `log_period_seconds`, however often the count touches the limit), and its end once
    (when the count is back to 3/4 of the limit), with the numbers closed and refused
    meanwhile; the per-address limit with a warning at most once per period.

    Above 3/4 of the limit the guard is `crowded` and an idle connection's keep-alive shortens
    (`keepalive`); the listener then calls `sweep` every second."""

    def __init__(self, limit: int, *, per_address: int | None = None,
                 keepalive_timeout: float = 120.0, crowded_keepalive_timeout: float = 5.0,
                 log_period_seconds: float = 300.0,
                 on_burst_end: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.per_address = per_address if per_address is not None else max(limit // 4, 1)
        self.keepalive_timeout = keepalive_timeout
        self.crowded_keepalive_timeout = min(crowded_keepalive_timeout, keepalive_timeout)
        self.refused_total = 0
        self.evicted_total = 0
        self._conns: OrderedDict[Connection, None] = OrderedDict()
        self._served: OrderedDict[Connection, None] = OrderedDict()
        """Those that have sent a response: the only ones that can be kept-alive idle."""
        self._by_address: dict[str, OrderedDict[Connection, None]] = {}
        self._refused = 0
        self._evicted = 0
        self._full = False
        self._warned = False
        self._last_warning = -math.inf
        self._last_address_warning = -math.inf
        self._log_period = log_period_seconds
        self._opened_since_quiet = 0
        self._on_burst_end = on_burst_end

    @property
    def open(self) -> int:
        return len(self._conns)

    def from_address(self, address: str) -> int:
        """Connections open from `address`."""
        return len(self._by_address.get(address, ()))

    def admit(self, conn: Connection) -> bool:
        """Count `conn`, closing an idle connection to make room if need be; False: refused."""
        self._opened_since_quiet += 1
        full = self.open >= self.limit
        if full:
            self._limit_reached()
        same = self._by_address.get(conn.address)
        if (same is not None and len(same) >= self.per_address
                and conn.address not in LOCALHOST and self._busy(same)):
            now = time.monotonic()
            if now - self._last_address_warning >= self._log_period:
                self._last_address_warning = now
                log.warning(f"{conn.address} has {self.per_address} connections in progress "
                            "(TLS handshakes, requests), the limit for one address; refusing "
                            "its new connections until some finish")
            return self._refuse()
        if full and not self._evict():
            return self._refuse()
        self._conns[conn] = None
        self._by_address.setdefault(conn.address, OrderedDict())[conn] = None
        return True

    def busy(self, address: str) -> int:
        """Connections of `address` in progress (not idle)."""
        return sum(not conn.idle() for conn in self._by_address.get(address, ()))

    def _busy(self, same: OrderedDict[Connection, None]) -> bool:
        """Whether `per_address` of these are in progress."""
        count = 0
        for conn in same:
            if not conn.idle():
                count += 1
                if count >= self.per_address:
                    return True
        return False

    def release(self, conn: Connection) -> None:
        """`conn` closed (or was closed to make room); again: nothing."""
        if not self._forget(conn):
            return
        open_ = self.open
        if self._full and open_ <= self.limit * 3 // 4:
            self._full = False
            if self._warned:
                self._warned = False
                log.info(f"below the connection limit again ({open_} open); since it was "
                         f"reached {self._evicted} idle connection(s) closed for new ones, "
                         f"{self._refused} refused")
                self._refused = self._evicted = 0
        if open_ <= max(self.limit // 16, 4) and self._opened_since_quiet >= BURST_CONNECTIONS:
            self._opened_since_quiet = 0
            if self._on_burst_end is not None:
                self._on_burst_end()

    def connections(self) -> list[Connection]:
        """Least recently active first."""
        return list(self._conns)

    def touch(self, conn: Connection, now: float) -> None:
        """`conn` received bytes or completed its handshake."""
        conn.last_active = now
        if conn in self._conns:
            self._conns.move_to_end(conn)
            self._by_address[conn.address].move_to_end(conn)
            if conn in self._served:
                self._served.move_to_end(conn)

    def served(self, conn: Connection, now: float) -> None:
        """`conn` sent a response: from now on it may be kept-alive idle."""
        if conn in self._conns:
            self._served[conn] = None
        self.touch(conn, now)

    @property
    def crowded(self) -> bool:
        return self.open > self.limit * 3 // 4

    def keepalive(self) -> float:
        """The keep-alive timeout now: `keepalive_timeout` up to 3/4 of the limit, then falling
        linearly to `crowded_keepalive_timeout` at the limit."""
        low = self.limit * 3 // 4
        if self.open <= low:
            return self.keepalive_timeout
        share = min((self.open - low) / max(self.limit - low, 1), 1.0)
        return self.keepalive_timeout - share * (self.keepalive_timeout
                                                 - self.crowded_keepalive_timeout)

    def sweep(self, now: float) -> int:
        """Close idle connections, longest-idle first, while one has been idle longer than
        `keepalive()` (which grows as they close); how many."""
        closed = 0
        for conn in list(self._conns):  # least recently active first
            if not self.crowded or now - conn.last_active < self.keepalive():
                break
            if conn.idle():
                self.release(conn)
                conn.drop()
                closed += 1
        return closed

    def _forget(self, conn: Connection) -> bool:
        if conn not in self._conns:
            return False
        del self._conns[conn]
        self._served.pop(conn, None)
        same = self._by_address[conn.address]
        del same[conn]
        if not same:
            del self._by_address[conn.address]
        return True

    def _evict(self) -> bool:
        """Close the connection readiest to go (`Connection.tier`: kept-alive idle, then one
        that has sent nothing, then one queued for a TLS handshake), of the address with the
        most connections open before the others, the longest idle first."""
        most = max(map(len, self._by_address.values()))
        victim = (self._pick(self._served, most, 0)  # kept-alive: tier 0 or in progress
                  or self._pick(self._conns, most, 1))  # then none is tier 0
        if victim is None:
            return False
        self._forget(victim)  # the new one takes its place: the count stays
        victim.drop()
        self.evicted_total += 1
        self._evicted += 1
        return True

    def _pick(self, candidates: OrderedDict[Connection, None], most: int,
              lowest: int) -> Connection | None:
        """Of `candidates` (least recently active first), the first of the lowest tier, of the
        address with the most connections. `lowest`: the lowest tier there can be among them;
        the first of it from an address with `most` connections ends the search."""
        best: list[tuple[Connection, int] | None] = [None, None, None]
        for conn in candidates:
            tier = conn.tier()
            if tier is None:
                continue
            same = len(self._by_address[conn.address])
            found = best[tier]
            if (found is None or same > found[1]) and (tier == 2 or not conn.unread()):
                best[tier] = (conn, same)
                if tier == lowest and same == most:
                    break
        return next((found[0] for found in best if found is not None), None)

    def _refuse(self) -> bool:
        self.refused_total += 1
        self._refused += 1
        return False

    def _limit_reached(self) -> None:
        if self._full:
            return
        self._full = True
        now = time.monotonic()
        if now - self._last_warning >= self._log_period:
            self._last_warning = now
            self._warned = True
            log.warning(f"connection limit reached: {self.open} connections open "
                        f"(--web.max-connections {self.limit}); closing an idle one for each "
                        "new one, refusing new ones while none is idle")


BURST_CONNECTIONS = 64
"""This many connections accepted (admitted or not) since the listener was last nearly idle make
a burst; when it ends, freed memory is handed back to the kernel (`MemoryTrim`)."""


class MemoryTrim:
    """After a burst of connections ends, hand what it freed back to the kernel: a full cyclic
    collection first (a burst leaves mostly reference cycles: asyncio transports and protocols,
    TLS objects, exceptions and their tracebacks, which `cli.settle_memory`'s young-generation
    threshold of 10,000 leaves uncollected for a long while), then glibc's `malloc_trim(0)`
    (glibc keeps freed heap pages until asked; elsewhere, musl or macOS, only the collection).
    A second after the burst ends, and once more `again_seconds` later for the stragglers (TLS
    shutdowns, handshakes still ending)."""

    def __init__(self, delay_seconds: float = 1.0, again_seconds: float = 10.0) -> None:
        self._trim = _malloc_trim()
        self._delay = delay_seconds
        self._again = again_seconds
        self._pending: asyncio.TimerHandle | None = None

    def schedule(self) -> None:
        if self._pending is not None:
            return
        self._pending = asyncio.get_running_loop().call_later(self._delay, self._run, True)

    def _run(self, first: bool) -> None:
        self._pending = None
        gc.collect()
        if self._trim is not None:
            self._trim(0)
        if first:
            self._pending = asyncio.get_running_loop().call_later(self._again, self._run, False)

    def cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return cast(Callable[[int], int], trim)


def _canned(status: int, reason: str, text: str) -> bytes:
    """A whole response written straight to the socket, before any request was read."""
    body = text.encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


REFUSED = _canned(503, "Service Unavailable", "too many connections: retry later\n")


class LimitedConnection(RequestHandler):
    """aiohttp's HTTP/1.1 protocol for one connection, plus: the total size of a request's line
    and headers, the deadline for them, and what the `ConnectionGuard` needs (activity, idleness,
    the release at close; the listener counted the connection at its accept). aiohttp's parser
    counts header lines and bounds each one, but not their sum, and its only timer is the
    keep-alive one, which a connection still sending headers also resets.

    The header bytes are counted before the parser sees them, so a request is refused (431)
    before its headers pile up. Reads aiohttp internals of `RequestHandler` (aiohttp 3.14):
    `_request_count` (requests parsed so far), `_messages` (parsed, not yet handled),
    `_request_in_progress` and `_waiter` (set while waiting for the next request);
    tests/test_hostile_http.py fails if an upgrade changes them."""

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop,
                 conn: Connection, guard: ConnectionGuard, limits: ServerLimits,
                 **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, keepalive_timeout=limits.keepalive_timeout,
                         max_line_size=limits.max_line_size,
                         max_field_size=limits.max_field_size, max_headers=limits.max_headers,
                         logger=http_log,
                         access_log=None,  # type: ignore[arg-type]  # None: no access log
                         **kwargs)
        self._conn = conn
        self._guard = guard
        self._limits = limits
        self._made = False
        self._header_bytes = 0
        self._header_tail = b""  # the last 3 header bytes: a blank line may straddle chunks
        self._header_timer: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None
        self._answered = False
        self._linger: asyncio.TimerHandle | None = None
        conn.protocol = self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._conn.stage is Stage.CLOSED:  # closed to make room while being handed over
            self._conn.protocol = None
            cast(asyncio.Transport, transport).abort()
            return
        self._made = True
        self._conn.stage = Stage.HTTP
        self._guard.touch(self._conn, self._loop.time())
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._made:
            return
        self._made = False
        self._conn.stage = Stage.CLOSED
        self._conn.protocol = None  # no cycle left for the collector
        self._guard.release(self._conn)
        for timer in (self._header_timer, self._linger):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._linger = None
        self._body = None
        super().connection_lost(exc)

    @property
    def requests(self) -> int:
        """Requests received on this connection so far."""
        return self._request_count

    def discard(self) -> None:
        """Never connected (its TLS handshake failed): let aiohttp drop its parser, which
        refers back to this protocol, so that no cycle is left for the collector."""
        if not self._made:
            super().connection_lost(None)

    def idle(self) -> bool:
        """Nothing received yet, or waiting for a kept-alive's next request with none of it
        received and nothing left to send."""
        transport = self.transport
        if (transport is None or self._answered or self._header_bytes or self._body is not None
                or self._messages or self._request_in_progress):
            return False
        if self._request_count == 0:
            return True
        waiter = self._waiter
        return (waiter is not None and not waiter.done()
                and cast(asyncio.WriteTransport, transport).get_write_buffer_size() == 0)

    async def finish_response(self, request: BaseRequest, resp: StreamResponse,
                              start_time: float | None) -> tuple[StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._guard.served(self._conn, self._loop.time())

    def data_received(self, data: bytes) -> None:
        if self._answered:  # 408/431 sent: drop what still comes until the linger ends
            return
        self._guard.touch(self._conn, self._loop.time())
        body = self._body
        if body is not None:  # a request body: not headers, the parser's flow control bounds it
            if not body.is_eof():
                super().data_received(data)
                return
            self._body = None
        if data and self._header_timer is None:
            self._arm_header_timer()
        limit = self._limits.max_header_bytes
        if self._header_bytes + len(data) > limit:  # unless the headers end in time: 431
            end = (self._header_tail + data).find(b"\r\n\r\n")
            if end < 0 or self._header_bytes - len(self._header_tail) + end + 4 > limit:
                self._answer(431, "Request Header Fields Too Large",
                             f"request line and headers over {limit} bytes\n")
                return
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:  # a request's headers are complete
            self._header_bytes = 0
            self._header_tail = b""
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            if self._messages:
                payload = self._messages[-1][1]
                if payload is not EMPTY_PAYLOAD and not payload.is_eof():
                    self._body = payload
            return
        self._header_bytes += len(data)
        self._header_tail = (self._header_tail + data[-3:])[-3:]

    def _arm_header_timer(self) -> None:
        self._header_timer = self._loop.call_later(self._limits.read_header_timeout,
                                                   self._header_deadline)

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self.transport is None or self._answered:
            return
        if self._request_in_progress or self._messages:
            self._arm_header_timer()  # a pipelined request waits behind one being answered
            return
        self._answer(408, "Request Timeout", "request headers not received within "
                                             f"{self._limits.read_header_timeout:g} s\n")

    def _answer(self, status: int, reason: str, text: str) -> None:
        """Answer `status` (unless a response is under way), stop reading requests, and close
        after the linger."""
        transport = self.transport
        if transport is None:
            return
        self._answered = True
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        http_log.debug(f"{status} {reason} for {self.peername}")
        if not (self._request_in_progress or self._messages):
            transport.write(_canned(status, reason, text))
            if transport.can_write_eof():
                transport.write_eof()
        self._linger = self._loop.call_later(self._limits.linger_seconds, self.force_close)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """A malformed request (400) is the client's fault: debug. Anything else: error."""
        if isinstance(kw.get("exc_info"), HttpProcessingError):
            self.logger.debug(*args, **kw)
        else:
            self.logger.exception(*args, **kw)


def address_key(host: str) -> str:
    """The per-address limit's key for a peer: the address, or an IPv6 address's /64 (one
    host usually holds a whole /64; not ::1); an IPv4-mapped IPv6 address is its IPv4 one."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if not ip.is_loopback:
            return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


LOCALHOST = frozenset({"127.0.0.1", "::1"})
"""Client addresses the per-address limit does not apply to: a client in the exporter's own pod
(a proxy sidecar such as kube-rbac-proxy, through which every scrape then comes, or `kubectl
port-forward`). The cap and its eviction still do."""


_ACCEPT_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

LISTEN_BACKLOG = 1024
"""Connections the kernel completes and queues for the exporter to accept (asyncio's default is
100, the exporter used 128; the kernel caps it at net.core.somaxconn, 4096 since Linux 5.4). A
burst beyond the queue has its SYNs dropped, and a dropped SYN costs a client, a probe's
included, a second: 2,000 connections opened at once overflowed 128 but not 1,024."""

CROWDED_HANDSHAKE_SECONDS = 1.0
"""While connections wait for a TLS handshake slot, a handshake that has taken longer than this
gives its slot up (a client in the cluster finishes in milliseconds; one that sent a ClientHello
and stopped would otherwise hold the slot until `read_header_timeout`)."""

ACCEPTS_PER_TURN = 16
"""Connections accepted per turn of the event loop (asyncio takes up to the backlog, 128). A new
connection needs about three turns to have its first bytes read; with few accepts per turn, a
burst queued behind it cannot make it the longest-idle connection of its address (64) and close
it before then."""


TlsContext = ssl.SSLContext | Callable[[], ssl.SSLContext]
"""A listener's TLS: one context, or a callable asked for the context of each handshake."""


def _provider(tls: TlsContext | None) -> Callable[[], ssl.SSLContext] | None:
    if tls is None or callable(tls):
        return tls
    return lambda: tls


class Listener:
    """Accepts connections itself, so that each is counted (`ConnectionGuard`) from its accept,
    before any TLS state exists, rather than when asyncio hands it over after the handshake.

    With TLS a connection costs a socket until its first bytes arrive (a client that never
    sends any holds no TLS state); it then waits for one of `max_handshakes` handshake slots
    (a quarter of them per address; the address with the fewest handshakes in progress goes
    first), and its handshake must end within `read_header_timeout` of the accept, the wait
    included. While connections wait for a slot, a handshake that has taken longer than
    `CROWDED_HANDSHAKE_SECONDS` gives its slot up (closed). Then, as without TLS, a
    `LimitedConnection` serves it. A refused connection gets a 503 on plain HTTP and is closed
    unanswered with TLS."""

    def __init__(self, factory: Callable[[Connection], LimitedConnection], guard: ConnectionGuard,
                 limits: ServerLimits, ssl_context: TlsContext | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._factory = factory
        self._guard = guard
        self._limits = limits
        self._ssl = _provider(ssl_context)
        self.sockets: list[socket.socket] = []
        self._queue: deque[Connection] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._handshaking: dict[Connection, tuple[asyncio.Task[None], float]] = {}
        """Handshakes in progress, oldest first: the task and when it started."""
        self._preempt_timer: asyncio.TimerHandle | None = None
        self.handshakes = 0
        self.handshakes_peak = 0
        self.handshakes_cut_short = 0
        self._handshakes_by_address: Counter[str] = Counter()
        self._per_address_handshakes = max(limits.max_handshakes // 4, 1)
        self._sweeper: asyncio.TimerHandle | None = None
        self._paused: asyncio.TimerHandle | None = None
        self._closed = False

    async def start(self, host: str | None, port: int, backlog: int = LISTEN_BACKLOG) -> None:
        """Bind and listen on every address of `host` (None: all interfaces), as asyncio's
        `create_server` does; OSError when one fails."""
        infos = await self._loop.getaddrinfo(host, port, family=socket.AF_UNSPEC,
                                             type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(backlog)
                sock.setblocking(False)
        except BaseException:
            self.close()
            raise
        for sock in self.sockets:
            self._loop.add_reader(sock, self._accept, sock)

    def close(self) -> None:
        """Stop accepting and close what has not been handed to aiohttp yet (aiohttp's
        runner closes the rest)."""
        self._closed = True
        for sock in self.sockets:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock)
            sock.close()
        for handle in (self._sweeper, self._paused, self._preempt_timer):
            if handle is not None:
                handle.cancel()
        for conn in self._guard.connections():
            if conn.stage in (Stage.WAITING, Stage.QUEUED):
                self._close_unserved(conn)
        for task in self._tasks:
            task.cancel()

    def _accept(self, listening: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, peer = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_RESOURCE_ERRORS:  # out of descriptors: wait a second
                    log.error(f"cannot accept connections: {exc.strerror}; retrying in 1 s")
                    self._loop.remove_reader(listening)
                    self._paused = self._loop.call_later(1.0, self._resume, listening)
                    return
                continue  # ECONNABORTED and the like: that connection is gone
            self._accepted(sock, peer)

    def _resume(self, listening: socket.socket) -> None:
        self._paused = None
        if not self._closed:
            self._loop.add_reader(listening, self._accept, listening)

    def _accepted(self, sock: socket.socket, peer: Any) -> None:
        sock.setblocking(False)
        host = peer[0] if isinstance(peer, tuple) else str(peer)
        now = self._loop.time()
        conn = Connection(address_key(host), now, sock=sock, loop=self._loop)
        if not self._guard.admit(conn):
            if self._ssl is None:
                with contextlib.suppress(OSError):
                    sock.send(REFUSED)
            sock.close()
            return
        if self._guard.crowded and self._sweeper is None:
            self._sweeper = self._loop.call_later(1.0, self._sweep)
        if self._ssl is None:
            conn.stage = Stage.HANDOVER
            self._spawn(self._hand_over(conn, None))
            return
        conn.timer = self._loop.call_at(now + self._limits.read_header_timeout,
                                        self._too_late, conn)
        self._loop.add_reader(sock, self._first_bytes, conn)

    def _first_bytes(self, conn: Connection) -> None:
        sock = conn.sock
        if conn.stage is not Stage.WAITING or sock is None:
            return
        try:
            peeked = sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            peeked = b""
        if not peeked:  # closed (or reset) before a byte: no handshake to start
            self._close_unserved(conn)
            return
        self._loop.remove_reader(sock)
        conn.stage = Stage.QUEUED
        self._queue.append(conn)
        self._start_handshakes()

    def _start_handshakes(self) -> None:
        """Start handshakes while slots are free: of the queued connections, the first one
        whose address has the fewest handshakes in progress (below its share)."""
        if self._closed:
            return
        share = self._per_address_handshakes
        while self.handshakes < self._limits.max_handshakes:
            chosen, fewest = None, share
            for conn in self._queue:
                count = self._handshakes_by_address[conn.address]
                if conn.stage is Stage.QUEUED and count < fewest:
                    chosen, fewest = conn, count
                    if count == 0:
                        break
            if chosen is None:
                break
            self._queue.remove(chosen)
            if chosen.timer is not None:
                chosen.timer.cancel()
                chosen.timer = None
            chosen.stage = Stage.HANDSHAKE
            self.handshakes += 1
            self.handshakes_peak = max(self.handshakes_peak, self.handshakes)
            self._handshakes_by_address[chosen.address] += 1
            assert self._ssl is not None  # connections are queued only with TLS
            task = self._spawn(self._hand_over(chosen, self._ssl()))
            self._handshaking[chosen] = (task, self._loop.time())
        if any(conn.stage is not Stage.QUEUED for conn in self._queue):
            self._queue = deque(conn for conn in self._queue if conn.stage is Stage.QUEUED)
        self._arm_preempt()

    def _waiting_for_a_slot(self) -> int:
        """Queued connections that a free slot would serve (their address below its share)."""
        share = self._per_address_handshakes
        return sum(conn.stage is Stage.QUEUED
                   and self._handshakes_by_address[conn.address] < share
                   for conn in self._queue)

    def _arm_preempt(self) -> None:
        if (self._preempt_timer is not None or not self._handshaking
                or self.handshakes < self._limits.max_handshakes or not self._queue):
            return
        started = next(iter(self._handshaking.values()))[1]
        self._preempt_timer = self._loop.call_at(started + CROWDED_HANDSHAKE_SECONDS,
                                                 self._preempt)

    def _preempt(self) -> None:
        """Connections wait for a slot: close the handshakes older than
        `CROWDED_HANDSHAKE_SECONDS`, the oldest first, one per waiting connection."""
        self._preempt_timer = None
        if self._closed:
            return
        waiting = self._waiting_for_a_slot()
        now = self._loop.time()
        for task, started in list(self._handshaking.values()):
            if waiting <= 0 or now - started < CROWDED_HANDSHAKE_SECONDS:
                break
            if not task.done():
                task.cancel()
                self.handshakes_cut_short += 1
                waiting -= 1
        self._arm_preempt()

    async def _hand_over(self, conn: Connection, ssl_context: ssl.SSLContext | None) -> None:
        """Give the socket to a transport (and, with TLS, shake hands) and the transport to a
        `LimitedConnection`, which releases the connection when it closes."""
        sock, conn.sock = conn.sock, None
        assert sock is not None
        try:
            if ssl_context is None:
                await self._loop.connect_accepted_socket(lambda: self._factory(conn), sock)
            else:
                left = conn.accepted + self._limits.read_header_timeout - self._loop.time()
                await self._loop.connect_accepted_socket(
                    lambda: self._factory(conn), sock, ssl=ssl_context,
                    ssl_handshake_timeout=max(left, 0.001),
                    ssl_shutdown_timeout=self._limits.read_header_timeout)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            http_log.debug(f"connection from {conn.address} failed before HTTP: {exc!r}")
            # The traceback holds asyncio's frames, and through them the SSL protocol with
            # its 256 KiB buffer, in a cycle with the handshake's future: only a collection
            # would free them. Without it, refcounting frees them now.
            exc.__traceback__ = None
            if conn.stage is not Stage.HTTP:
                self._unserved(conn, sock)
        except BaseException as exc:
            exc.__traceback__ = None  # as above; a cancelled (cut short) handshake
            if conn.stage is not Stage.HTTP:
                self._unserved(conn, sock)
            raise
        finally:
            if ssl_context is not None:
                self._handshaking.pop(conn, None)
                self.handshakes -= 1
                self._handshakes_by_address[conn.address] -= 1
                if self._handshakes_by_address[conn.address] <= 0:
                    del self._handshakes_by_address[conn.address]
                self._start_handshakes()

    def _unserved(self, conn: Connection, sock: socket.socket) -> None:
        """The hand-over failed (a handshake failed, timed out or was cut short)."""
        sock.close()
        conn.stage = Stage.CLOSED
        protocol, conn.protocol = conn.protocol, None
        if protocol is not None:  # the factory's, never connected
            protocol.discard()
        self._guard.release(conn)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _too_late(self, conn: Connection) -> None:
        """The accept's deadline passed with no handshake started."""
        conn.timer = None
        if conn.stage in (Stage.WAITING, Stage.QUEUED):
            http_log.debug(f"connection from {conn.address}: no TLS handshake within "
                           f"{self._limits.read_header_timeout:g} s")
            self._close_unserved(conn)

    def _close_unserved(self, conn: Connection) -> None:
        if conn.stage is Stage.QUEUED:
            with contextlib.suppress(ValueError):
                self._queue.remove(conn)
        conn.close_socket()
        self._guard.release(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        if self._closed:
            return
        closed = self._guard.sweep(self._loop.time())
        if closed:
            http_log.debug(f"{closed} idle connection(s) closed: keep-alive "
                           f"{self._guard.keepalive():.0f} s with {self._guard.open} open")
        if self._guard.crowded:
            self._sweeper = self._loop.call_later(1.0, self._sweep)


def parse_listen_address(address: str) -> tuple[str | None, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces); ValueError names what is wrong."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"expected host:port, [ipv6]:port or :port, got {address!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return (host or None), int(port_text)


async def serve(state: ExporterState, *, listen_address: str, interval_seconds: float,
                stop: asyncio.Event | None = None, ssl_context: TlsContext | None = None,
                middlewares: Sequence[Middleware] = (), limits: ServerLimits | None = None,
                stall_seconds: float | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop`); return the process exit code. `ssl_context` (a
    context, or a callable that gives the one for each new handshake, as
    `webconfig.RotatingTls` does) and `middlewares` come from `--web.config.file`
    (exporter/webconfig.py); `limits` from the
    `--web.*` flags; with `stall_seconds`, /healthz fails once no tick has completed for that
    long."""
    stop = stop or asyncio.Event()
    limits = limits or ServerLimits()
    if stall_seconds is not None:
        state.stall_seconds = stall_seconds
    loop = asyncio.get_running_loop()
    signalled: list[int] = []

    def on_signal(sig: int) -> None:
        signalled.append(sig)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    host, port = parse_listen_address(listen_address)
    runner = web.AppRunner(make_app(state, middlewares), access_log=None, handle_signals=False)
    await runner.setup()
    trim = MemoryTrim()
    guard = ConnectionGuard(limits.max_connections, per_address=limits.per_address(),
                            keepalive_timeout=limits.keepalive_timeout,
                            crowded_keepalive_timeout=limits.crowded_keepalive_timeout,
                            on_burst_end=trim.schedule)
    server = runner.server
    assert server is not None

    def connection(conn: Connection) -> LimitedConnection:
        return LimitedConnection(server, loop=loop, conn=conn, guard=guard, limits=limits)

    listener = Listener(connection, guard, limits, ssl_context)
    try:
        try:
            await listener.start(host, port)
        except OSError as exc:
            log.error(f"cannot listen on {listen_address}: {exc.strerror}; "
                      "choose another --web.listen-address")
            return 1
        for sock in listener.sockets:
            address = sock.getsockname()
            shown = f"[{address[0]}]" if ":" in str(address[0]) else address[0]
            log.info(f"listening on {shown}:{address[1]}")
        await run_ticks(state, interval_seconds=interval_seconds, stop=stop)
        log.info("stopping: the last tick finished, closing the listener")
        return 0
    finally:
        listener.close()
        trim.cancel()
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if signal.SIGTERM in signalled:
            # Shutting down already: a second SIGTERM (a second `kill`, a supervisor that
            # retries) must not cut the closing of the sources short with exit 143; the
            # kubelet's SIGKILL after the grace period still ends a shutdown that hangs.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
