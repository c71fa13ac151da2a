"""Grid intensity forecasts (issue 14): Electricity Maps' and WattTime's forecasts against the
local fakes, the gauges they give, and that they appear only while a provider supplies one.

Time is a fake clock shared by client and fake server (tests.test_intensity), starting on the
hour, so every expected value is read off the fake's forecast by hand."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from exporter.carbon import Intensity
from exporter.exposition import Renderer, TickStats
from exporter.intensity import ElectricityMaps, FallbackChain, WattTime, world_average
from exporter.intensity.forecast import (
    FORECAST_MAX_AGE_SECONDS,
    HORIZONS,
    MAX_FORECAST_POINTS,
    build_forecast,
    view,
)
from exporter.intensity.live import Fault
from exporter.intensity.watttime import GRAMS_PER_KWH_PER_LBS_PER_MWH
from exporter.ledger import Ledger
from exporter.metrics import Publisher
from tests.fakes.carbon_apis import FakeElectricityMaps, FakeWattTime
from tests.support import START, FakeClock, Series, node_tree, parse, value
from tests.support.intensity import live_exporter_text

EM_FORECAST = FakeElectricityMaps.FORECAST_PATH
EM_LATEST = FakeElectricityMaps.PATH
FORECAST = "footprint_grid_intensity_forecast_grams_per_kwh"
MINIMUM = "footprint_grid_intensity_forecast_min_grams_per_kwh"
MINIMUM_AT = "footprint_grid_intensity_forecast_min_timestamp_seconds"
FAMILIES = (FORECAST, MINIMUM, MINIMUM_AT)
STATIC_DE = Intensity(338.0, "DE", "static")
WT_HOURLY = [1000.0 - 30.0 * i for i in range(10)] + [700.0 + 20.0 * i for i in range(15)]
"""CAISO_NORTH's forecast in the fake, lbs/MWh per hour: lowest (700) at hour 10."""
HOSTILE = ("huge", "future", "missing", "malformed", "huge_body", "huge_chunked", "bomb", "past")


@pytest.fixture
def em_api(clock: FakeClock) -> Iterator[FakeElectricityMaps]:
    with FakeElectricityMaps(clock=clock) as api:
        api.huge_body_bytes = 8 << 20
        yield api


@pytest.fixture
async def em(em_api: FakeElectricityMaps, clock: FakeClock) -> AsyncIterator[ElectricityMaps]:
    provider = ElectricityMaps(zone="DE", token=em_api.token, base_url=em_api.url,
                               timeout_seconds=5.0, clock=clock, trust_env=False,
                               forecast=True)
    yield provider
    await provider.close()


@pytest.fixture
def wt_api(clock: FakeClock) -> Iterator[FakeWattTime]:
    with FakeWattTime(clock=clock) as api:
        api.forecasts["CAISO_NORTH"] = list(WT_HOURLY)
        api.huge_body_bytes = 8 << 20
        yield api


@pytest.fixture
async def wt(wt_api: FakeWattTime, clock: FakeClock) -> AsyncIterator[WattTime]:
    provider = WattTime(region="CAISO_NORTH", username=wt_api.username,
                        password=wt_api.password, base_url=wt_api.url, timeout_seconds=5.0,
                        clock=clock, trust_env=False, forecast=True)
    yield provider
    await provider.close()


def rendered(chain: FallbackChain) -> tuple[str, Series]:
    """What /metrics shows of the chain's intensity and forecast, as the sampler publishes."""
    ledger = Ledger()
    publish = Publisher(ledger)
    live = chain.live
    publish.intensity(chain.current(), live=live.name if live is not None else None,
                      live_up=chain.up, last_update_unix=chain.last_update_unix)
    publish.forecast(chain.forecast())
    text = Renderer(ledger, node="n", process_metrics=False).render(TickStats()).text.decode()
    return text, parse(text)


def forecast_series(series: Series) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {key: v for key, v in series.items() if key[0] in FAMILIES}


def warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and text in r.getMessage()]


# -- the gauges, by hand ---------------------------------------------------------------------


async def test_electricitymaps_forecast_gauges_at_each_horizon(
        em: ElectricityMaps, em_api: FakeElectricityMaps, clock: FakeClock) -> None:
    """Half an hour into the first hour: each horizon is the hourly point holding now + h
    (no interpolation); the minimum over 24 h is hour 12's 206, from its start."""
    clock.advance(1800)
    await em.poll()
    assert em.up and em_api.count(EM_FORECAST) == 1
    hourly = em_api.forecasts["DE"]
    text, series = rendered(FallbackChain(em, STATIC_DE, clock=clock))
    for label, seconds in HORIZONS:
        hour = int((1800 + seconds) // 3600)
        assert value(series, FORECAST, grid_zone="DE", provider="electricitymaps",
                     horizon=label) == hourly[hour]
    assert hourly[12] == min(hourly) == 206.0
    assert value(series, MINIMUM, window="24h", provider="electricitymaps") == 206.0
    assert value(series, MINIMUM_AT, window="24h", grid_zone="DE") == START + 12 * 3600
    assert len(forecast_series(series)) == len(HORIZONS) + 2
    assert "# TYPE footprint_grid_intensity_forecast_grams_per_kwh gauge" in text
    # the current value is unchanged by the forecast
    assert value(series, "footprint_grid_intensity_grams_per_kwh",
                 provider="electricitymaps") == 302.0


async def test_watttime_forecast_gauges_in_grams(
        wt: WattTime, wt_api: FakeWattTime, clock: FakeClock) -> None:
    """The 24-hour forecast, 5-minute points, converted from lbs/MWh as the current MOER is."""
    await wt.poll()
    forecast_requests = [r for r in wt_api.requests
                         if r.path == wt_api.FORECAST and r.query["horizon_hours"] == "24"]
    assert wt.up and len(forecast_requests) == 1
    _, series = rendered(FallbackChain(wt, None, world_average("CAISO_NORTH"), clock=clock))
    for label, seconds in HORIZONS:
        expected = WT_HOURLY[int(seconds // 3600)] * GRAMS_PER_KWH_PER_LBS_PER_MWH
        assert value(series, FORECAST, grid_zone="CAISO_NORTH", provider="watttime",
                     horizon=label) == pytest.approx(expected)
    assert value(series, MINIMUM, provider="watttime") == pytest.approx(
        700.0 * GRAMS_PER_KWH_PER_LBS_PER_MWH)
    assert value(series, MINIMUM_AT, provider="watttime") == START + 10 * 3600
    # the current value still comes from the horizon_hours=0 request
    assert value(series, "footprint_grid_intensity_grams_per_kwh",
                 provider="watttime") == pytest.approx(1000.0 * GRAMS_PER_KWH_PER_LBS_PER_MWH)


async def test_forecast_is_fetched_every_30_minutes_not_every_refresh(
        em: ElectricityMaps, em_api: FakeElectricityMaps, clock: FakeClock) -> None:
    assert await em.poll() == em.refresh_seconds  # 900 s: the current value is due first
    clock.advance(900)
    await em.poll()
    assert (em_api.count(EM_LATEST), em_api.count(EM_FORECAST)) == (2, 1)
    clock.advance(900)
    await em.poll()
    assert (em_api.count(EM_LATEST), em_api.count(EM_FORECAST)) == (3, 2)


async def test_forecast_gauges_vanish_when_the_forecast_is_old_or_over(
        em: ElectricityMaps, clock: FakeClock) -> None:
    await em.poll()
    chain = FallbackChain(em, STATIC_DE, clock=clock)
    clock.advance(2 * 3600)  # the forecast ends 25 h after the first hour: 24h is past its end
    view_now = chain.forecast()
    assert view_now is not None
    assert [label for label, _ in view_now.horizons] == ["1h", "3h", "6h", "12h"]
    clock.advance(FORECAST_MAX_AGE_SECONDS)  # not refreshed since: too old to publish
    assert chain.forecast() is None
    _, series = rendered(chain)
    assert forecast_series(series) == {}


def test_no_forecast_series_with_static_intensity() -> None:
    chain = FallbackChain(None, STATIC_DE)
    assert chain.forecast() is None
    text, series = rendered(chain)
    assert forecast_series(series) == {}
    assert "forecast" not in text


def test_a_static_exporter_publishes_no_forecast(tmp_path: Path) -> None:
    from exporter import cli

    config = tmp_path / "footprint.yaml"
    config.write_text("carbon:\n  zone: DE\n  intensity_grams_per_kwh: 338\n")
    root = node_tree(tmp_path, "amd-epyc-2s")
    settings = cli.parse_settings(["--path.sysfs", str(root / "sys"), "--path.procfs",
                                   str(root / "proc"), "--config.file", str(config),
                                   "--no-collector.kubernetes", "--no-collector.nvml"])
    sampler = cli.build_sampler(settings, process_metrics=False)
    try:
        text = sampler.tick().text.decode()
    finally:
        sampler.close()
    assert "footprint_grid_intensity_grams_per_kwh" in text
    assert "forecast" not in text


# -- a plan without forecasts -----------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_electricitymaps_refused_forecast_leaves_no_gauges_and_logs_once(
        em: ElectricityMaps, em_api: FakeElectricityMaps, clock: FakeClock,
        logged: pytest.LogCaptureFixture, status: int) -> None:
    em_api.forecast_refusal = status
    await em.poll()
    assert em.up and em.reading() is not None and em.forecast() is None
    chain = FallbackChain(em, STATIC_DE, clock=clock)
    _, series = rendered(chain)
    assert forecast_series(series) == {}
    assert value(series, "footprint_grid_intensity_grams_per_kwh",
                 provider="electricitymaps") == 302.0
    assert value(series, "footprint_source_up", source="intensity") == 1.0
    refused = warnings(logged, "no forecast for DE")
    assert len(refused) == 1 and f"HTTP {status}" in refused[0]
    for _ in range(8):  # four hours of current values: the forecast is not asked again
        clock.advance(1800)
        await em.poll()
    assert em_api.count(EM_FORECAST) == 1 and em.up
    clock.advance(86_400)
    await em.poll()
    assert em_api.count(EM_FORECAST) == 2
    assert len(warnings(logged, "no forecast")) == 1  # still refused: not logged again
    em_api.forecast_refusal = None  # the plan now has forecasts
    clock.advance(86_400)
    await em.poll()
    assert em.forecast() is not None
    assert any("forecast of DE works again" in r.getMessage() for r in logged.records)
    assert not any(em_api.token in r.getMessage() for r in logged.records)


async def test_electricitymaps_zone_without_a_forecast(
        em_api: FakeElectricityMaps, clock: FakeClock, logged: pytest.LogCaptureFixture) -> None:
    provider = ElectricityMaps(zone="FR", token=em_api.token, base_url=em_api.url,
                               clock=clock, trust_env=False, forecast=True)
    try:
        await provider.poll()
    finally:
        await provider.close()
    assert provider.up and provider.forecast() is None
    assert len(warnings(logged, "no forecast for FR")) == 1


async def test_watttime_forecast_forbidden_keeps_the_current_moer(
        wt: WattTime, wt_api: FakeWattTime, clock: FakeClock,
        logged: pytest.LogCaptureFixture) -> None:
    wt_api.forecast_forbidden.add("CAISO_NORTH")
    await wt.poll()
    assert wt.up and wt.reading() is not None and wt.forecast() is None
    _, series = rendered(FallbackChain(wt, None, clock=clock))
    assert forecast_series(series) == {}
    assert len(warnings(logged, "no forecast for CAISO_NORTH")) == 1
    assert not any(wt_api.password in r.getMessage() or "wt-bearer" in r.getMessage()
                   for r in logged.records)


async def test_a_refused_token_is_not_taken_for_a_plan_without_forecasts(
        em_api: FakeElectricityMaps, clock: FakeClock, logged: pytest.LogCaptureFixture) -> None:
    """A wrong token fails the current value; the forecast is not asked, so no refusal is
    logged and, once the token is right, the forecast comes at once."""
    provider = ElectricityMaps(zone="DE", token="wrong-token-0123456789", base_url=em_api.url,
                               clock=clock, trust_env=False, forecast=True)
    try:
        await provider.poll()
        assert not provider.up and em_api.count(EM_FORECAST) == 0
        assert warnings(logged, "no forecast") == []
    finally:
        await provider.close()


# -- hostile answers ---------------------------------------------------------------------------


def hostile(api: FakeElectricityMaps | FakeWattTime, kind: str) -> None:
    if kind == "past":
        api.future_time = "1970-01-02T00:00:00Z"
        kind = "future"
    api.fail(kind, endpoint="forecast")


@pytest.mark.parametrize("kind", HOSTILE)
async def test_hostile_forecast_is_refused_and_the_current_value_stays(
        em: ElectricityMaps, em_api: FakeElectricityMaps, wt: WattTime, wt_api: FakeWattTime,
        clock: FakeClock, logged: pytest.LogCaptureFixture, kind: str) -> None:
    for provider, api in ((em, em_api), (wt, wt_api)):
        hostile(api, kind)
        await provider.poll()
        assert provider.up and provider.reading() is not None, provider.name
        assert provider.forecast() is None, provider.name
        assert warnings(logged, f"{provider.name}: forecast: "), provider.name
        _, series = rendered(FallbackChain(provider, None, clock=clock))
        assert forecast_series(series) == {}
    texts = " ".join(r.getMessage() for r in logged.records)
    assert em_api.token not in texts and wt_api.password not in texts


async def test_a_hostile_forecast_keeps_the_last_good_one(
        em: ElectricityMaps, em_api: FakeElectricityMaps, clock: FakeClock) -> None:
    await em.poll()
    good = em.forecast()
    assert good is not None
    em_api.fail("huge", endpoint="forecast")
    clock.advance(1800)
    await em.poll()
    assert em.forecast() is good and em.up
    assert FallbackChain(em, None, clock=clock).forecast() is not None


def test_build_forecast_bounds() -> None:
    now = START
    hourly = [(now + 3600.0 * i, 100.0) for i in range(3)]
    forecast = build_forecast(hourly, zone="DE", provider="electricitymaps", now_unix=now)
    assert forecast.period_seconds == 3600.0 and forecast.end_unix == now + 3 * 3600
    assert forecast.at(now - 1) is None and forecast.at(now + 3 * 3600) is None
    bad: list[tuple[list[tuple[float, float]], str]] = [
        ([], "without points"),
        (list(reversed(hourly)), "out of time order"),
        ([hourly[0], hourly[0]], "out of time order"),
        ([(now, 1e12)], "bound"),
        ([(now, float("nan"))], "bound"),
        ([(now + 30 * 86_400.0, 100.0)], "ahead of this node's clock"),
        ([(now - 86_400.0, 100.0)], "before this node's clock"),
        ([(now + 60.0 * i, 100.0) for i in range(MAX_FORECAST_POINTS + 1)], "points"),
    ]
    for points, why in bad:
        with pytest.raises(Fault, match=why):
            build_forecast(points, zone="DE", provider="electricitymaps", now_unix=now)
    assert view(None, now) is None


# -- the whole path ------------------------------------------------------------------------------


def test_live_forecast_in_the_exporter_never_shows_the_token(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """config -> provider thread -> chain -> sampler -> /metrics, with a forecast."""
    caplog.set_level(logging.DEBUG, logger="footprint")
    with FakeElectricityMaps() as api:
        text = live_exporter_text(tmp_path, api, "DE", "no forecast",
                                  lambda sampler: sampler._intensity.forecast() is not None)
    series = parse(text)
    horizons = {dict(labels)["horizon"] for (name, labels) in series if name == FORECAST}
    assert horizons <= {label for label, _ in HORIZONS} and {"1h", "3h", "6h", "12h"} <= horizons
    assert value(series, MINIMUM, provider="electricitymaps", grid_zone="DE") == 206.0
    assert api.token not in text
    assert not any(api.token in r.getMessage() for r in caplog.records)
