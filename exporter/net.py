"""HTTP as Footprint speaks it to servers it does not control (issue 21): the live intensity
APIs (aiohttp, `exporter.intensity.live`) and Prometheus for `footprint-exporter report`
(urllib, `exporter.report.client`), and whatever comes later. Nothing an answer says is
trusted; what follows holds for both clients.

- **Bounded bodies.** A body is read `READ_CHUNK_BYTES` at a time up to a limit the caller
  gives (`MAX_BODY_BYTES` by default): a Content-Length above it is refused before reading, a
  longer body as soon as it passes the limit, and the connection is closed so that the rest is
  never read (`read_capped` for aiohttp, `read_capped_sync` for http.client and urllib).
- **Bounded inflation.** Footprint asks for `ACCEPT_ENCODING` only and inflates answers itself
  (`inflate`), `INFLATE_CHUNK_BYTES` in and at most as much out at a time, stopping one byte
  past its limit (`MAX_INFLATED_BYTES` by default): a gzip bomb costs the limit, never what it
  would inflate to.
- **One exception for a body.** Each of those raises `BodyError` (`TooLarge`, `CutOff`), whose
  text completes "answered ...", with sizes written by `size_text`; each caller maps it to its
  own error (intensity: a `malformed` fault; the report: `ReportError`).
- **Redirects stay on their origin.** A redirect to the same origin (scheme, host and port:
  `same_origin`) is followed, credentials and extra headers included, at most
  `MAX_REDIRECTS` in a row. A redirect to another origin is refused with `RedirectRefused`,
  never followed: not with the credentials (they were given for one origin), and not without
  them either, as the report did before 0.5.0, since the answer of an origin nobody named
  would then be taken for Prometheus' or the API's (and an http:// to https:// upgrade is
  better fixed in the URL than followed silently). The body of a redirect is never read.
- **Timeouts bound the whole exchange**, from name lookup and connecting to the last byte,
  redirects included: `get` under `asyncio.timeout` (and the session's total timeout), and
  for the blocking client a `Deadline` that `run_within` enforces by shutting the exchange's
  sockets down, so that a server sending a byte now and then cannot stretch it.

This module imports nothing from `exporter.intensity`, `exporter.report` or `exporter.server`
(tests/test_layers.py), and aiohttp only when its aiohttp half is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import re
import socket
import ssl
import threading
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from exporter import __version__
from exporter.schema import size_text as size_text

if TYPE_CHECKING:
    import aiohttp

T = TypeVar("T")

MAX_BODY_BYTES = 1 << 20
"""1 MiB: the default bound on a body as read off the wire (after chunked transfer coding,
before gzip or deflate is undone). The live intensity APIs' answers are under 2 KB (Electricity
Maps `latest` about 300 bytes, a WattTime forecast point about 500, its login token about
1 KB): 500 times that is room enough for any change of format, and a bound on what one answer
can cost every node that polls the same API at once. The report passes its own, larger one."""
MAX_INFLATED_BYTES = 1 << 20
"""1 MiB: the default bound on what a gzip or deflate body may inflate to. A bomb (1 MB of gzip
that inflates to 1 GiB) costs this plus a few chunks and zlib's 32 KiB window (1.1 MiB
measured)."""
READ_CHUNK_BYTES = 64 << 10
"""Bodies are read this much at a time, counting against their limit as they come."""
INFLATE_CHUNK_BYTES = 16 << 10
"""Bodies are inflated this much in, and at most this much out, at a time."""
ACCEPT_ENCODING = "gzip, deflate"
"""What `inflate` undoes (not aiohttp's default, which adds br and zstd when their modules are
installed). Another Content-Encoding in an answer is a `BodyError`."""
MAX_REDIRECTS = 10
"""The most redirects followed in a row (urllib's own bound)."""
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = f"footprint-exporter/{__version__}"
DEFAULT_PORTS = {"http": 80, "https": 443}
_SHOWN_HOST = re.compile(r"[A-Za-z0-9._~\[\]:-]{1,253}")


# --- errors ----------------------------------------------------------------------------------

class BodyError(Exception):
    """A body that was refused; str(): what the server answered, a phrase that completes
    "answered ..." (`more than 1 MiB`, `a gzip body that is cut off`), never a byte of it."""


class TooLarge(BodyError):
    """A body over its limit: by its Content-Length (`declared`), or as it was read or
    inflated."""

    def __init__(self, limit: int, declared: int | None = None, what: str = "") -> None:
        self.limit = limit
        self.declared = declared
        if declared is not None:
            text = f"{size_text(declared)} (at most {size_text(limit)})"
        else:
            text = f"{what}more than {size_text(limit)}"
        super().__init__(text)


class CutOff(BodyError):
    """A body that ended before its Content-Length said it would."""

    def __init__(self, received: int, declared: int) -> None:
        self.received = received
        self.declared = declared
        super().__init__(f"a body cut off after {received:,} of {declared:,} bytes")


class RedirectRefused(Exception):
    """A redirect that is not followed: to another origin, or one too many. str(): a phrase
    that completes "answered ...", naming the status and at most the target's origin."""

    def __init__(self, status: int, text: str) -> None:
        self.status = status
        super().__init__(f"HTTP {status}, {text}")


# --- origins and redirects -------------------------------------------------------------------

def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        return scheme, "", None
    return scheme, (parts.hostname or "").lower(), port or DEFAULT_PORTS.get(scheme)


def same_origin(a: str, b: str) -> bool:
    """`a` and `b` have the same scheme, host and port (a missing port is the scheme's own),
    as RFC 6454 defines an origin; a URL whose port is not a number has none."""
    first, second = _origin(a), _origin(b)
    return bool(first[0] and first[1]) and first[2] is not None and first == second


def origin_text(url: str) -> str:
    """`scheme://host:port` of `url` for an error message, or a few words when its host is
    not a plain name or address (a server's Location may hold anything)."""
    scheme, host, port = _origin(url)
    if scheme not in DEFAULT_PORTS or not _SHOWN_HOST.fullmatch(host) or port is None:
        return "an origin that is not shown (not an http or https URL with a plain host name)"
    return f"{scheme}://{host}:{port}"


def _cross_origin(status: int, target: str) -> RedirectRefused:
    return RedirectRefused(status, f"a redirect to another origin ({origin_text(target)}), "
                                   "which is not followed (credentials and trust stay with the "
                                   "origin given)")


class SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, restricted: one to the same origin is followed with its headers,
    one to another origin raises `RedirectRefused`. A redirect's body is never read (the
    standard library would read it whole to discard it, however large it is)."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        if not same_origin(req.full_url, newurl):
            fp.close()
            raise _cross_origin(code, newurl)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        fp.close()  # what the standard library then reads to discard, it reads as nothing
        return new


# --- bodies ----------------------------------------------------------------------------------

def inflate(body: bytes, content_encoding: str | None, *,
            limit: int = MAX_INFLATED_BYTES) -> bytes:
    """`body` with its Content-Encoding (gzip, deflate or none) undone, never producing more
    than `limit` bytes: BodyError when it would inflate beyond that (TooLarge), is cut off or
    corrupt, or has another encoding."""
    coding = (content_encoding or "").strip().lower()
    if coding in ("", "identity"):
        if len(body) > limit:
            raise TooLarge(limit)
        return body
    if coding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif coding == "deflate":
        # RFC 9110 means zlib (RFC 1950); some servers send raw deflate (RFC 1951), which
        # browsers and aiohttp accept too.
        wbits = zlib.MAX_WBITS if _zlib_header(body) else -zlib.MAX_WBITS
    else:
        raise BodyError(f"with Content-Encoding {coding[:40]!r}, not gzip or deflate")
    if not body:
        return body
    inflater = zlib.decompressobj(wbits)
    parts: list[bytes] = []  # not a bytearray, which over-allocates as it grows
    size = 0
    view = memoryview(body)
    pos = 0
    pending: bytes | memoryview = b""
    try:
        while True:
            # One chunk of input and at most one of output at a time, never more in all than
            # the limit and a byte: a bomb costs the limit and a few chunks.
            if not pending and pos < len(view):
                pending = view[pos:pos + INFLATE_CHUNK_BYTES]
                pos += INFLATE_CHUNK_BYTES
            want = min(INFLATE_CHUNK_BYTES, limit + 1 - size)
            data = inflater.decompress(pending, want)
            pending = inflater.unconsumed_tail
            parts.append(data)
            size += len(data)
            if size > limit:
                raise TooLarge(limit, what=f"a {coding} body that inflates to ")
            if inflater.eof or (not pending and pos >= len(view) and len(data) < want):
                break  # the end, or cut off: all input read and no output held back
    except zlib.error:
        raise BodyError(f"a {coding} body that does not inflate") from None
    if not inflater.eof:
        raise BodyError(f"a {coding} body that is cut off")
    return b"".join(parts)


def _zlib_header(data: bytes) -> bool:
    """A zlib (RFC 1950) header: deflate method, and the check bits."""
    return len(data) >= 2 and data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0


def _declared(value: str | None) -> int | None:
    try:
        length = int(value or "")
    except ValueError:
        return None
    return length if length >= 0 else None


def read_capped_sync(response: http.client.HTTPResponse, limit: int = MAX_BODY_BYTES, *,
                     stopped: Callable[[], bool] = lambda: False) -> bytes:
    """The whole body of an http.client (or urllib) response, read `READ_CHUNK_BYTES` at a
    time: TooLarge when its Content-Length is over `limit` (nothing read) or once more than
    `limit` bytes came; CutOff when it ends short of its Content-Length. Reading ends early,
    with what came, once `stopped()` (a deadline that passed: the caller reports that)."""
    declared = _declared(response.headers.get("Content-Length"))
    if declared is not None and declared > limit:
        raise TooLarge(limit, declared)
    parts: list[bytes] = []
    size = 0
    while not stopped() and (chunk := response.read(READ_CHUNK_BYTES)):
        size += len(chunk)
        if size > limit:
            raise TooLarge(limit)
        parts.append(chunk)
    if declared is not None and size < declared and not stopped():
        raise CutOff(size, declared)
    return b"".join(parts)


async def read_capped(resp: aiohttp.ClientResponse, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body of an aiohttp response, read `READ_CHUNK_BYTES` at a time: TooLarge once it
    passes `limit` (or its Content-Length says it would), after closing the connection so
    that the rest is never read. (aiohttp itself raises ClientPayloadError for a body cut off
    short of its Content-Length.)"""
    length = resp.content_length
    if length is not None and length > limit:
        resp.close()
        raise TooLarge(limit, length)
    body = bytearray()
    async for chunk in resp.content.iter_chunked(READ_CHUNK_BYTES):
        body += chunk
        if len(body) > limit:
            resp.close()
            raise TooLarge(limit)
    return bytes(body)


# --- aiohttp ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Answer:
    """One answer: its status, headers, and body, inflated."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def client_session(*, timeout_seconds: float, trust_env: bool = True) -> aiohttp.ClientSession:
    """An aiohttp session for `get`: each request bounded by `timeout_seconds` in all, our
    User-Agent, `ACCEPT_ENCODING` and aiohttp's own decompression off (`inflate` does it)."""
    import aiohttp

    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout_seconds),
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING},
        auto_decompress=False, trust_env=trust_env)


async def get(session: aiohttp.ClientSession, url: str, *,
              params: Mapping[str, str] | None = None,
              headers: Mapping[str, str] | None = None,
              timeout_seconds: float | None = None,
              max_body: int = MAX_BODY_BYTES, max_inflated: int = MAX_INFLATED_BYTES,
              max_redirects: int = MAX_REDIRECTS) -> Answer:
    """One GET of `url`, redirects to the same origin followed (with `headers`), its body
    read within `max_body` and inflated within `max_inflated`, the whole exchange within
    `timeout_seconds` (None: the session's timeout for each request).

    Raises BodyError, RedirectRefused, TimeoutError, and aiohttp.ClientError for what the
    transport says (the caller shows its class name at most: some carry the request's
    headers)."""
    async with asyncio.timeout(timeout_seconds):
        query: Mapping[str, str] | None = params
        for hop in range(max_redirects + 1):
            async with session.get(url, params=query, headers=headers,
                                   allow_redirects=False) as resp:
                location = resp.headers.get("Location")
                if resp.status in REDIRECT_CODES and location is not None:
                    resp.close()  # its body is never read
                    target = urllib.parse.urljoin(str(resp.url), location)
                    if not same_origin(str(resp.url), target):
                        raise _cross_origin(resp.status, target)
                    if hop == max_redirects:
                        raise RedirectRefused(resp.status, f"a redirect after {max_redirects} "
                                                           "in a row, which is not followed")
                    url, query = target, None  # the Location holds its own query
                    continue
                body = await read_capped(resp, max_body)
                return Answer(resp.status, resp.headers,
                              inflate(body, resp.headers.get("Content-Encoding"),
                                      limit=max_inflated))
    raise AssertionError("unreachable")  # pragma: no cover


# --- urllib, within a deadline ---------------------------------------------------------------

class DeadlineExpired(Exception):
    """`run_within`'s work did not finish in time; `answered`: the status line and headers had
    come (a slow answer rather than none)."""

    def __init__(self, answered: bool) -> None:
        super().__init__("answered, but too slowly" if answered else "no answer")
        self.answered = answered


class Deadline:
    """The deadline of one exchange, from name lookup and connecting to the last byte,
    redirects included (issue 19: a per-read timeout alone lets a server that sends a byte now
    and then hold a client for ever). `run_within` runs the exchange in a worker thread that
    the caller waits for until the deadline; then the sockets the exchange opened (through
    `opener`) are shut down, which ends any read in progress, and the worker stops at its next
    chunk (`read_capped_sync(stopped=...)`)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.answered = False
        """The status line and headers have come: a timeout is a slow answer, not none."""
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []

    def watch(self, sock: socket.socket) -> None:
        """Shut `sock` down when the deadline passes (at once if it has)."""
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def run_within(deadline: Deadline, work: Callable[[], T], *, name: str = "http") -> T:
    """`work()` in a daemon worker thread, waited for at most `deadline.seconds`; its result,
    or what it raised. Past the deadline, the deadline expires (its sockets are shut down) and
    DeadlineExpired is raised; the worker ends on its own."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # handed to the caller's thread
            outcome.append((False, exc))

    worker = threading.Thread(target=run, name=name, daemon=True)
    worker.start()
    worker.join(deadline.seconds)
    if not outcome:
        deadline.expire()
        raise DeadlineExpired(deadline.answered)
    ok, result = outcome[0]
    if not ok:
        raise result
    return cast(T, result)


class _HTTPConnection(http.client.HTTPConnection):
    """A connection whose socket the deadline watches once connected."""

    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self._deadline.watch(self.sock)


class _HTTPSConnection(_HTTPConnection, http.client.HTTPSConnection):
    """The same over TLS: `connect` is HTTPSConnection's (the TCP connection, then the TLS
    handshake), and the socket watched the TLS one it leaves."""


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPConnection, deadline=self._deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline, context: ssl.SSLContext | None) -> None:
        super().__init__(context=context)
        self._deadline = deadline
        self._tls = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPSConnection, deadline=self._deadline), req,
                            context=self._tls)


def opener(deadline: Deadline,
           context: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    """A urllib opener whose sockets `deadline` watches, with TLS `context` (None: the
    system's CAs) and `SameOriginRedirects`."""
    return urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(deadline, context),
                                       SameOriginRedirects())
