"""HTTP: `/metrics` serves the last tick's bytes; `/healthz`, `/readyz` and a landing page.

The listener is aiohttp's, with limits fit for an exporter (docs/web-config.md, "Server
limits"): request line and headers bounded in count, line length and total bytes, a deadline
for a connection's request headers distinct from the keep-alive timeout, and a cap on open
connections. aiohttp has no option for the last three, so `LimitedConnection` adds them to its
per-connection protocol.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import html
import math
import signal
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestHandler

from exporter import __version__, logs
from exporter.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, Snapshot
from exporter.sampler import Sampler

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


@dataclass
class ExporterState:
    """What the handlers read: the sampler's sources and the last snapshot."""

    sampler: Sampler
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
    return web.Response(body=snapshot.body(openmetrics=openmetrics, gzipped=gzipped),
                        headers=headers)


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
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
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
    """Open connections at once (`--web.max-connections`); more are answered 503 and closed."""
    read_header_timeout: float = 10.0
    """Seconds a connection has to send a request's line and headers (`--web.read-header-
    timeout`), from its accept (and TLS handshake) or the first byte of a kept-alive request."""
    max_header_bytes: int = 32 * 1024
    """Request line and headers together; more: 431 and close."""
    max_line_size: int = 8190
    """The request line (method, path, query); longer: 400."""
    max_field_size: int = 8190
    """One header, name and value; longer: 400."""
    max_headers: int = 32
    """Header lines per request; more: 400."""
    keepalive_timeout: float = 120.0
    """An idle kept-alive connection is closed after this long (aiohttp's default is 3630 s)."""
    linger_seconds: float = 1.0
    """After a 408/431, what the client still sends is read and dropped this long, so that it
    reads the answer rather than a reset."""


class ConnectionGuard:
    """Counts open connections against `limit`. Reaching it is logged once, with a warning (at
    most one per `log_period_seconds`, however often the count touches the limit), and its end
    once (when the count is back to 3/4 of the limit), with the number refused meanwhile."""

    def __init__(self, limit: int, *, log_period_seconds: float = 300.0,
                 on_burst_end: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.open = 0
        self.refused_total = 0
        self._refused = 0
        self._full = False
        self._warned = False
        self._last_warning = -math.inf
        self._log_period = log_period_seconds
        self._opened_since_quiet = 0
        self._on_burst_end = on_burst_end

    def admit(self) -> bool:
        if self.open >= self.limit:
            self.refused_total += 1
            self._refused += 1
            if not self._full:
                self._full = True
                now = time.monotonic()
                if now - self._last_warning >= self._log_period:
                    self._last_warning = now
                    self._warned = True
                    log.warning(f"connection limit reached: {self.open} connections open "
                                f"(--web.max-connections {self.limit}); answering new ones 503 "
                                "and closing them until some close")
            return False
        self.open += 1
        self._opened_since_quiet += 1
        return True

    def release(self) -> None:
        self.open -= 1
        if self._full and self.open <= self.limit * 3 // 4:
            self._full = False
            if self._warned:
                self._warned = False
                log.info(f"accepting connections again ({self.open} open); {self._refused} "
                         "refused since the limit was reached")
                self._refused = 0
        if self.open <= max(self.limit // 16, 4) and self._opened_since_quiet >= BURST_CONNECTIONS:
            self._opened_since_quiet = 0
            if self._on_burst_end is not None:
                self._on_burst_end()


BURST_CONNECTIONS = 64
"""This many connections opened since the listener was last nearly idle make a burst; when it
ends, freed memory is handed back to the kernel (`MemoryTrim`)."""


class MemoryTrim:
    """glibc's `malloc_trim(0)` a second after a burst of connections ends: glibc keeps the
    pages a burst freed (the per-connection buffers of the event loop thread's heap) until it is
    asked; elsewhere (musl, macOS) nothing to do."""

    def __init__(self, delay_seconds: float = 1.0) -> None:
        self._trim = _malloc_trim()
        self._delay = delay_seconds
        self._pending: asyncio.TimerHandle | None = None

    def schedule(self) -> None:
        if self._trim is None or self._pending is not None:
            return
        self._pending = asyncio.get_running_loop().call_later(self._delay, self._run)

    def _run(self) -> None:
        self._pending = None
        if self._trim is not None:
            self._trim(0)

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


class LimitedConnection(RequestHandler):
    """aiohttp's HTTP/1.1 protocol for one connection, plus: the connection cap (refused at
    `connection_made`), the total size of a request's line and headers, and the deadline for
    them. aiohttp's parser counts header lines and bounds each one, but not their sum, and its
    only timer is the keep-alive one, which a connection still sending headers also resets.

    The header bytes are counted before the parser sees them, so a request is refused (431)
    before its headers pile up. Reads aiohttp internals of `RequestHandler` (aiohttp 3.14):
    `_request_count` (requests parsed so far), `_messages` (parsed, not yet handled) and
    `_request_in_progress`; tests/test_hostile_http.py fails if an upgrade changes them."""

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop,
                 guard: ConnectionGuard, limits: ServerLimits, **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, keepalive_timeout=limits.keepalive_timeout,
                         max_line_size=limits.max_line_size,
                         max_field_size=limits.max_field_size, max_headers=limits.max_headers,
                         logger=http_log,
                         access_log=None,  # type: ignore[arg-type]  # None: no access log
                         **kwargs)
        self._guard = guard
        self._limits = limits
        self._admitted = False
        self._header_bytes = 0
        self._header_tail = b""  # the last 3 header bytes: a blank line may straddle chunks
        self._header_timer: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None
        self._answered = False
        self._linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit():
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(_canned(503, "Service Unavailable",
                                    "too many connections: retry later\n"))
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._guard.release()
        for timer in (self._header_timer, self._linger):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._linger = None
        self._body = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._answered:  # 408/431 sent: drop what still comes until the linger ends
            return
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


def parse_listen_address(address: str) -> tuple[str | None, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces); ValueError names what is wrong."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"expected host:port, [ipv6]:port or :port, got {address!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return (host or None), int(port_text)


async def serve(state: ExporterState, *, listen_address: str, interval_seconds: float,
                stop: asyncio.Event | None = None, ssl_context: ssl.SSLContext | None = None,
                middlewares: Sequence[Middleware] = (), limits: ServerLimits | None = None,
                stall_seconds: float | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop`); return the process exit code. `ssl_context` and
    `middlewares` come from `--web.config.file` (exporter/webconfig.py); `limits` from the
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
    guard = ConnectionGuard(limits.max_connections, on_burst_end=trim.schedule)
    server = runner.server
    assert server is not None

    def connection() -> LimitedConnection:
        return LimitedConnection(server, loop=loop, guard=guard, limits=limits)

    listener: asyncio.Server | None = None
    try:
        try:
            listener = await loop.create_server(
                connection, host, port, reuse_address=True, ssl=ssl_context, backlog=128,
                ssl_handshake_timeout=limits.read_header_timeout if ssl_context else None)
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
        if listener is not None:
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
