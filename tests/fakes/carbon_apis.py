"""Fake Electricity Maps and WattTime v3 APIs: real HTTP on 127.0.0.1, with their faults.

Each fake serves from its own thread and event loop, so synchronous tests, async tests and a
provider's own background thread can all talk to it. They answer as the real APIs do where the
exporter depends on it:

* `FakeElectricityMaps`: `GET /v3/carbon-intensity/latest?zone=Z` needs header `auth-token`
  (else 401) and answers `zone`, `carbonIntensity` (gCO2eq/kWh), `datetime` (the hour the value
  is for), `updatedAt`, `createdAt`, `emissionFactorType` (`lifecycle`), `isEstimated`,
  `estimationMethod`. An unknown zone is a 404 with an `error` message.
* `FakeWattTime`: `GET /login` with HTTP basic auth answers `{"token": ...}`, a new token valid
  for 30 minutes of the fake's clock; `GET /v3/forecast?region=R&signal_type=co2_moer&
  horizon_hours=H` needs `Authorization: Bearer <token>` (else 401), answers 403 for a region the
  account may not see, and returns `data` (one `point_time`/`value` point per 5 minutes from
  now, `value` in lbs CO2/MWh) and `meta` (`units: lbs_co2_per_mwh`, ...).
* `fallback_zone` (Electricity Maps) answers an unknown zone with another zone's data, as the
  real API falls back to the caller's IP location; `units` (WattTime) changes `meta.units`.

Faults, queued with `fail(kind, times=n)` (or `times=None` for every request until `clear()`),
apply to the data endpoint (`endpoint="login"` for WattTime's login): `401`, `429` (with
`Retry-After`, seconds or an HTTP-date), `500`, `malformed` (a cut-off JSON body), `missing`
(the value field is null), `slow` (answers only after `slow_seconds`; `stop()` releases it).

`requests` logs every request with its headers and the status answered; `count(path)` counts
them. Timestamps and token expiry follow `clock` (default `time.time`), so a test can share an
injected clock with the client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from tests.fakes.threaded import start_loop_thread, stop_loop_thread

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FAULTS = ("401", "429", "500", "malformed", "missing", "slow")


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

    async def _faulty(self, endpoint: str, missing_body: dict[str, Any]) -> web.Response | None:
        """The fault's answer, or None to answer normally (after a `slow` wait)."""
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
            return web.json_response(missing_body)
        assert fault.kind == "slow" and self._closing is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), self.slow_seconds)
        return None


class FakeElectricityMaps(_FakeAPI):
    """Electricity Maps v3 `carbon-intensity/latest`."""

    name = "fake-electricitymaps"
    PATH = "/v3/carbon-intensity/latest"

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

    def _routes(self, app: web.Application) -> None:
        app.router.add_get(self.PATH, self._latest)

    def _body(self, zone: str, value: float | None) -> dict[str, Any]:
        now = self.clock()
        hour = now - now % 3600
        return {
            "zone": zone,
            "carbonIntensity": value,
            "datetime": iso(hour),
            "updatedAt": iso(now - 60),
            "createdAt": iso(hour - 3 * 86400),
            "emissionFactorType": "lifecycle",
            "isEstimated": self.estimated,
            "estimationMethod": "TIME_SLICER_AVERAGE" if self.estimated else None,
        }

    async def _latest(self, request: web.Request) -> web.Response:
        if request.headers.get("auth-token") != self.token:
            return web.json_response({"error": "Unauthorized"}, status=401)
        zone = request.query.get("zone", "")
        fault = await self._faulty("data", self._body(zone, None))
        if fault is not None:
            return fault
        if zone not in self.zones and self.fallback_zone in self.zones:
            zone = self.fallback_zone
        if zone not in self.zones:
            return web.json_response({"error": f"Zone '{zone}' does not exist."}, status=404)
        return web.json_response(self._body(zone, self.zones[zone]))


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
        self._serial = itertools.count(1)

    def revoke_tokens(self) -> None:
        """Every issued token stops working (as when one expires early)."""
        self.tokens.clear()

    def _routes(self, app: web.Application) -> None:
        app.router.add_get(self.LOGIN, self._login)
        app.router.add_get(self.FORECAST, self._forecast)

    async def _login(self, request: web.Request) -> web.Response:
        if self._basic_auth(request.headers.get("Authorization", "")) != (
                self.username, self.password):
            return web.json_response({"error": "Unauthorized"}, status=401)
        fault = await self._faulty("login", {"token": None})
        if fault is not None:
            return fault
        token = f"wt-bearer-{next(self._serial)}-abcdef0123456789"
        self.tokens[token] = self.clock() + self.TOKEN_LIFETIME_SECONDS
        return web.json_response({"token": token})

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

    def _body(self, region: str, value: float | None, horizon_hours: float) -> dict[str, Any]:
        now = self.clock()
        start = now - now % 300
        points = int(horizon_hours * 12) + 1
        return {
            "data": [{"point_time": iso(start + 300 * i).replace("Z", "+00:00"),
                      "value": value} for i in range(points)],
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

    async def _forecast(self, request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expires = self.tokens.get(token) if scheme == "Bearer" else None
        if expires is None or self.clock() >= expires:
            return web.json_response({"error": "Unauthorized"}, status=401)
        region = request.query.get("region", "")
        try:
            horizon = float(request.query.get("horizon_hours", "24"))
        except ValueError:
            return web.json_response({"error": "bad horizon_hours"}, status=400)
        fault = await self._faulty("data", self._body(region, None, horizon))
        if fault is not None:
            return fault
        if region not in self.moer:
            return web.json_response(
                {"error": f"Forbidden: no access to region {region}"}, status=403)
        if request.query.get("signal_type") != "co2_moer":
            return web.json_response({"error": "unsupported signal_type"}, status=400)
        return web.json_response(self._body(region, self.moer[region], horizon))
