"""`footprint-exporter report` against a misbehaving Prometheus (issue 19): a whole-query
deadline, secrets the server echoes, bodies past the bounds, nested JSON, terminal escapes in
label values, CSV formulas, and credentials on the command line.

Each test is a probe that got a traceback, a secret, an escape sequence or gigabytes out of the
report before. Servers are on 127.0.0.1: tests.support.report's fake Prometheus, or a raw HTTP/1.1
server for what aiohttp will not send (a body one byte at a time, a reason phrase with a
secret). The deadline tests assert on elapsed time with a wide margin: the server keeps
dripping for 20 s, the report must give up after its 1 s --timeout."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import io
import json
import re
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from exporter import report
from tests.support.net import redirect, serve
from tests.support.report import (
    CO2E_DATA,
    PASSWORD,
    TOKEN,
    FakePrometheus,
    grams,
    prom,
    run,
    secret_file,
    vector,
)

__all__ = ["prom"]  # the fixture, from tests/support/report.py

MIB = 1 << 20
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
"""What must never reach the terminal (newline and tab aside, which the formats use)."""
EMPTY = b'{"status":"success","data":{"resultType":"vector","result":[]}}'
API_KEY = "k3y-0f-the-API-gateway"

Answer = Callable[[str, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_http(answer: Answer) -> AsyncIterator[str]:
    """An HTTP/1.1 server on 127.0.0.1 that reads a request's head and hands its path to
    `answer`, which writes whatever it likes; its URL."""
    writers: set[asyncio.StreamWriter] = set()
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        done.clear()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            await answer(path, reader, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up
        finally:
            writer.close()
            writers.discard(writer)
            if not writers:
                done.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for writer in list(writers):  # ends each answer still writing or waiting
            writer.transport.abort()
        if writers:
            await asyncio.wait_for(done.wait(), 10)


async def until_hung_up(reader: asyncio.StreamReader, seconds: float = 20.0) -> None:
    """Send nothing more until the client hangs up (or `seconds` pass)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reader.read(), seconds)


async def drip(writer: asyncio.StreamWriter, data: bytes, every: float = 0.1) -> None:
    """`data` a byte at a time, `every` seconds apart: each read waits less than --timeout."""
    for byte in data:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(every)


# --- a deadline for the whole query ------------------------------------------------------------

async def test_a_body_sent_a_byte_at_a_time_meets_the_deadline(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Before: --timeout bounded each read, so 63 bytes at 0.3 s each took 19 s a query."""
    async def answer(path: str, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(EMPTY))
        await drip(writer, EMPTY, 0.3)

    async with raw_http(answer) as url:
        started = time.monotonic()
        assert await run("--prometheus", url, "--timeout", "1") == 2
        elapsed = time.monotonic() - started
    assert capsys.readouterr() == ("", (
        f"footprint-exporter report: error: Prometheus at {url} did not finish its answer "
        "within 1 s (--timeout bounds each query, from connecting to the last byte); give a "
        f"longer --timeout, or {report.NARROW}\n"))
    assert elapsed < 5, elapsed


async def test_headers_sent_a_byte_at_a_time_meet_the_deadline(
        capsys: pytest.CaptureFixture[str]) -> None:
    async def answer(path: str, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        await drip(writer, b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 200, 0.1)

    async with raw_http(answer) as url:
        started = time.monotonic()
        assert await run("--prometheus", url, "--timeout", "1") == 2
        elapsed = time.monotonic() - started
    assert capsys.readouterr() == ("", (
        f"footprint-exporter report: error: cannot reach Prometheus at {url}: no answer within "
        "1 s; check --prometheus; is Prometheus running?\n"))
    assert elapsed < 5, elapsed


async def test_a_redirect_body_is_never_read(capsys: pytest.CaptureFixture[str]) -> None:
    """A 302 announcing 10 GiB: the standard library read it whole to discard it (memory, or a
    wait until the per-read timeout); the report follows the redirect at once."""
    answered = json.dumps(CO2E_DATA).encode()

    async def answer(path: str, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        if path.startswith("/api/"):
            writer.write(b"HTTP/1.1 302 Found\r\nLocation: /next" + path.encode()
                         + b"\r\nContent-Length: 10737418240\r\n\r\n" + b"x" * MIB)
            await writer.drain()
            await until_hung_up(reader)
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                     b"%d\r\nConnection: close\r\n\r\n%s" % (len(answered), answered))

    async with raw_http(answer) as url:
        started = time.monotonic()
        assert await run("--prometheus", url, "--timeout", "10", "--format", "csv") == 0
        elapsed = time.monotonic() - started
    assert capsys.readouterr().out.startswith("model,phase,")
    assert elapsed < 8, elapsed


async def test_a_redirect_to_another_origin_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before 0.5.0 the report followed it without the credentials; now it is refused
    (exporter.net, one rule with the intensity providers): the other origin is never asked,
    and the error names it, so that the URL can be fixed."""
    token = secret_file(tmp_path, "token", TOKEN)
    with serve() as prometheus, serve() as elsewhere:
        prometheus.routes["/api/v1/query"] = redirect(f"{elsewhere.url}/api/v1/query", 308)
        elsewhere.routes["/api/v1/query"] = (200, {}, json.dumps(CO2E_DATA).encode())
        assert await run("--prometheus", prometheus.url, "--bearer-token-file", str(token)) == 2
    assert elsewhere.seen == []
    assert [h["authorization"] for _, h in prometheus.seen] == [f"Bearer {TOKEN}"]
    assert capsys.readouterr() == ("", (
        f"footprint-exporter report: error: Prometheus at {prometheus.url} answered HTTP 308, "
        f"a redirect to another origin ({elsewhere.url}), which is not followed (credentials "
        "and trust stay with the origin given); if Prometheus is there, give that URL as "
        "--prometheus\n"))


# --- secrets the server sends back -------------------------------------------------------------

def echoing(status: int) -> dict[str, object]:
    """An error body that quotes every credential, once with a NUL slipped into the token."""
    basic = base64.b64encode(f"footprint:{PASSWORD}".encode()).decode()
    token_split = TOKEN[:6] + "\x00" + TOKEN[6:]
    return {"status": "error", "errorType": "bad_data",
            "error": f"denied: Bearer {TOKEN}, {token_split}, {basic}, {PASSWORD}, "
                     f"X-Api-Key {API_KEY} (HTTP {status})"}


@pytest.mark.parametrize("auth", ["bearer", "basic"])
async def test_secrets_the_server_echoes_are_never_printed(
        prom: FakePrometheus, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        auth: str) -> None:
    prom.co2e = (400, echoing(400))
    creds = (["--bearer-token-file", str(secret_file(tmp_path, "token", TOKEN))]
             if auth == "bearer" else
             ["--basic-auth-user", "footprint", "--basic-auth-password-file",
              str(secret_file(tmp_path, "password", PASSWORD))])
    assert await run("--prometheus", prom.url, *creds, "--header", f"X-Api-Key: {API_KEY}",
                     "--header", "X-Scope-OrgID: tenant-1") == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"footprint-exporter report: error: Prometheus at {prom.url} "
                          "rejected the query: bad_data: denied: ")
    basic = base64.b64encode(f"footprint:{PASSWORD}".encode()).decode()
    secrets = [TOKEN, TOKEN[6:]] if auth == "bearer" else [PASSWORD, basic]
    for text in (*secrets, API_KEY, "\x00"):
        assert text not in err
    assert "[redacted]" in err and err.count("\n") == 1


async def test_a_reason_phrase_with_a_secret_and_escapes_is_cleaned(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def answer(path: str, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        writer.write(f"HTTP/1.1 401 Bearer {TOKEN} \x1b]0;owned\x07\x1b[2J refused\r\n"
                     "Content-Length: 0\r\n\r\n".encode())

    token = secret_file(tmp_path, "token", TOKEN)
    async with raw_http(answer) as url:
        assert await run("--prometheus", url, "--bearer-token-file", str(token)) == 2
    err = capsys.readouterr().err
    assert err == (f"footprint-exporter report: error: Prometheus at {url} answered HTTP 401 "
                   "[redacted] ]0;owned[2J refused to /api/v1/query; check "
                   "--bearer-token-file, or --basic-auth-user and --basic-auth-password-file\n")


@pytest.mark.parametrize("fmt", report.FORMATS)
async def test_a_secret_in_a_label_is_redacted_in_every_format(
        prom: FakePrometheus, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        fmt: str) -> None:
    prom.co2e = (200, vector(*grams(f"stolen-{TOKEN}", "inference", operational=1.0)))
    token = secret_file(tmp_path, "token", TOKEN)
    assert await run("--prometheus", prom.url, "--bearer-token-file", str(token),
                     "--format", fmt) == 0
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    assert "stolen-[redacted]" in out


def test_a_url_with_a_password_is_refused_without_echoing_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        report.main(["--prometheus", f"http://footprint:{PASSWORD}@localhost:9090"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert PASSWORD not in err
    assert "--basic-auth-user and --basic-auth-password-file" in err


# --- bounded answers ----------------------------------------------------------------------------

def many_series(n: int) -> bytes:
    """An instant vector of `n` small series, built as bytes (fast, no dicts)."""
    items = b",".join(b'{"metric":{"model":"m%d"},"value":[0,"1"]}' % i for i in range(n))
    return b'{"status":"success","data":{"resultType":"vector","result":[' + items + b"]}}"


async def test_a_content_length_past_the_bound_is_refused_before_reading(
        capsys: pytest.CaptureFixture[str]) -> None:
    async def answer(path: str, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n{" % (100 * MIB))
        await until_hung_up(reader)

    async with raw_http(answer) as url:
        assert await run("--prometheus", url, "--timeout", "10") == 2
    assert capsys.readouterr().err == (
        f"footprint-exporter report: error: Prometheus at {url} answered 100 MiB (at most 64 "
        f"MiB) to one query, more than the report reads; {report.NARROW}\n")


@pytest.fixture
async def streaming_prom() -> AsyncIterator[tuple[str, list[int]]]:
    """A Prometheus whose every answer is 80 MiB of one JSON object, chunked (no
    Content-Length), 1 MiB a write; the URL and the bytes each answer got out."""
    sent: list[int] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        count = 0
        try:
            await response.prepare(request)
            await response.write(b'{"pad": "')
            for _ in range(80):
                await response.write(b"x" * MIB)
                count += MIB
            await response.write(b'"}')
        except (ConnectionError, RuntimeError):
            pass
        finally:
            sent.append(count)
        return response

    app = web.Application()
    app.router.add_get("/api/v1/query", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", sent
    finally:
        await runner.cleanup()


async def test_a_chunked_body_past_the_bound_is_cut_off(
        streaming_prom: tuple[str, list[int]], capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = streaming_prom
    assert await run("--prometheus", url, "--timeout", "20") == 2
    assert capsys.readouterr().err == (
        f"footprint-exporter report: error: Prometheus at {url} answered more than 64 MiB to "
        f"one query, more than the report reads; {report.NARROW}\n")


async def test_more_series_than_the_bound_are_refused_before_parsing(
        prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    prom.co2e = (200, json.loads(many_series(report.MAX_SERIES + 1)))
    assert await run("--prometheus", prom.url) == 2
    assert capsys.readouterr() == ("", (
        f"footprint-exporter report: error: Prometheus at {prom.url} answered about 100,001 "
        f"series (at most 100,000) to one query, more than the report reads; "
        f"{report.NARROW}\n"))


async def test_a_million_series_cost_megabytes_not_gigabytes(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Before: 10^6 series were parsed whole (5.8 GiB for the report's process)."""
    body = many_series(1_000_000)

    async def answer(path: str, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        writer.write(body)

    async with raw_http(answer) as url:
        tracemalloc.start()
        try:
            assert await run("--prometheus", url, "--timeout", "30") == 2
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert "about 1,000,000 series (at most 100,000)" in capsys.readouterr().err
    # The answer read (once in pieces, once joined) and the server's send buffer: about 3 x
    # 60 MB here, where parsing it took over 1 GB.
    assert peak < 4 * len(body), f"{peak / MIB:.0f} MiB for a {len(body) / MIB:.0f} MiB answer"


async def test_nested_json_is_one_line_not_a_traceback(
        prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    prom.co2e = (200, "[" * 100_000 + "]" * 100_000)
    assert await run("--prometheus", prom.url) == 2
    assert capsys.readouterr() == ("", (
        f"footprint-exporter report: error: Prometheus at {prom.url} answered JSON nested "
        "deeper than 64 levels, as no Prometheus answer is; check --prometheus\n"))


async def test_nested_json_in_an_error_answer_is_not_a_traceback(
        prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    prom.co2e = (400, "[" * 100_000 + "]" * 100_000)
    assert await run("--prometheus", prom.url) == 2
    assert capsys.readouterr().err == (
        f"footprint-exporter report: error: Prometheus at {prom.url} answered HTTP 400 Bad "
        "Request to /api/v1/query; check --prometheus (a Prometheus base URL, such as "
        "http://localhost:9090)\n")


# --- what reaches the terminal and the spreadsheet ----------------------------------------------

HOSTILE_MODEL = "llama\x1b[2J\x1b]0;owned\x07\u202egnp.exe\r\nfake row"


@pytest.mark.parametrize("fmt", report.FORMATS)
async def test_control_characters_never_reach_the_terminal(
        prom: FakePrometheus, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    """A tenant's pod labels (model, phase) carry escape sequences, a bidi override and a
    line break: removed in the table, Markdown and CSV; JSON escapes them."""
    prom.co2e = (200, vector(*grams(HOSTILE_MODEL, "infer\x9bence", operational=1.0)))
    prom.energy = prom.water = (200, vector())
    assert await run("--prometheus", prom.url, "--format", fmt) == 0
    out, err = capsys.readouterr()
    assert not CONTROL.search(out + err), repr(out)
    assert "\r" not in out
    if fmt == "json":
        assert json.loads(out)[0]["model"] == HOSTILE_MODEL
    else:
        assert "llama[2J]0;ownedgnp.exefake row" in out
        assert "inference" in out


async def test_control_characters_never_reach_stderr(
        prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    prom.co2e = (200, vector(*grams(HOSTILE_MODEL, "training", operational=1.0)))
    assert await run("--prometheus", prom.url, "--model", "other") == 1
    err = capsys.readouterr().err
    assert not CONTROL.search(err) and err.count("\n") == 1
    assert err.endswith("models with data: llama[2J]0;ownedgnp.exefake row\n")


async def test_csv_cells_that_would_be_formulas_are_neutralised(
        prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    """OWASP's CSV injection: text cells starting with = + - @ (or a tab or CR before one)
    get a leading quote; numbers, negative ones included, stay numbers."""
    models = ['=HYPERLINK("http://evil","x")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)",
              "\t=1+1", "ok"]
    prom.co2e = (200, vector(*(s for m in models for s in grams(m, "-inference",
                                                                 operational=-5.0))))
    prom.energy = prom.water = (200, vector())
    assert await run("--prometheus", prom.url, "--format", "csv") == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    cells = {row[0]: row for row in rows[1:]}
    assert set(cells) == {"'=HYPERLINK(\"http://evil\",\"x\")", "'+cmd|' /C calc'!A0", "'-2+3",
                          "'@SUM(A1)", "'=1+1", "ok", "TOTAL"}
    assert cells["ok"][1:4] == ["'-inference", "-5.0", "0.0"]
    assert cells["TOTAL"][2] == "-30.0"


def test_csv_text_cells() -> None:
    assert [report.csv_text(t) for t in ("=1", "+1", "-1", "@a", "\t=1", "\r@a", "a=1", "")] \
        == ["'=1", "'+1", "'-1", "'@a", "'=1", "'@a", "a=1", ""]
