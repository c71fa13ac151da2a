"""Fake Electricity Maps and WattTime v3 APIs: real HTTP on 127.0.0.1, with their faults.

Each fake serves from its own thread and event loop, so synchronous tests, async tests and a
provider's own background thread can all talk to it. They answer as the real APIs do where the
exporter depends on it:

* `FakeElectricityMaps`: `GET /v3/carbon-intensity/latest?zone=Z` needs header `auth-token`
  (else 401) and answers `zone`, `carbonIntensity` (gCO2eq/kWh), `datetime` (the hour the value
  is for), `updatedAt`, `createdAt`, `emissionFactorType` (`lifecycle`), `isEstimated`,
  `estimationMethod`. An unknown zone is a 404 with an `error` message.
  `GET /v3/carbon-intensity/forecast?zone=Z` (same header) answers `zone`, `forecast` (one
  `carbonIntensity`/`datetime` point per hour from the current hour, the values of
  `forecasts[Z]`) and `updatedAt`; a zone without a forecast is a 404, and `forecast_refusal`
  (401, 403 or 404) answers every forecast request so, as for a plan without forecasts.
* `FakeWattTime`: `GET /login` with HTTP basic auth answers `{"token": ...}`, a new token valid
  for 30 minutes of the fake's clock; `GET /v3/forecast?region=R&signal_type=co2_moer&
  horizon_hours=H` needs `Authorization: Bearer <token>` (else 401), answers 403 for a region the
  account may not see, and returns `data` (one `point_time`/`value` point per 5 minutes from
  now, `value` in lbs CO2/MWh) and `meta` (`units: lbs_co2_per_mwh`, ...). With
  `horizon_hours` above 0 (a forecast), point i has the value `forecasts[R][i // 12]` (hourly
  values) when given, and a region in `forecast_forbidden` answers 403.
* `fallback_zone` (Electricity Maps) answers an unknown zone with another zone's data, as the
  real API falls back to the caller's IP location; `units` (WattTime) changes `meta.units`.

Faults, queued with `fail(kind, times=n)` (or `times=None` for every request until `clear()`),
apply to the data endpoint (`endpoint="login"` for WattTime's login, `endpoint="forecast"` for
the forecasts: Electricity Maps' forecast path, WattTime's `/v3/forecast` with `horizon_hours`
above 0): `401`, `429` (with
`Retry-After`, seconds or an HTTP-date), `500`, `malformed` (a cut-off JSON body), `missing`
(the value field is null), `slow` (answers only after `slow_seconds`; `stop()` releases it).

Hostile answers, as a broken or compromised API could send them (issue 10):

* `huge`: the value field is `huge_value` (1e12; WattTime's is in lbs/MWh);
* `future`: the value is normal but dated `future_time` (9999-12-31) (a forecast's last
  point);
* `huge_body` / `huge_chunked`: HTTP 200 streaming `huge_body_bytes` (100 MiB) of one JSON
  object, with a Content-Length / chunked without one, written 1 MiB at a time so the fake never
  holds it; `streamed` records how many bytes each such answer got out before the client hung
  up, once its handler has ended;
* `compress` (`"gzip"` or `"deflate"`) sends the normal answers compressed, as a real API
  behind a CDN may;
* `bomb`: HTTP 200, `Content-Encoding: gzip` (or `bomb_encoding = "deflate"`), a body of about
  1.04 MB (under 1 MiB) that inflates to `bomb_inflated_bytes` (1 GiB) of JSON whitespace; see
  `compression_bomb()`.

`requests` logs every request with its headers and the status answered; `count(path)` counts
them. Timestamps and token expiry follow `clock` (default `time.time`), so a test can share an
injected clock with the client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import itertools
import json
import struct
import threading
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from tests.fakes.threaded import start_loop_thread, stop_loop_thread

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Body = Callable[[float | None, str | None], dict[str, Any]]
"""An answer's JSON from its value and (None: the usual) timestamp."""
FAULTS = ("401", "429", "500", "malformed", "missing", "slow",
          "huge", "future", "huge_body", "huge_chunked", "bomb")
MIB = 1 << 20
BOMB_SEGMENT = 16 * MIB


@functools.cache
def compression_bomb(inflated_bytes: int = 1 << 30, encoding: str = "gzip") -> bytes:
    """`inflated_bytes` of spaces (a multiple of 16 MiB), gzip (RFC 1952) or zlib (RFC 1950, HTTP
    `deflate`) encoded at deflate's best ratio: 1 GiB gives 1,044,244 bytes.

    Built without ever holding more than 16 MiB: after a full flush the compressor starts afresh,
    so every 16 MiB segment compresses to the same bytes, and the file is a header, that segment
    repeated, an empty final block and the checksum of the whole."""
    if inflated_bytes % BOMB_SEGMENT or encoding not in ("gzip", "deflate"):
        raise ValueError("a multiple of 16 MiB, gzip or deflate")
    chunk = b" " * BOMB_SEGMENT
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    segment = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    final = b"\x03\x00"  # an empty last block with fixed Huffman codes
    count = inflated_bytes // BOMB_SEGMENT
    if encoding == "gzip":
        crc = 0
        for _ in range(count):
            crc = zlib.crc32(chunk, crc)
        header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
        trailer = struct.pack("<II", crc, inflated_bytes & 0xFFFFFFFF)
    else:
        adler = 1
        for _ in range(count):
            adler = zlib.adler32(chunk, adler)
        header = b"\x78\xda"
        trailer = struct.pack(">I", adler)
    return header + segment * count + final + trailer


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    """Header names lower-cased."""
    status: int = 0


@dataclass
class _Fault:
    kind: str
    retry_after: str | None = None


def iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class _FakeAPI:
    name = "fake-api"

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.requests: list[Request] = []
        self.slow_seconds = 30.0
        self.huge_value = 1e12
        self.future_time = "9999-12-31T00:00:00Z"
        self.huge_body_bytes = 100 * MIB
        self.bomb_inflated_bytes = 1 << 30
        self.bomb_encoding = "gzip"
        self.compress: str | None = None
        self.streamed: list[int] = []
        """Bytes each `huge_body`/`huge_chunked` answer wrote before it ended or the client
        hung up (appended when its handler ends)."""
        self._faults: dict[str, list[_Fault]] = {}
        self._sticky: dict[str, _Fault] = {}
        self._lock = threading.Lock()
        self._url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self._url:
            raise RuntimeError(f"{self.name} is not started")
        return self._url

    def start(self) -> str:
        self._loop, self._thread, self._url = start_loop_thread(self._serve, name=self.name)
        return self._url

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._closing is not None:
            loop.call_soon_threadsafe(self._closing.set)
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(timeout=10)
            self._runner = None
        stop_loop_thread(loop, thread)
        self._loop = self._thread = None
        self._url = ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- test controls ---------------------------------------------------------------------

    def fail(self, kind: str, *, times: int | None = 1, retry_after: str | None = "60",
             endpoint: str = "data") -> None:
        """Answer the next `times` requests to `endpoint` with fault `kind` (None: all)."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {FAULTS}")
        fault = _Fault(kind, retry_after)
        with self._lock:
            if times is None:
                self._sticky[endpoint] = fault
            else:
                self._faults.setdefault(endpoint, []).extend([fault] * times)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._sticky.clear()

    def count(self, path: str) -> int:
        return sum(1 for r in self.requests if r.path == path)

    def _answer(self, body: dict[str, Any]) -> web.Response:
        """A normal 200 answer, compressed when `compress` says so."""
        if self.compress is None:
            return web.json_response(body)
        data = json.dumps(body).encode()
        wbits = 16 + zlib.MAX_WBITS if self.compress == "gzip" else zlib.MAX_WBITS
        return web.Response(body=zlib.compress(data, wbits=wbits),
                            headers={"Content-Encoding": self.compress,
                                     "Content-Type": "application/json"})

    def _next_fault(self, endpoint: str) -> _Fault | None:
        with self._lock:
            queue = self._faults.get(endpoint)
            if queue:
                return queue.pop(0)
            return self._sticky.get(endpoint)

    # -- HTTP ------------------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def _serve(self) -> str:
        self._closing = asyncio.Event()
        app = web.Application(middlewares=[self._middleware])
        self._routes(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0,
                               handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        entry = Request(request.method, request.path, dict(request.query),
                        {k.lower(): v for k, v in request.headers.items()})
        self.requests.append(entry)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            entry.status = exc.status
            raise
        entry.status = response.status
        return response

    async def _faulty(self, request: web.Request, endpoint: str, body: Body,
                      normal: float) -> web.StreamResponse | None:
        """The fault's answer, or None to answer normally (after a `slow` wait). `body` builds
        the endpoint's JSON; `normal` is the value it would answer."""
        fault = self._next_fault(endpoint)
        if fault is None:
            return None
        if fault.kind == "401":
            return web.json_response({"error": "Unauthorized"}, status=401)
        if fault.kind == "429":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
            return web.json_response({"error": "Too Many Requests"}, status=429,
                                     headers=headers)
        if fault.kind == "500":
            return web.json_response({"error": "Internal Server Error"}, status=500)
        if fault.kind == "malformed":
            return web.Response(text='{"zone": "DE", "carbonInten', status=200,
                                content_type="application/json")
        if fault.kind == "missing":
            return web.json_response(body(None, None))
        if fault.kind == "huge":
            return web.json_response(body(self.huge_value, None))
        if fault.kind == "future":
            return web.json_response(body(normal, self.future_time))
        if fault.kind in ("huge_body", "huge_chunked"):
            return await self._stream_huge(request, chunked=fault.kind == "huge_chunked")
        if fault.kind == "bomb":
            return web.Response(
                body=compression_bomb(self.bomb_inflated_bytes, self.bomb_encoding),
                headers={"Content-Encoding": self.bomb_encoding,
                         "Content-Type": "application/json"})
        assert fault.kind == "slow" and self._closing is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), self.slow_seconds)
        return None

    async def _stream_huge(self, request: web.Request, *, chunked: bool) -> web.StreamResponse:
        """`huge_body_bytes` of `{"pad": "xxx...x"}`, 1 MiB per write."""
        size = self.huge_body_bytes
        head, tail = b'{"pad": "', b'"}'
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = size
        sent = 0
        try:
            await response.prepare(request)
            await response.write(head)
            sent = len(head)
            filler = b"x" * MIB
            while sent < size - len(tail):
                part = filler[:size - len(tail) - sent]
                await response.write(part)
                sent += len(part)
            await response.write(tail)
            sent += len(tail)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client hung up, as it should
        finally:
            self.streamed.append(sent)
        return response


class FakeElectricityMaps(_FakeAPI):
    """Electricity Maps v3 `carbon-intensity/latest`."""

    name = "fake-electricitymaps"
    PATH = "/v3/carbon-intensity/latest"
    FORECAST_PATH = "/v3/carbon-intensity/forecast"

    def __init__(self, *, token: str = "em-token-5ecret-0123456789",
                 zones: dict[str, float] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock=clock)
        self.token = token
        self.zones: dict[str, float] = dict(zones or {"DE": 302.0, "FR": 32.0})
        self.estimated = False
        self.fallback_zone: str | None = None
        """When set, an unknown zone is answered with this zone's data, as the real API falls
        back to the caller's IP location."""
        self.forecasts: dict[str, list[float]] = {
            "DE": [302.0 - 8.0 * i for i in range(13)] + [216.0 + 10.0 * i for i in range(12)]}
        """Each zone's forecast, one value per hour from the current hour (25 hours)."""
        self.forecast_refusal: int | None = None
        """When set (401, 403, 404), every forecast request is refused so, as on a plan
        without forecasts."""

    def _routes(self, app: web.Application) -> None:
        app.router.add_get(self.PATH, self._latest)
        app.router.add_get(self.FORECAST_PATH, self._forecast)

    def _forecast_body(self, zone: str, values: list[float | None],
                       when: str | None = None) -> dict[str, Any]:
        now = self.clock()
        hour = now - now % 3600
        last = len(values) - 1
        return {
            "zone": zone,
            "forecast": [{"carbonIntensity": value,
                          "datetime": when if when is not None and i == last
                          else iso(hour + 3600 * i)}
                         for i, value in enumerate(values)],
            "updatedAt": iso(now - 60),
        }

    async def _forecast(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("auth-token") != self.token:
            return web.json_response({"error": "Unauthorized"}, status=401)
        if self.forecast_refusal is not None:
            return web.json_response(
                {"error": "Your plan does not include access to the forecast endpoint"},
                status=self.forecast_refusal)
        zone = request.query.get("zone", "")
        values = self.forecasts.get(zone, [302.0] * 25)
        fault = await self._faulty(
            request, "forecast",
            lambda value, when: self._forecast_body(zone, [value] * len(values), when),
            values[0])
        if fault is not None:
            return fault
        if zone not in self.forecasts:
            return web.json_response({"error": f"No forecast for zone '{zone}'."}, status=404)
        return self._answer(self._forecast_body(zone, list(values)))

    def _body(self, zone: str, value: float | None, when: str | None = None) -> dict[str, Any]:
        now = self.clock()
        hour = now - now % 3600
        return {
            "zone": zone,
            "carbonIntensity": value,
            "datetime": iso(hour) if when is None else when,
            "updatedAt": iso(now - 60),
            "createdAt": iso(hour - 3 * 86400),
            "emissionFactorType": "lifecycle",
            "isEstimated": self.estimated,
            "estimationMethod": "TIME_SLICER_AVERAGE" if self.estimated else None,
        }

    async def _latest(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("auth-token") != self.token:
            return web.json_response({"error": "Unauthorized"}, status=401)
        zone = request.query.get("zone", "")
        fault = await self._faulty(request, "data",
                                   lambda value, when: self._body(zone, value, when),
                                   self.zones.get(zone, 302.0))
        if fault is not None:
            return fault
        if zone not in self.zones and self.fallback_zone in self.zones:
            zone = self.fallback_zone
        if zone not in self.zones:
            return web.json_response({"error": f"Zone '{zone}' does not exist."}, status=404)
        return self._answer(self._body(zone, self.zones[zone]))


class FakeWattTime(_FakeAPI):
    """WattTime v3 `/login` and `/v3/forecast`."""

    name = "fake-watttime"
    LOGIN = "/login"
    FORECAST = "/v3/forecast"
    TOKEN_LIFETIME_SECONDS = 1800.0

    def __init__(self, *, username: str = "footprint",
                 password: str = "wt-pa55word-0123456789",
                 moer: dict[str, float] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock=clock)
        self.username = username
        self.password = password
        self.moer: dict[str, float] = dict(moer or {"CAISO_NORTH": 1000.0})
        self.units = "lbs_co2_per_mwh"
        self.tokens: dict[str, float] = {}
        """Issued bearer tokens and when each expires (fake clock)."""
        self.forecasts: dict[str, list[float]] = {}
        """Hourly values (lbs/MWh) of a region's forecast (`horizon_hours` above 0); else the
        region's `moer` throughout."""
        self.forecast_forbidden: set[str] = set()
        """Regions whose forecast (`horizon_hours` above 0) the account may not see."""
        self._serial = itertools.count(1)

    def revoke_tokens(self) -> None:
        """Every issued token stops working (as when one expires early)."""
        self.tokens.clear()

    def _routes(self, app: web.Application) -> None:
        app.router.add_get(self.LOGIN, self._login)
        app.router.add_get(self.FORECAST, self._forecast)

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if self._basic_auth(request.headers.get("Authorization", "")) != (
                self.username, self.password):
            return web.json_response({"error": "Unauthorized"}, status=401)
        fault = await self._faulty(request, "login", lambda value, when: {"token": None}, 0.0)
        if fault is not None:
            return fault
        token = f"wt-bearer-{next(self._serial)}-abcdef0123456789"
        self.tokens[token] = self.clock() + self.TOKEN_LIFETIME_SECONDS
        return self._answer({"token": token})

    @staticmethod
    def _basic_auth(header: str) -> tuple[str, str] | None:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return None
        return user, password

    def _body(self, region: str, value: float | None, horizon_hours: float,
              when: str | None = None, hourly: list[float] | None = None) -> dict[str, Any]:
        now = self.clock()
        start = now - now % 300
        points = int(horizon_hours * 12) + 1
        return {
            "data": [{"point_time": when if when is not None and i == points - 1
                      else iso(start + 300 * i).replace("Z", "+00:00"),
                      "value": value if not hourly else hourly[min(i // 12, len(hourly) - 1)]}
                     for i in range(points)],
            "meta": {
                "data_point_period_seconds": 300,
                "region": region,
                "warnings": [],
                "signal_type": "co2_moer",
                "model": {"date": "2023-03-01"},
                "units": self.units,
                "generated_at_period_seconds": 300,
                "generated_at": iso(start).replace("Z", "+00:00"),
            },
        }

    async def _forecast(self, request: web.Request) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expires = self.tokens.get(token) if scheme == "Bearer" else None
        if expires is None or self.clock() >= expires:
            return web.json_response({"error": "Unauthorized"}, status=401)
        region = request.query.get("region", "")
        try:
            horizon = float(request.query.get("horizon_hours", "24"))
        except ValueError:
            return web.json_response({"error": "bad horizon_hours"}, status=400)
        fault = await self._faulty(
            request, "forecast" if horizon > 0 else "data",
            lambda value, when: self._body(region, value, horizon, when),
            self.moer.get(region, 1000.0))
        if fault is not None:
            return fault
        if region not in self.moer or (horizon > 0 and region in self.forecast_forbidden):
            return web.json_response(
                {"error": f"Forbidden: no access to region {region}"}, status=403)
        if request.query.get("signal_type") != "co2_moer":
            return web.json_response({"error": "unsupported signal_type"}, status=400)
        return self._answer(self._body(region, self.moer[region], horizon,
                                       hourly=self.forecasts.get(region) if horizon > 0
                                       else None))
