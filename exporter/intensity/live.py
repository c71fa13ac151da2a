"""What a live grid-intensity provider shares: a cached reading, polling, faults, its own thread.

A provider fetches in the background and keeps the last good value; `reading()` and `up` only
read that cache, so the tick (a worker thread) never waits on the network. The fetching runs on
an event loop of its own in a daemon thread (`start()` / `stop()`): the exporter builds its
sources before `asyncio.run` starts the server's loop, and a slow API or DNS lookup can then
never delay a scrape. Tests drive `poll()` directly on their own loop with an injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import aiohttp

from exporter import __version__, logs
from exporter.carbon import Intensity
from exporter.intensity.credentials import Secret

BACKOFF_START_SECONDS = 30.0
"""First retry after a timeout, 5xx or malformed answer; doubles up to the refresh period."""
MAX_RETRY_AFTER_SECONDS = 86_400.0
"""A longer Retry-After is taken as a day: the value in force goes stale and falls back anyway."""
LOG_PERIOD_SECONDS = 3600.0
"""The same fault is logged again at most this often; a refused credential only once, until a
fetch works again."""
FAULT_KINDS = ("auth", "rate", "timeout", "network", "http", "malformed", "internal")


@dataclass(frozen=True, slots=True)
class Reading:
    """One good answer of a live provider."""

    intensity: Intensity
    observed_unix: float
    """The time the value is for (Electricity Maps `datetime`, WattTime `point_time`)."""
    fetched_unix: float
    """When the exporter received it."""
    basis: str
    """`lifecycle` or `direct` (average of the grid mix), or `marginal` (WattTime MOER)."""
    estimated: bool = False


class Fault(Exception):
    """A fetch that failed; `message` never holds a credential."""

    def __init__(self, kind: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after


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
    except ValueError:
        raise Fault("malformed", f"answered a {field!r} that is not an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def parse_number(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Fault("malformed", f"answered without a numeric {field!r}")
    if value < 0:
        raise Fault("malformed", f"answered a negative {field!r}")
    return float(value)


def parse_json_object(response: Response) -> Mapping[str, Any]:
    try:
        body = json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        raise Fault("malformed", "answered HTTP 200 with a body that is not JSON") from None
    if not isinstance(body, dict):
        raise Fault("malformed", "answered HTTP 200 with JSON that is not an object")
    return body


class LiveProvider:
    """The polling, caching and fault handling shared by the live providers."""

    name: ClassVar[str] = "live"

    def __init__(self, *, base_url: str, zone: str, timeout_seconds: float,
                 refresh_seconds: float, clock: Callable[[], float] = time.time,
                 trust_env: bool = True, log: logging.Logger | None = None) -> None:
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
        self._throttle = logs.Throttle(self._log, period_seconds=LOG_PERIOD_SECONDS, clock=clock)
        self._auth_throttle = logs.Throttle(self._log, period_seconds=math.inf, clock=clock)
        self._lock = threading.Lock()
        self._reading: Reading | None = None
        self._up = False
        self._failures = 0
        self._next_at = -math.inf
        self._session: aiohttp.ClientSession | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    # -- what the tick reads (any thread) ---------------------------------------------------

    def reading(self) -> Reading | None:
        """The last good value, however old; None until the first fetch succeeds."""
        with self._lock:
            return self._reading

    @property
    def up(self) -> bool:
        """The last fetch worked."""
        with self._lock:
            return self._up

    # -- one fetch -------------------------------------------------------------------------

    async def poll(self) -> float:
        """Fetch if one is due (not before a Retry-After or backoff ends); returns the seconds
        until the next one is due. Faults are logged (throttled) and never raised."""
        now = self._clock()
        if now < self._next_at:
            return self._next_at - now
        try:
            reading = await self._fetch()
        except Fault as fault:
            delay = self._failed(fault)
        else:
            delay = self._succeeded(reading)
        self._next_at = self._clock() + delay
        return delay

    async def close(self) -> None:
        """Close the HTTP session (on the loop that used it)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _succeeded(self, reading: Reading) -> float:
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
            f"next try in {delay:.0f} s"))
        return delay

    async def _fetch(self) -> Reading:
        raise NotImplementedError

    async def _get(self, url: str, *, params: Mapping[str, str] | None = None,
                   headers: Mapping[str, str] | None = None) -> Response:
        """One GET; a transport failure becomes a Fault without the request's headers."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_seconds),
                headers={"User-Agent": f"footprint-exporter/{__version__}"},
                trust_env=self._trust_env)
        try:
            async with self._session.get(url, params=params, headers=headers,
                                         allow_redirects=False) as resp:
                body = await resp.read()
                return Response(resp.status, body, resp.headers.get("Retry-After"))
        except TimeoutError:
            raise Fault("timeout", f"did not answer within {self.timeout_seconds:g} s") from None
        except aiohttp.ClientError as exc:
            # Only the class name: some aiohttp errors carry the request, headers included.
            raise Fault("network", f"request failed ({type(exc).__name__})") from None

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


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _api_message(response: Response) -> str:
    """The API's own short error text (`message` or `error`), if it sent one."""
    try:
        body = json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if isinstance(body, dict):
        for key in ("message", "error", "detail"):
            text = body.get(key)
            if isinstance(text, str) and text:
                return f": {text[:200]}"
    return ""
