"""HTTP: `/metrics` serves the last tick's bytes; `/healthz`, `/readyz` and a landing page."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import html
import signal
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from exporter import __version__, logs
from exporter.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, Snapshot
from exporter.sampler import Sampler

log = logs.get("server")

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


@dataclass
class ExporterState:
    """What the handlers read: the sampler's sources and the last snapshot."""

    sampler: Sampler
    telemetry_path: str
    snapshot: Snapshot | None = None


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
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    if request.app[STATE].snapshot is None:
        return web.Response(status=503, text="waiting for the first tick\n")
    return web.Response(text="ready\n")


async def landing(request: web.Request) -> web.Response:
    state = request.app[STATE]
    rows = "".join(
        f"<tr><td>{html.escape(s.name)}</td><td>{'on' if s.status.enabled else 'off'}</td>"
        f"<td>{html.escape(', '.join(sorted(s.status.components)))}</td>"
        f"<td>{html.escape(s.status.detail)}</td></tr>"
        for s in state.sampler.states)
    path = html.escape(state.telemetry_path)
    body = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Footprint exporter</title>"
        "</head><body><h1>Footprint exporter</h1>"
        f"<p>Version {html.escape(__version__)}. Energy and CO2e of this node's workloads.</p>"
        f"<p><a href='{path}'>Metrics</a> &middot; <a href='/healthz'>healthz</a> &middot; "
        "<a href='/readyz'>readyz</a></p><h2>Sources</h2><table border='1' cellpadding='4'>"
        "<tr><th>source</th><th>state</th><th>components</th><th>why</th></tr>"
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
    """Tick every interval in a worker thread; a failed tick is logged and the last bytes stay."""
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tick") as pool:
        next_at = loop.time()
        while not stop.is_set():
            try:
                state.snapshot = await loop.run_in_executor(pool, state.sampler.tick)
            except Exception:
                log.exception("tick failed; serving the previous tick's metrics")
            next_at += interval_seconds
            now = loop.time()
            if next_at < now:
                log.warning(f"tick took longer than --collector.interval ({interval_seconds:g} s)"
                            "; skipping to the next interval")
                next_at = now + interval_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=next_at - now)


def parse_listen_address(address: str) -> tuple[str | None, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces); ValueError names what is wrong."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"expected host:port, [ipv6]:port or :port, got {address!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return (host or None), int(port_text)


async def serve(state: ExporterState, *, listen_address: str, interval_seconds: float,
                stop: asyncio.Event | None = None, ssl_context: ssl.SSLContext | None = None,
                middlewares: Sequence[Middleware] = ()) -> int:
    """Run until SIGTERM/SIGINT (or `stop`); return the process exit code. `ssl_context` and
    `middlewares` come from `--web.config.file` (exporter/webconfig.py)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host, port = parse_listen_address(listen_address)
    runner = web.AppRunner(make_app(state, middlewares), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            log.error(f"cannot listen on {listen_address}: {exc.strerror}; "
                      "choose another --web.listen-address")
            return 1
        for sock in runner.addresses:
            shown = f"[{sock[0]}]" if ":" in str(sock[0]) else sock[0]
            log.info(f"listening on {shown}:{sock[1]}")
        await run_ticks(state, interval_seconds=interval_seconds, stop=stop)
        log.info("stopping: the last tick finished, closing the listener")
        return 0
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
