"""Hostile live-intensity answers (issue 10): an absurd value, a date in the future, a 100 MiB
body and a gzip bomb must never reach the CO2e counters nor the exporter's memory.

Each is a `malformed` fault: the provider's `up` goes false, the last good value (or none) is
kept, and the fallback chain gives the live value while fresh, then static, then default. The
last tests run the real exporter process against each answer and read its memory from
/proc/<pid>/status. All traffic is on 127.0.0.1; provider tests use a fake clock shared with the
fake API, and every wait is a bounded loop, never an assertion on time."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from exporter import net
from exporter.carbon import JOULES_PER_KWH, MAX_GRAMS_PER_KWH, Intensity
from exporter.intensity import (
    DEFAULT_MAX_AGE_SECONDS,
    ElectricityMaps,
    FallbackChain,
    IntensityReading,
    WattTime,
    world_average,
)
from exporter.intensity.live import (
    BACKOFF_START_SECONDS,
    FUTURE_TOLERANCE_SECONDS,
    Fault,
    LiveProvider,
    Response,
    parse_json_object,
)
from exporter.intensity.watttime import GRAMS_PER_KWH_PER_LBS_PER_MWH
from tests.fakes.carbon_apis import (
    Body,
    FakeElectricityMaps,
    FakeWattTime,
    compression_bomb,
    iso,
)
from tests.support import START, Exporter, FakeClock, advance, node_tree, total, value
from tests.support.net import TOKEN, redirect, serve

MIB = 1 << 20
GIB = 1 << 30
STATIC_DE = Intensity(338.0, "DE", "static")
STATIC_CAISO = Intensity(250.0, "CAISO_NORTH", "static")
CHART_MEMORY_LIMIT_MIB = 160.0
"""The Helm chart's memory limit for the exporter container."""
HOSTILE = ("huge", "future", "huge_body", "huge_chunked", "bomb")


def hostile_log(kind: str, provider: str) -> str:
    """The text the provider's warning must hold for each hostile answer."""
    grams = 1e12 * (GRAMS_PER_KWH_PER_LBS_PER_MWH if provider == "watttime" else 1.0)
    return {
        "huge": f"answered {grams:g} gCO2e/kWh, above the 5000 gCO2e/kWh bound",
        "future": "answered a value dated 9999-12-31T00:00:00Z",
        "huge_body": "answered 100 MiB (at most 1 MiB)",
        "huge_chunked": "answered more than 1 MiB (zone",
        "bomb": "answered a gzip body that inflates to more than 1 MiB",
    }[kind]


def messages(caplog: pytest.LogCaptureFixture, text: str = "") -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("footprint") and text in r.getMessage()]


@pytest.fixture
def em_api(clock: FakeClock) -> Iterator[FakeElectricityMaps]:
    with FakeElectricityMaps(clock=clock) as api:
        yield api


@pytest.fixture
def wt_api(clock: FakeClock) -> Iterator[FakeWattTime]:
    with FakeWattTime(clock=clock) as api:
        yield api


# The timeout is generous: it is not what these tests are about, and a slow CI runner must
# not turn a size fault into a timeout.
@pytest.fixture
async def em(em_api: FakeElectricityMaps, clock: FakeClock) -> AsyncIterator[ElectricityMaps]:
    provider = ElectricityMaps(zone="DE", token=em_api.token, base_url=em_api.url,
                               timeout_seconds=10.0, clock=clock, trust_env=False)
    yield provider
    await provider.close()


@pytest.fixture
async def wt(wt_api: FakeWattTime, clock: FakeClock) -> AsyncIterator[WattTime]:
    provider = WattTime(region="CAISO_NORTH", username=wt_api.username,
                        password=wt_api.password, base_url=wt_api.url, timeout_seconds=10.0,
                        clock=clock, trust_env=False)
    yield provider
    await provider.close()


Setup = tuple[LiveProvider, FakeElectricityMaps | FakeWattTime, Intensity]


@pytest.fixture(params=["electricitymaps", "watttime"])
def live(request: pytest.FixtureRequest) -> Setup:
    """Each provider with its fake API and a static fallback for its zone."""
    if request.param == "electricitymaps":
        return (request.getfixturevalue("em"), request.getfixturevalue("em_api"), STATIC_DE)
    return (request.getfixturevalue("wt"), request.getfixturevalue("wt_api"), STATIC_CAISO)


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


async def await_until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    """wait_until for async tests: the client's loop must run for its transports to close."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.01)


# -- each hostile answer, after a good one and before any ------------------------------------


@pytest.mark.parametrize("kind", HOSTILE)
async def test_hostile_answer_keeps_the_last_good_value_and_the_chain_falls_back(
        live: Setup, clock: FakeClock, logged: pytest.LogCaptureFixture, kind: str) -> None:
    provider, api, static = live
    chain = FallbackChain(provider, static, world_average(provider.zone), clock=clock)
    bare = FallbackChain(provider, None, world_average(provider.zone), clock=clock)
    await provider.poll()
    good = provider.reading()
    assert good is not None and provider.up
    assert chain.current() == good.intensity and chain.up

    api.fail(kind, times=None)
    clock.advance(provider.refresh_seconds)
    delay = await provider.poll()

    assert not provider.up and not chain.up
    assert provider.reading() is good
    assert delay == BACKOFF_START_SECONDS  # a malformed answer: the usual backoff
    (line,) = messages(logged, hostile_log(kind, provider.name))
    assert line.startswith(f"{provider.name}: ")
    assert f"keeping {good.intensity.grams_per_kwh:g} gCO2e/kWh" in line
    # The last good value stays in force while fresh, with its own provider label.
    assert chain.current() == good.intensity
    assert chain.current().provider == provider.name
    # Retried after the backoff, answered the same: the warning is not repeated.
    clock.advance(delay)
    await provider.poll()
    assert not provider.up and provider.reading() is good
    assert len(messages(logged, hostile_log(kind, provider.name))) == 1
    # Past the max age: static, else the default; never the hostile value.
    clock.now = good.observed_unix + DEFAULT_MAX_AGE_SECONDS + 1
    assert chain.current() == static and chain.current().provider == "static"
    assert bare.current() == Intensity(475.0, provider.zone, "default")
    # The API comes back: live again, and the recovery is logged once.
    api.clear()
    clock.advance(provider.refresh_seconds)
    await provider.poll()
    assert provider.up and provider.reading() is not good
    assert chain.current().provider == provider.name
    assert len(messages(logged, "works again")) == 1


@pytest.mark.parametrize("kind", HOSTILE)
async def test_hostile_first_answer_leaves_no_value(
        live: Setup, clock: FakeClock, logged: pytest.LogCaptureFixture, kind: str) -> None:
    provider, api, static = live
    chain = FallbackChain(provider, static, world_average(provider.zone), clock=clock)
    bare = FallbackChain(provider, None, world_average(provider.zone), clock=clock)
    api.fail(kind, times=None)

    await provider.poll()

    assert not provider.up and provider.reading() is None
    assert chain.current() == static and chain.current().provider == "static"
    assert bare.current() == Intensity(475.0, provider.zone, "default")
    assert chain.last_update_unix is None
    (line,) = messages(logged, hostile_log(kind, provider.name))
    assert "no value yet" in line


@pytest.mark.parametrize("kind", ["huge_chunked", "bomb"])
async def test_hostile_watttime_login_is_a_fault(
        wt: WattTime, wt_api: FakeWattTime, clock: FakeClock,
        logged: pytest.LogCaptureFixture, kind: str) -> None:
    await wt.poll()
    good = wt.reading()
    wt_api.revoke_tokens()  # the forecast answers 401, and the provider logs in again
    wt_api.fail(kind, endpoint="login", times=None)
    clock.advance(wt.refresh_seconds)

    await wt.poll()

    assert not wt.up and wt.reading() is good
    (line,) = messages(logged, hostile_log(kind, "watttime"))
    assert line.startswith("watttime: ")


# -- JSON nested thousands of levels deep (issue 19) -------------------------------------------

NESTED = "[" * 100_000 + "]" * 100_000
"""200 KB, well under MAX_BODY_BYTES: json.loads alone raises RecursionError on it."""


class _Nesting:
    """A fake API answering `nested[endpoint]` (an HTTP status) with NESTED."""

    nested: dict[str, int]

    def nested_answer(self, endpoint: str) -> web.Response | None:
        status = self.nested.get(endpoint)
        if status is None:
            return None
        return web.Response(text=NESTED, status=status, content_type="application/json")


class NestingElectricityMaps(_Nesting, FakeElectricityMaps):
    async def _faulty(self, request: web.Request, endpoint: str, body: Body,
                      normal: float) -> web.StreamResponse | None:
        answer = self.nested_answer(endpoint)
        return answer if answer is not None else await super()._faulty(
            request, endpoint, body, normal)


class NestingWattTime(_Nesting, FakeWattTime):
    async def _faulty(self, request: web.Request, endpoint: str, body: Body,
                      normal: float) -> web.StreamResponse | None:
        answer = self.nested_answer(endpoint)
        return answer if answer is not None else await super()._faulty(
            request, endpoint, body, normal)


@pytest.fixture(params=["electricitymaps", "watttime"])
async def nesting(request: pytest.FixtureRequest, clock: FakeClock
                  ) -> AsyncIterator[tuple[LiveProvider, _Nesting]]:
    """Each provider, its forecast on, against a fake that can answer NESTED."""
    api: NestingElectricityMaps | NestingWattTime
    provider: LiveProvider
    if request.param == "electricitymaps":
        api = NestingElectricityMaps(clock=clock)
        api.start()
        provider = ElectricityMaps(zone="DE", token=api.token, base_url=api.url,
                                   timeout_seconds=10.0, clock=clock, trust_env=False,
                                   forecast=True)
    else:
        api = NestingWattTime(clock=clock)
        api.start()
        provider = WattTime(region="CAISO_NORTH", username=api.username,
                            password=api.password, base_url=api.url, timeout_seconds=10.0,
                            clock=clock, trust_env=False, forecast=True)
    api.nested = {}
    try:
        yield provider, api
    finally:
        await provider.close()
        api.stop()


@pytest.mark.parametrize("status", [200, 400])
async def test_a_nested_answer_is_a_malformed_fault_not_a_recursion_error(
        nesting: tuple[LiveProvider, _Nesting], logged: pytest.LogCaptureFixture,
        status: int) -> None:
    """Before: RecursionError escaped poll() (and, in the thread, marked the value down as an
    internal error on every poll)."""
    provider, api = nesting
    api.nested["data"] = status
    delay = await provider.poll()
    assert not provider.up and provider.reading() is None
    assert delay == BACKOFF_START_SECONDS
    said = ("answered HTTP 200, but its body is nested deeper than 64 levels" if status == 200
            else "answered HTTP 400 (zone")
    (line,) = messages(logged, said)
    assert line.startswith(f"{provider.name}: ")


@pytest.mark.parametrize("status", [200, 400])
async def test_a_nested_forecast_leaves_the_current_value_up(
        nesting: tuple[LiveProvider, _Nesting], clock: FakeClock,
        logged: pytest.LogCaptureFixture, status: int) -> None:
    provider, api = nesting
    api.nested["forecast"] = status
    await provider.poll()
    assert provider.up and provider.reading() is not None
    assert provider.forecast() is None
    (line,) = messages(logged, f"{provider.name}: forecast: ")
    if status == 200:
        assert "answered HTTP 200, but its body is nested deeper than 64 levels" in line
    # The next polls, before the forecast is due again, keep the value up.
    clock.advance(provider.refresh_seconds)
    await provider.poll()
    assert provider.up
    api.nested.clear()
    clock.advance(1800)
    await provider.poll()
    assert provider.up and provider.forecast() is not None


def test_parse_json_object_refuses_nesting_and_non_objects() -> None:
    with pytest.raises(Fault, match="nested deeper than 64 levels") as exc:
        parse_json_object(Response(200, NESTED.encode(), None))
    assert exc.value.kind == "malformed"
    with pytest.raises(Fault, match="not JSON"):
        parse_json_object(Response(200, b"{", None))
    assert parse_json_object(Response(200, b'{"a": [[1]]}', None)) == {"a": [[1]]}


# -- the bounds, at their edges --------------------------------------------------------------


@pytest.mark.parametrize(("grams", "accepted"), [
    (0.0, True), (MAX_GRAMS_PER_KWH, True), (MAX_GRAMS_PER_KWH + 0.5, False), (1e308, False)])
async def test_electricitymaps_bound(em: ElectricityMaps, em_api: FakeElectricityMaps,
                                     logged: pytest.LogCaptureFixture, grams: float,
                                     accepted: bool) -> None:
    em_api.zones["DE"] = grams
    await em.poll()
    assert em.up is accepted
    if accepted:
        reading = em.reading()
        assert reading is not None and reading.intensity.grams_per_kwh == grams
    else:
        assert em.reading() is None
        (line,) = messages(logged, f"answered {grams:g} gCO2e/kWh, above the 5000 gCO2e/kWh "
                                   "bound")
        assert line.startswith("electricitymaps: ")


@pytest.mark.parametrize(("lbs_per_mwh", "accepted"), [(11_023.0, True), (11_024.0, False)])
async def test_watttime_bound_applies_after_conversion(
        wt: WattTime, wt_api: FakeWattTime, lbs_per_mwh: float, accepted: bool) -> None:
    # 11,023 lbs/MWh = 4,999.9 g/kWh; 11,024 = 5,000.4.
    wt_api.moer["CAISO_NORTH"] = lbs_per_mwh
    await wt.poll()
    assert wt.up is accepted and (wt.reading() is not None) is accepted


@pytest.mark.parametrize(("ahead", "accepted"), [
    (0.0, True), (FUTURE_TOLERANCE_SECONDS, True), (FUTURE_TOLERANCE_SECONDS + 1, False),
    (86_400.0, False)])
async def test_future_date_tolerance(
        em: ElectricityMaps, em_api: FakeElectricityMaps, clock: FakeClock,
        logged: pytest.LogCaptureFixture, ahead: float, accepted: bool) -> None:
    assert FUTURE_TOLERANCE_SECONDS == 600.0
    em_api.future_time = iso(clock.now + ahead)
    em_api.fail("future")
    await em.poll()
    assert em.up is accepted
    if not accepted:
        (line,) = messages(logged, f"{ahead:.0f} s ahead of this node's clock (at most "
                                   "600 s allowed")
        assert line.startswith("electricitymaps: ")


# -- the fallback chain, in depth ------------------------------------------------------------


class StubLive:
    """A LiveSource whose reading the test sets: what a provider without the checks, or a
    clock set back after a fetch, would give the chain."""

    name = "electricitymaps"
    zone = "DE"

    def __init__(self) -> None:
        self.value: IntensityReading | None = None
        self.up = True

    def reading(self) -> IntensityReading | None:
        return self.value

    def forecast(self) -> None:
        return None

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def stub_reading(grams: float, observed: float) -> IntensityReading:
    return IntensityReading(Intensity(grams, "DE", "electricitymaps"), observed, observed,
                            "lifecycle")


def test_chain_never_takes_a_future_or_absurd_reading_as_fresh(
        clock: FakeClock, logged: pytest.LogCaptureFixture) -> None:
    live = StubLive()
    chain = FallbackChain(live, STATIC_DE, clock=clock)
    bare = FallbackChain(live, None, world_average("DE"), clock=clock)

    live.value = stub_reading(302.0, START + FUTURE_TOLERANCE_SECONDS)
    assert chain.current().provider == "electricitymaps"  # within the tolerance
    live.value = stub_reading(302.0, START + FUTURE_TOLERANCE_SECONDS + 1)
    assert chain.current() == STATIC_DE
    assert bare.current() == Intensity(475.0, "DE", "default")
    assert messages(logged, "the last electricitymaps value is dated 601 s ahead of this "
                            "node's clock (more than 600 s); using static 338 gCO2e/kWh")
    live.value = stub_reading(302.0, 253_402_214_400.0)  # 9999-12-31: it would never age
    clock.advance(10 * 365 * 86_400)
    assert chain.current() == STATIC_DE
    for grams in (MAX_GRAMS_PER_KWH + 1, 1e12, math.inf, math.nan, -1.0):
        live.value = stub_reading(grams, clock.now)
        assert chain.current() == STATIC_DE, grams
    live.value = stub_reading(MAX_GRAMS_PER_KWH, clock.now)
    assert chain.current() == Intensity(MAX_GRAMS_PER_KWH, "DE", "electricitymaps")


# -- size caps: connection, bomb, memory -----------------------------------------------------


@pytest.mark.parametrize("kind", ["huge_body", "huge_chunked"])
async def test_oversized_body_is_cut_off_and_the_session_still_works(
        em: ElectricityMaps, em_api: FakeElectricityMaps, clock: FakeClock, kind: str) -> None:
    em_api.fail(kind)

    await em.poll()

    assert not em.up
    # The fake's handler ends only when all 100 MiB are written or the client hangs up; it
    # ended well short of that, so the exporter closed the connection instead of draining it.
    await await_until(lambda: bool(em_api.streamed), "the 100 MiB answer to end")
    (sent,) = em_api.streamed
    print(f"\n{kind}: the fake wrote {sent / MIB:.1f} MiB before the exporter hung up")
    assert sent < em_api.huge_body_bytes // 2
    clock.advance(BACKOFF_START_SECONDS)
    await em.poll()
    assert em.up  # the session is still usable


def test_the_bomb_is_1_mb_of_gzip_that_inflates_to_1_gib() -> None:
    """The fixture is what the tests claim: under the wire cap, 1 GiB once inflated (counted
    1 MiB at a time, so this test stays small too)."""
    bomb = compression_bomb()
    assert 1_000_000 < len(bomb) < net.MAX_BODY_BYTES
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    size, data = 0, bomb
    while data and not inflater.eof:
        size += len(inflater.decompress(data, MIB))
        data = inflater.unconsumed_tail
    assert inflater.eof and size == GIB
    deflate = compression_bomb(32 * MIB, "deflate")
    assert zlib.decompress(deflate) == b" " * (32 * MIB)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_answer_is_inflated_by_footprint(
        live: Setup, clock: FakeClock, encoding: str) -> None:
    """A real API may compress; Footprint asks only for what it inflates itself."""
    provider, api, _ = live
    api.compress = encoding
    await provider.poll()
    assert provider.up and provider.reading() is not None
    assert all(r.headers["accept-encoding"] == "gzip, deflate" for r in api.requests)
    api.bomb_inflated_bytes = 16 * MIB  # still over the cap once inflated
    api.bomb_encoding = encoding
    api.fail("bomb")
    clock.advance(provider.refresh_seconds)
    await provider.poll()
    assert not provider.up


async def test_a_redirect_elsewhere_never_gets_the_token(
        clock: FakeClock, logged: pytest.LogCaptureFixture) -> None:
    """A redirect on the API's origin is followed, token included; one to another origin is
    an `http` fault and the other origin is never asked (exporter.net, issue 21)."""
    body = json.dumps({"zone": "DE", "carbonIntensity": 302, "datetime": iso(clock.now - 60),
                       "emissionFactorType": "lifecycle"}).encode()
    latest = "/v3/carbon-intensity/latest"
    with serve() as api, serve() as elsewhere:
        api.routes[latest] = redirect(f"/moved{latest}?zone=DE", 307)
        api.routes[f"/moved{latest}"] = (200, {"Content-Type": "application/json"}, body)
        elsewhere.routes[latest] = (200, {"Content-Type": "application/json"}, body)
        em = ElectricityMaps(zone="DE", token=TOKEN, base_url=api.url, timeout_seconds=10.0,
                             clock=clock, trust_env=False)
        try:
            await em.poll()
            reading = em.reading()
            assert em.up and reading is not None
            assert reading.intensity.grams_per_kwh == 302
            assert [h["auth-token"] for _, h in api.seen] == [TOKEN, TOKEN]
            api.routes[latest] = redirect(f"{elsewhere.url}{latest}?zone=DE")
            clock.advance(em.refresh_seconds)
            delay = await em.poll()
        finally:
            await em.close()
    assert not em.up and em.reading() is reading
    assert delay == BACKOFF_START_SECONDS
    assert elsewhere.seen == []
    (line,) = messages(logged, "redirect")
    assert line.startswith(f"electricitymaps: answered HTTP 302, a redirect to another origin "
                           f"({elsewhere.url}), which is not followed")
    assert TOKEN not in logged.text


# -- the whole exporter against each hostile answer ------------------------------------------


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


class RssSampler:
    """VmRSS of a process every 5 ms in a thread, until stopped; the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_kib = max(self.peak_kib, _status_kib(self.pid, "VmRSS"))
            except (OSError, AssertionError):
                return
            self._stop.wait(0.005)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak_kib


@pytest.mark.slow(seconds=2)  # the real process
@pytest.mark.parametrize("kind", HOSTILE)
def test_exporter_process_survives_a_hostile_provider(tmp_path: Path, kind: str) -> None:
    """The real process, every answer hostile: the grid intensity stays at the static value,
    the CO2e counters rise by energy x that value, source_up stays 0, and the process's peak
    resident memory (VmHWM, the kernel's own high-water mark, and VmRSS sampled every 5 ms)
    stays under the chart's 160 MiB limit, during and after the answer."""
    root = node_tree(tmp_path, "intel-2s")
    with FakeElectricityMaps(zones={"DE": 302.0}) as api:
        api.fail(kind, times=None)
        token = tmp_path / "em-token"
        token.write_text(api.token + "\n")
        config = tmp_path / "footprint.yaml"
        config.write_text("carbon:\n  provider: electricitymaps\n  zone: DE\n"
                          f"  intensity_grams_per_kwh: {STATIC_DE.grams_per_kwh:g}\n"
                          f"  electricitymaps:\n    base_url: {api.url}\n"
                          f"    token_file: {token}\n")
        args = ["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
                "--config.file", str(config), "--collector.interval", "0.1",
                "--no-collector.kubernetes", "--no-collector.nvml"]
        with Exporter(args) as exp:
            pid = exp.proc.pid
            rss = RssSampler(pid)
            try:
                expected = hostile_log(kind, "electricitymaps")
                wait_until(lambda: any(expected in line for line in exp.lines),
                           f"the exporter to log {expected!r}", 60.0)
                first = exp.wait_ticks(2)
                for _ in range(5):  # energy flows while the provider is down
                    advance(root, "intel-rapl:0", 60_000_000)  # 60 J
                    last = exp.wait_ticks(2)
                during_kib = rss.stop()
                after_kib = _status_kib(pid, "VmRSS")
                hwm_kib = _status_kib(pid, "VmHWM")
                assert exp.stop() == 0
            finally:
                rss.stop()
        assert api.requests, "the exporter never asked the fake API"
    for series in (first, last):
        assert value(series, "footprint_grid_intensity_grams_per_kwh",
                     provider="static", grid_zone="DE") == STATIC_DE.grams_per_kwh
        assert [ls for (n, ls) in series if n == "footprint_grid_intensity_grams_per_kwh"
                and dict(ls)["provider"] != "static"] == []
        assert value(series, "footprint_source_up", source="intensity") == 0.0
    joules = (total(last, "footprint_node_energy_joules_total")
              - total(first, "footprint_node_energy_joules_total"))
    grams = (total(last, "footprint_node_co2e_grams_total")
             - total(first, "footprint_node_co2e_grams_total"))
    assert joules >= 300.0
    assert grams <= joules / JOULES_PER_KWH * MAX_GRAMS_PER_KWH
    assert grams == pytest.approx(joules / JOULES_PER_KWH * STATIC_DE.grams_per_kwh, rel=1e-9)
    assert total(last, "footprint_node_co2e_grams_total") == pytest.approx(
        total(last, "footprint_node_energy_joules_total") / JOULES_PER_KWH
        * STATIC_DE.grams_per_kwh, rel=1e-9)
    print(f"\n{kind}: peak RSS VmHWM {hwm_kib / 1024:.1f} MiB, sampled VmRSS peak "
          f"{during_kib / 1024:.1f} MiB, VmRSS after {after_kib / 1024:.1f} MiB")
    for kib in (hwm_kib, during_kib, after_kib):
        assert kib / 1024 < CHART_MEMORY_LIMIT_MIB
    # One warning for the answer (the next try is 30 s away), never the token.
    assert len([line for line in exp.lines if expected in line]) == 1
    assert not any(api.token in line for line in exp.lines)
