"""What a live grid-intensity provider shares: a cached reading, polling, faults, its own thread.

A provider fetches in the background and keeps the last good value; `reading()` and `up` only
read that cache, so the tick (a worker thread) never waits on the network. The fetching runs on
an event loop of its own in a daemon thread (`start()` / `stop()`): the exporter builds its
sources before `asyncio.run` starts the server's loop, and a slow API or DNS lookup can then
never delay a scrape. Tests drive `poll()` directly on their own loop with an injected clock.

Every answer is distrusted (issue 10): `exporter.net` reads its body in chunks up to
`net.MAX_BODY_BYTES` (1 MiB) and inflates it (gzip, deflate) up to `net.MAX_INFLATED_BYTES`
(1 MiB), so neither a huge body nor a compression bomb can take the exporter's memory; a
value above `MAX_GRAMS_PER_KWH` or dated more than `FUTURE_TOLERANCE_SECONDS` ahead of the
node's clock is refused. Each is a `malformed` fault: the last good value stays, `up` goes
false, the fallback chain applies. JSON is parsed by `exporter.boundedjson` (issue 19): a body
nested deeper than 64 levels is a `malformed` fault too, never a RecursionError. A redirect is
followed on the API's origin only (`exporter.net`): one to another origin is an `http` fault,
so a token never leaves the origin it was given for.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp

from exporter import boundedjson, logs, net
from exporter.carbon import MAX_GRAMS_PER_KWH, Intensity
from exporter.intensity.credentials import Secret
from exporter.intensity.faults import Fault as Fault
from exporter.intensity.faults import iso as _iso
from exporter.intensity.forecast import MAX_FORECAST_POINTS

if TYPE_CHECKING:
    from exporter.intensity.forecast import Forecast

BACKOFF_START_SECONDS = 30.0
"""First retry after a timeout, 5xx or malformed answer; doubles up to the refresh period."""
MAX_RETRY_AFTER_SECONDS = 86_400.0
"""A longer Retry-After is taken as a day: the value in force goes stale and falls back anyway."""
LOG_PERIOD_SECONDS = 3600.0
"""The same fault is logged again at most this often; a refused credential only once, until a
fetch works again."""
FAULT_KINDS = ("auth", "rate", "timeout", "network", "http", "malformed", "internal")

FUTURE_TOLERANCE_SECONDS = 600.0
"""A value may be dated at most 10 minutes ahead of the exporter's clock. A live value is for
the past: Electricity Maps' `datetime` is the start of the hour the value is for, WattTime's
first `point_time` the current 5-minute period (or, at a period boundary, the next one); the
rest is clock skew between the node and the API (NTP keeps it under a second, an unsynced node
may drift minutes). A later date would keep the value in force for ever, as it never ages past
`max_age_seconds`, so it is refused; the fallback chain also never takes such a reading as
fresh."""


@dataclass(frozen=True, slots=True)
class IntensityReading:
    """One good answer of a live provider."""

    intensity: Intensity
    observed_unix: float
    """The time the value is for (Electricity Maps `datetime`, WattTime `point_time`)."""
    fetched_unix: float
    """When the exporter received it."""
    basis: str
    """`lifecycle` or `direct` (average of the grid mix), or `marginal` (WattTime MOER)."""
    estimated: bool = False


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    retry_after: str | None


def retry_after_seconds(value: str | None, now_unix: float) -> float | None:
    """Retry-After as delta-seconds or an HTTP-date (RFC 9110 10.2.3); None when absent or bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_unix)


def parse_time(value: object, field: str) -> float:
    """An ISO 8601 timestamp as Unix seconds (naive means UTC); Fault when it is not one."""
    if not isinstance(value, str):
        raise Fault("malformed", f"answered without a usable {field!r}")
    try:
        when = datetime.fromisoformat(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    except (ValueError, OverflowError):
        raise Fault("malformed", f"answered a {field!r} that is not an ISO 8601 time") from None


def parse_number(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Fault("malformed", f"answered without a numeric {field!r}")
    if value < 0:
        raise Fault("malformed", f"answered a negative {field!r}")
    return float(value)


def forecast_points(body: Mapping[str, Any], key: str, time_field: str, value_field: str,
                    scale: float = 1.0) -> list[tuple[float, float]]:
    """The (period start, value x `scale`) points of the list `body[key]`, each an object with
    `time_field` and `value_field`; Fault (malformed) when it is no such list or too long."""
    points = body.get(key)
    if not isinstance(points, list):
        raise Fault("malformed", f"answered without a {key!r} list")
    if len(points) > MAX_FORECAST_POINTS:
        raise Fault("malformed", f"answered a forecast of {len(points)} points (at most "
                                 f"{MAX_FORECAST_POINTS})")
    parsed = []
    for point in points:
        if not isinstance(point, dict):
            raise Fault("malformed", "answered a forecast point that is not an object")
        parsed.append((parse_time(point.get(time_field), time_field),
                       parse_number(point.get(value_field), value_field) * scale))
    return parsed


def check_reading(reading: IntensityReading, now_unix: float) -> IntensityReading:
    """`reading` if it is plausible: Fault (malformed) for an intensity outside 0 to
    `MAX_GRAMS_PER_KWH`, or a time more than `FUTURE_TOLERANCE_SECONDS` ahead of `now_unix`."""
    grams = reading.intensity.grams_per_kwh
    if not (math.isfinite(grams) and 0.0 <= grams <= MAX_GRAMS_PER_KWH):
        where = "above the" if grams > MAX_GRAMS_PER_KWH else "outside the 0 to"
        raise Fault("malformed", f"answered {grams:g} gCO2e/kWh, {where} "
                                 f"{MAX_GRAMS_PER_KWH:g} gCO2e/kWh bound (no grid emits that)")
    ahead = reading.observed_unix - now_unix
    if not ahead <= FUTURE_TOLERANCE_SECONDS:
        raise Fault("malformed", f"answered a value dated {_iso(reading.observed_unix)}, "
                                 f"{ahead:.0f} s ahead of this node's clock (at most "
                                 f"{FUTURE_TOLERANCE_SECONDS:g} s allowed; is the clock right?)")
    return reading


def parse_json_object(response: Response) -> Mapping[str, Any]:
    """The body's JSON object, parsed within `net.MAX_INFLATED_BYTES` and
    `boundedjson.DEFAULT_MAX_DEPTH` levels; Fault (malformed) for anything else (a body nested
    thousands of levels deep included, which json.loads alone turns into RecursionError)."""
    try:
        body = boundedjson.loads(response.body, max_bytes=net.MAX_INFLATED_BYTES,
                                 what="its body")
    except boundedjson.JsonError as exc:
        if exc.reason == "syntax":
            raise Fault("malformed", "answered HTTP 200 with a body that is not JSON") from None
        raise Fault("malformed", f"answered HTTP 200, but {exc}") from None
    if not isinstance(body, dict):
        raise Fault("malformed", "answered HTTP 200 with JSON that is not an object")
    return body


class LiveProvider:
    """The polling, caching and fault handling shared by the live providers."""

    name: ClassVar[str] = "live"

    def __init__(self, *, base_url: str, zone: str, timeout_seconds: float,
                 refresh_seconds: float, clock: Callable[[], float] = time.time,
                 trust_env: bool = True, log: logging.Logger | None = None,
                 forecast: bool = False) -> None:
        if not zone:
            raise ValueError(f"{self.name}: a zone is required")
        if not timeout_seconds > 0 or not refresh_seconds > 0:
            raise ValueError(f"{self.name}: timeout and refresh must be positive")
        self.base_url = base_url.rstrip("/")
        self.zone = zone
        self.timeout_seconds = float(timeout_seconds)
        self.refresh_seconds = float(refresh_seconds)
        self._clock = clock
        self._trust_env = trust_env
        self._log = log or logs.get("intensity")
        self._throttle = logs.Throttle(self._log, period_seconds=LOG_PERIOD_SECONDS, clock=clock,
                                      source="intensity")
        self._auth_throttle = logs.Throttle(self._log, period_seconds=math.inf, clock=clock,
                                           source="intensity")
        self._lock = threading.Lock()
        self._reading: IntensityReading | None = None
        self._up = False
        self._failures = 0
        self._next_at = -math.inf
        self._session: aiohttp.ClientSession | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self.forecasting = forecast
        """Also fetch the provider's forecast (exporter.intensity.forecast), less often."""
        self._forecast_value: Forecast | None = None
        self._forecast_next_at = -math.inf
        self._forecast_failures = 0

    # -- what the tick reads (any thread) ---------------------------------------------------

    def reading(self) -> IntensityReading | None:
        """The last good value, however old; None until the first fetch succeeds."""
        with self._lock:
            return self._reading

    @property
    def up(self) -> bool:
        """The last fetch worked."""
        with self._lock:
            return self._up

    def forecast(self) -> Forecast | None:
        """The last good forecast, however old; None without one (not asked for, refused by
        the plan, or not fetched yet)."""
        with self._lock:
            return self._forecast_value

    # -- one fetch -------------------------------------------------------------------------

    async def poll(self) -> float:
        """Fetch if one is due (not before a Retry-After or backoff ends); returns the seconds
        until the next one is due. Faults are logged (throttled) and never raised.

        With `forecasting`, the forecast is fetched too when due, after a current value that
        worked (a refused credential is not taken for a plan without forecasts); its faults
        never touch the current value or `up`."""
        now = self._clock()
        delay = self._next_at - now
        if now >= self._next_at:
            try:
                reading = check_reading(await self._fetch(), self._clock())
            except Fault as fault:
                delay = self._failed(fault)
            else:
                delay = self._succeeded(reading)
            self._next_at = self._clock() + delay
        if self.forecasting and self.up:
            if self._clock() >= self._forecast_next_at:
                self._forecast_next_at = self._clock() + await self._poll_forecast()
            delay = min(delay, max(0.0, self._forecast_next_at - self._clock()))
        return delay

    async def _poll_forecast(self) -> float:
        """Fetch the forecast; the seconds until the next fetch. A refusal (no forecast on
        this plan or zone) clears it and is logged once; another fault keeps the last one,
        which `forecast.view` stops publishing once it is too old."""
        from exporter.intensity.forecast import (
            FORECAST_REFRESH_SECONDS,
            FORECAST_REFUSED_RETRY_SECONDS,
        )
        try:
            forecast = await self._fetch_forecast()
        except Fault as fault:
            if fault.kind == "refused":
                with self._lock:
                    self._forecast_value = None
                self._forecast_failures = 0
                self._auth_throttle.fault("forecast", self._redact(
                    f"{self.name}: no forecast for {self.zone}: {fault.message}; the forecast "
                    f"gauges stay absent, the current value is unaffected; asking again in "
                    f"{FORECAST_REFUSED_RETRY_SECONDS:.0f} s"))
                return FORECAST_REFUSED_RETRY_SECONDS
            self._forecast_failures += 1
            refresh = max(FORECAST_REFRESH_SECONDS, self.refresh_seconds)
            delay = (min(fault.retry_after, MAX_RETRY_AFTER_SECONDS)
                     if fault.retry_after is not None else
                     min(refresh, BACKOFF_START_SECONDS * 2.0 ** min(self._forecast_failures - 1,
                                                                      16)))
            self._throttle.fault(f"forecast-{fault.kind}", self._redact(
                f"{self.name}: forecast: {fault.message} (zone {self.zone}); keeping the last "
                f"forecast, if any; next try in {delay:.0f} s"))
            return delay
        with self._lock:
            self._forecast_value = forecast
        self._forecast_failures = 0
        message = (f"{self.name}: fetching the forecast of {self.zone} works again "
                   f"({len(forecast.points)} points)")
        self._auth_throttle.recovered("forecast", message)
        for kind in FAULT_KINDS:
            self._throttle.recovered(f"forecast-{kind}", message)
        return max(FORECAST_REFRESH_SECONDS, self.refresh_seconds)

    async def close(self) -> None:
        """Close the HTTP session (on the loop that used it)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _succeeded(self, reading: IntensityReading) -> float:
        with self._lock:
            self._reading = reading
            self._up = True
        self._failures = 0
        for kind in FAULT_KINDS:
            throttle = self._auth_throttle if kind == "auth" else self._throttle
            throttle.recovered(kind, f"{self.name}: fetching {self.zone} works again "
                                     f"({reading.intensity.grams_per_kwh:g} gCO2e/kWh)")
        return self.refresh_seconds

    def _failed(self, fault: Fault) -> float:
        with self._lock:
            self._up = False
            last = self._reading
        self._failures += 1
        if fault.retry_after is not None:
            delay = min(fault.retry_after, MAX_RETRY_AFTER_SECONDS)
        elif fault.kind == "auth":
            delay = self.refresh_seconds
        else:
            delay = min(self.refresh_seconds,
                        BACKOFF_START_SECONDS * 2.0 ** min(self._failures - 1, 16))
        kept = ("no value yet" if last is None else
                f"keeping {last.intensity.grams_per_kwh:g} gCO2e/kWh from "
                f"{_iso(last.fetched_unix)}")
        throttle = self._auth_throttle if fault.kind == "auth" else self._throttle
        throttle.fault(fault.kind, self._redact(
            f"{self.name}: {fault.message} (zone {self.zone}); {kept}; "
            f"next try in {delay:.0f} s"), err=self._redact(fault.message))
        return delay

    async def _fetch(self) -> IntensityReading:
        raise NotImplementedError

    async def _fetch_forecast(self) -> Forecast:
        """The provider's forecast; Fault `refused` when its plan or zone has none."""
        raise Fault("refused", "this provider offers no forecast")

    async def _get(self, url: str, *, params: Mapping[str, str] | None = None,
                   headers: Mapping[str, str] | None = None) -> Response:
        """One GET through `net.get`: its body read and inflated within `net.MAX_BODY_BYTES`
        and `net.MAX_INFLATED_BYTES`, redirects followed on the same origin only, all of it
        within the timeout; what fails becomes a Fault without the request's headers."""
        if self._session is None:
            self._session = net.client_session(timeout_seconds=self.timeout_seconds,
                                               trust_env=self._trust_env)
        try:
            answer = await net.get(self._session, url, params=params, headers=headers,
                                   timeout_seconds=self.timeout_seconds)
        except net.BodyError as exc:
            raise Fault("malformed", f"answered {exc}") from None
        except net.RedirectRefused as exc:
            raise Fault("http", f"answered {exc}") from None
        except TimeoutError:
            raise Fault("timeout", f"did not answer within {self.timeout_seconds:g} s") from None
        except aiohttp.ClientError as exc:
            # Only the class name: some aiohttp errors carry the request, headers included.
            raise Fault("network", f"request failed ({type(exc).__name__})") from None
        return Response(answer.status, answer.body, answer.headers.get("Retry-After"))

    def _check(self, response: Response) -> None:
        """Turn a non-200 answer into a Fault (401 and 403 are the caller's to explain)."""
        status = response.status
        if status == 200:
            return
        wait = retry_after_seconds(response.retry_after, self._clock())
        if status == 429:
            raise Fault("rate", "rate limited (HTTP 429)"
                        + ("" if wait is None else f", Retry-After {wait:.0f} s"),
                        retry_after=wait)
        if status >= 500:
            raise Fault("http", f"answered HTTP {status}", retry_after=wait)
        raise Fault("http", f"answered HTTP {status}{_api_message(response)}")

    def _secrets(self) -> Iterable[Secret]:
        return ()

    def _redact(self, text: str) -> str:
        for secret in self._secrets():
            text = secret.redact(text)
        return text

    # -- background thread -----------------------------------------------------------------

    def start(self) -> None:
        """Fetch now and then every refresh period, in a daemon thread with its own loop."""
        if self._thread is not None:
            return
        ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,),
                                        name=f"intensity-{self.name}", daemon=True)
        self._thread.start()
        ready.wait(5.0)

    def stop(self, timeout_seconds: float = 5.0) -> None:
        """Cancel a fetch in flight, close the session and join the thread."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout_seconds)
        self._thread = None

    def _thread_main(self, ready: threading.Event) -> None:
        asyncio.run(self._serve(ready))

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        task = asyncio.create_task(self._poll_forever())
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.close()
            self._loop = None

    async def _poll_forever(self) -> None:
        while True:
            try:
                delay = await self.poll()
            except Exception as exc:  # a bug must not end the refreshes for good
                with self._lock:
                    self._up = False
                self._throttle.fault("internal", self._redact(
                    f"{self.name}: unexpected {type(exc).__name__} while fetching; "
                    "keeping the last value"))
                delay = self.refresh_seconds
                self._next_at = self._clock() + delay
            await asyncio.sleep(max(0.0, min(delay, MAX_RETRY_AFTER_SECONDS)))


def _api_message(response: Response) -> str:
    """The API's own short error text (`message` or `error`), if it sent one."""
    try:
        body = boundedjson.loads(response.body, max_bytes=net.MAX_INFLATED_BYTES,
                                 what="its body")
    except boundedjson.JsonError:
        return ""
    if isinstance(body, dict):
        for key in ("message", "error", "detail"):
            text = body.get(key)
            if isinstance(text, str) and text:
                return f": {text[:200]}"
    return ""
