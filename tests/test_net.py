"""exporter.net, the HTTP rules the live intensity providers and the report share (issue 21):
bounded bodies (by Content-Length and as they stream), bounded inflation, redirects followed on
their origin only, a deadline for the whole exchange. Both clients are driven against real
HTTP servers on 127.0.0.1 (`http.server` in a thread): aiohttp through `net.get`, urllib through
`net.opener`. tests/test_hostile_intensity.py and tests/test_report_hostile.py hold the same
rules as each caller words them."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
import urllib.error
import urllib.request
import zlib
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler

import aiohttp
import pytest

from exporter import net
from tests.fakes.carbon_apis import compression_bomb
from tests.support.net import TOKEN, Route, Server, redirect, serve

MIB = 1 << 20
GIB = 1 << 30


def streaming(server: Server, total: int) -> Route:
    """`total` bytes without a Content-Length, 64 KiB a write, until the client hangs up."""
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.end_headers()
        sent = 0
        try:
            while sent < total:
                handler.wfile.write(b"x" * (64 << 10))
                sent += 64 << 10
        except OSError:
            pass
        server.streamed.append(sent)
    return answer


OK: Route = (200, {"Content-Length": "2"}, b"ok")


@pytest.fixture
def a() -> Iterator[Server]:
    with serve() as server:
        yield server


@pytest.fixture
def b() -> Iterator[Server]:
    with serve() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with net.client_session(timeout_seconds=10.0, trust_env=False) as s:
        yield s


def fetch_sync(url: str, headers: dict[str, str] | None = None, *, limit: int = net.MAX_BODY_BYTES,
               seconds: float = 10.0) -> bytes:
    """A GET through `net.opener` and `net.read_capped_sync`, within a `net.Deadline`. The
    sockets' own timeout is longer than the deadline, so that a silent server meets the
    deadline (DeadlineExpired), never a read timeout that fires in the worker at the same
    instant (a TimeoutError, on a loaded machine)."""
    deadline = net.Deadline(seconds)

    def work() -> bytes:
        request = urllib.request.Request(url, headers=headers or {})
        with net.opener(deadline).open(request, timeout=seconds + 10) as response:
            deadline.answered = True
            return net.read_capped_sync(response, limit, stopped=lambda: deadline.expired)

    return net.run_within(deadline, work)


# --- bounded bodies ------------------------------------------------------------------------------

async def test_a_body_over_the_limit_by_its_content_length_is_not_read(
        a: Server, session: aiohttp.ClientSession) -> None:
    a.routes["/big"] = (200, {"Content-Length": str(100 * MIB)}, b"x" * 1000)
    with pytest.raises(net.TooLarge) as aio:
        await net.get(session, f"{a.url}/big")
    with pytest.raises(net.TooLarge) as sync:
        fetch_sync(f"{a.url}/big")
    for exc in (aio.value, sync.value):
        assert str(exc) == "100 MiB (at most 1 MiB)"
        assert (exc.declared, exc.limit) == (100 * MIB, MIB)


async def test_a_streamed_body_is_cut_off_past_the_limit(
        a: Server, session: aiohttp.ClientSession) -> None:
    a.routes["/stream"] = streaming(a, 100 * MIB)
    with pytest.raises(net.TooLarge, match=r"^more than 1 MiB$"):
        await net.get(session, f"{a.url}/stream")
    with pytest.raises(net.TooLarge, match=r"^more than 2 MiB$"):
        fetch_sync(f"{a.url}/stream", limit=2 * MIB)
    deadline = time.monotonic() + 10
    while len(a.streamed) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # aiohttp closes its socket on this loop
    # Each client hung up, well short of the 100 MiB (the kernel's buffers took some more).
    assert len(a.streamed) == 2 and all(sent < 50 * MIB for sent in a.streamed), a.streamed


async def test_bodies_within_the_limit_and_a_cut_off_one(
        a: Server, session: aiohttp.ClientSession) -> None:
    a.routes["/exact"] = (200, {}, b"x" * 1000)
    a.routes["/short"] = (200, {"Content-Length": "1000"}, b"x" * 10)
    assert (await net.get(session, f"{a.url}/exact", max_body=1000)).body == b"x" * 1000
    assert fetch_sync(f"{a.url}/exact", limit=1000) == b"x" * 1000
    with pytest.raises(net.CutOff, match=r"^a body cut off after 10 of 1,000 bytes$"):
        fetch_sync(f"{a.url}/short")
    with pytest.raises(aiohttp.ClientPayloadError):  # aiohttp tells this one itself
        await net.get(session, f"{a.url}/short")


# --- inflation -----------------------------------------------------------------------------------

async def test_compressed_answers_are_inflated_within_the_limit(
        a: Server, session: aiohttp.ClientSession) -> None:
    text = b'{"zone": "DE", "carbonIntensity": 302}'
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    a.routes["/raw-deflate"] = (200, {"Content-Encoding": "deflate"}, raw.compress(text)
                                + raw.flush())
    a.routes["/zlib"] = (200, {"Content-Encoding": "deflate"}, zlib.compress(text))
    a.routes["/gzip"] = (200, {"Content-Encoding": "gzip"},
                         zlib.compress(text, wbits=16 + zlib.MAX_WBITS))
    a.routes["/bomb"] = (200, {"Content-Encoding": "gzip"}, compression_bomb(16 * MIB))
    for path in ("/raw-deflate", "/zlib", "/gzip"):
        answer = await net.get(session, f"{a.url}{path}")
        assert (answer.status, answer.body) == (200, text), path
    with pytest.raises(net.TooLarge, match=r"^a gzip body that inflates to more than 1 MiB$"):
        await net.get(session, f"{a.url}/bomb")
    assert all(headers["accept-encoding"] == net.ACCEPT_ENCODING for _, headers in a.seen)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_inflating_a_bomb_never_allocates_more_than_the_cap(encoding: str) -> None:
    bomb = compression_bomb(GIB, encoding)
    tracemalloc.start()
    try:
        with pytest.raises(net.TooLarge) as exc:
            net.inflate(bomb, encoding)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(exc.value) == f"a {encoding} body that inflates to more than 1 MiB"
    print(f"\n{encoding} bomb: inflate() peak allocation {peak / MIB:.2f} MiB")
    # The output kept (the cap and a byte), one chunk in and one out being made (zlib's buffer
    # and the bytes it becomes), the unconsumed input, zlib's 32 KiB window and state.
    assert peak < net.MAX_INFLATED_BYTES + 8 * net.INFLATE_CHUNK_BYTES, peak


def test_inflate_forms_and_faults() -> None:
    text = b'{"zone": "DE", "carbonIntensity": 302}'
    gzip_body = zlib.compress(text, wbits=16 + zlib.MAX_WBITS)
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw_deflate = raw.compress(text) + raw.flush()
    assert net.inflate(gzip_body, "gzip") == text
    assert net.inflate(gzip_body, " X-GZIP ") == text
    assert net.inflate(zlib.compress(text), "deflate") == text  # RFC 1950, as HTTP means it
    assert net.inflate(raw_deflate, "deflate") == text  # raw RFC 1951, as some servers send
    assert net.inflate(text, None) == net.inflate(text, "identity") == text
    assert net.inflate(b"", "gzip") == b""
    exact = zlib.compress(b"x" * 1000, wbits=31)
    assert net.inflate(exact, "gzip", limit=1000) == b"x" * 1000
    faults = {
        "a gzip body that inflates to more than 999 bytes":
            lambda: net.inflate(exact, "gzip", limit=999),
        "more than 999 bytes": lambda: net.inflate(b"x" * 1000, None, limit=999),
        "with Content-Encoding 'br', not gzip or deflate": lambda: net.inflate(text, "br"),
        "a gzip body that does not inflate": lambda: net.inflate(b"\x1f\x8bnot gzip", "gzip"),
        "a gzip body that is cut off": lambda: net.inflate(gzip_body[:-12], "gzip"),
    }
    for message, call in faults.items():
        with pytest.raises(net.BodyError) as exc:
            call()
        assert str(exc.value) == message


# --- origins and redirects -----------------------------------------------------------------------

def test_same_origin_is_scheme_host_and_port() -> None:
    same = [("http://h/a", "http://h:80/b?c"), ("https://H.example/", "HTTPS://h.example:443/x"),
            ("http://[::1]:9090/", "http://[::1]:9090/api")]
    other = [("http://h/", "https://h/"), ("http://h/", "http://h:81/"),
             ("http://h/", "http://g/"), ("http://h/", "/relative"),
             ("http://h:x/", "http://h:x/"), ("http://h/", "ftp://h/")]
    assert all(net.same_origin(x, y) and net.same_origin(y, x) for x, y in same)
    assert not any(net.same_origin(x, y) for x, y in other)
    assert net.origin_text("https://Prom.example/api?q=1") == "https://prom.example:443"
    assert net.origin_text("javascript:alert(1)").startswith("an origin that is not shown")


async def test_a_redirect_on_the_same_origin_is_followed_with_the_headers(
        a: Server, session: aiohttp.ClientSession) -> None:
    a.routes["/old"] = redirect("/new?x=1", 301)
    a.routes["/new"] = OK
    headers = {"Authorization": f"Bearer {TOKEN}"}
    answer = await net.get(session, f"{a.url}/old", params={"zone": "DE"}, headers=headers)
    assert (answer.status, answer.body) == (200, b"ok")
    assert fetch_sync(f"{a.url}/old", headers) == b"ok"
    assert a.paths() == ["/old?zone=DE", "/new?x=1", "/old", "/new?x=1"]
    assert all(h["authorization"] == f"Bearer {TOKEN}" for _, h in a.seen)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_to_another_origin_is_refused_by_both_clients(
        a: Server, b: Server, session: aiohttp.ClientSession, status: int) -> None:
    a.routes["/api"] = redirect(f"{b.url}/api", status)
    b.routes["/api"] = OK
    headers = {"Authorization": f"Bearer {TOKEN}", "auth-token": TOKEN}
    expected = (f"HTTP {status}, a redirect to another origin ({b.url}), which is not "
                "followed (credentials and trust stay with the origin given)")
    with pytest.raises(net.RedirectRefused) as aio:
        await net.get(session, f"{a.url}/api", headers=headers)
    with pytest.raises(net.RedirectRefused) as sync:
        fetch_sync(f"{a.url}/api", headers)
    assert str(aio.value) == str(sync.value) == expected
    assert b.seen == []  # neither the credentials nor the request went there
    assert a.paths() == ["/api", "/api"]


async def test_an_upgrade_to_https_is_another_origin(
        a: Server, session: aiohttp.ClientSession) -> None:
    port = a.url.rsplit(":", 1)[1]
    a.routes["/api"] = redirect(f"https://127.0.0.1:{port}/api")
    with pytest.raises(net.RedirectRefused, match=rf"\(https://127.0.0.1:{port}\)"):
        await net.get(session, f"{a.url}/api")
    with pytest.raises(net.RedirectRefused, match=rf"\(https://127.0.0.1:{port}\)"):
        fetch_sync(f"{a.url}/api")


async def test_a_redirect_loop_ends(a: Server, session: aiohttp.ClientSession) -> None:
    a.routes["/loop"] = redirect("/loop")
    with pytest.raises(net.RedirectRefused, match="after 10 in a row"):
        await net.get(session, f"{a.url}/loop")
    assert len(a.seen) == net.MAX_REDIRECTS + 1
    with pytest.raises(urllib.error.HTTPError, match="infinite loop"):  # urllib's own bound
        fetch_sync(f"{a.url}/loop")


# --- the deadline --------------------------------------------------------------------------------

async def test_the_deadline_bounds_the_whole_exchange(
        a: Server, session: aiohttp.ClientSession) -> None:
    def silent(handler: BaseHTTPRequestHandler) -> None:
        a.release.wait(20)

    def dripping(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.end_headers()
        try:
            while not a.release.wait(0.1):
                handler.wfile.write(b"x")
                handler.wfile.flush()
        except OSError:
            pass

    a.routes["/silent"] = silent
    a.routes["/drip"] = dripping
    for path, answered in (("/silent", False), ("/drip", True)):
        started = time.monotonic()
        with pytest.raises(net.DeadlineExpired) as exc:
            fetch_sync(f"{a.url}{path}", seconds=0.3)
        assert exc.value.answered is answered
        assert time.monotonic() - started < 3
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await net.get(session, f"{a.url}{path}", timeout_seconds=0.3)
        assert time.monotonic() - started < 3
