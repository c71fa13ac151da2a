"""Live grid intensity: Electricity Maps and WattTime against local fakes, the fallback chain,
credentials that never show, and the zone map. All traffic goes to 127.0.0.1; time is a fake
clock shared by client and fake server, so no test waits on a timer."""

from __future__ import annotations

import base64
import logging
import pickle
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest

from exporter.carbon import Intensity
from exporter.config import ConfigError
from exporter.intensity import (
    REGIONS,
    ElectricityMaps,
    FallbackChain,
    Secret,
    WattTime,
    cloud_of,
    world_average,
    zone_for,
)
from exporter.intensity.live import BACKOFF_START_SECONDS, retry_after_seconds
from exporter.intensity.watttime import GRAMS_PER_KWH_PER_LBS_PER_MWH
from tests.fakes.carbon_apis import FakeElectricityMaps, FakeWattTime
from tests.support import REPO, START, FakeClock
from tests.support.intensity import live_exporter_text

EM_PATH = FakeElectricityMaps.PATH
WT_LOGIN = FakeWattTime.LOGIN
WT_FORECAST = FakeWattTime.FORECAST


@pytest.fixture
def em_api(clock: FakeClock) -> Iterator[FakeElectricityMaps]:
    with FakeElectricityMaps(clock=clock) as api:
        yield api


@pytest.fixture
async def em(em_api: FakeElectricityMaps, clock: FakeClock) -> AsyncIterator[ElectricityMaps]:
    provider = ElectricityMaps(zone="DE", token=em_api.token, base_url=em_api.url,
                               timeout_seconds=0.3, clock=clock, trust_env=False)
    yield provider
    await provider.close()


@pytest.fixture
def wt_api(clock: FakeClock) -> Iterator[FakeWattTime]:
    with FakeWattTime(clock=clock) as api:
        yield api


@pytest.fixture
async def wt(wt_api: FakeWattTime, clock: FakeClock) -> AsyncIterator[WattTime]:
    provider = WattTime(region="CAISO_NORTH", username=wt_api.username,
                        password=wt_api.password, base_url=wt_api.url, timeout_seconds=0.3,
                        clock=clock, trust_env=False)
    yield provider
    await provider.close()


def messages(caplog: pytest.LogCaptureFixture, text: str = "") -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("footprint") and text in r.getMessage()]


def unused_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- Electricity Maps -----------------------------------------------------------------------


async def test_electricitymaps_reads_the_latest_intensity(
        em: ElectricityMaps, em_api: FakeElectricityMaps, clock: FakeClock) -> None:
    assert em.reading() is None and not em.up

    delay = await em.poll()

    assert delay == 900.0  # the default refresh: 15 minutes
    reading = em.reading()
    assert reading is not None and em.up
    assert reading.intensity == Intensity(302.0, "DE", "electricitymaps")
    assert reading.basis == "lifecycle" and not reading.estimated
    assert reading.observed_unix == START - START % 3600  # `datetime`: the hour it is for
    assert reading.fetched_unix == clock.now
    (request,) = em_api.requests
    assert (request.method, request.path, request.query) == ("GET", EM_PATH, {"zone": "DE"})
    assert request.headers["auth-token"] == em_api.token
    assert "authorization" not in request.headers


async def test_electricitymaps_refreshes_only_when_due(
        em: ElectricityMaps, em_api: FakeElectricityMaps, clock: FakeClock) -> None:
    await em.poll()
    clock.advance(899)
    assert await em.poll() == pytest.approx(1.0)
    assert em_api.count(EM_PATH) == 1
    em_api.zones["DE"] = 250.0
    clock.advance(1)
    await em.poll()
    assert em_api.count(EM_PATH) == 2
    reading = em.reading()
    assert reading is not None and reading.intensity.grams_per_kwh == 250.0


@pytest.mark.parametrize(("kind", "log_text"), [
    ("500", "answered HTTP 500"),
    ("malformed", "not JSON"),
    ("missing", "without a numeric 'carbonIntensity'"),
    ("slow", "did not answer within 0.3 s"),
])
async def test_electricitymaps_fault_keeps_the_last_value(
        em: ElectricityMaps, em_api: FakeElectricityMaps, clock: FakeClock,
        logged: pytest.LogCaptureFixture, kind: str, log_text: str) -> None:
    await em.poll()
    good = em.reading()
    em_api.fail(kind, times=2)
    clock.advance(900)

    delay = await em.poll()

    assert not em.up
    assert em.reading() is good  # the last good value stays
    assert delay == BACKOFF_START_SECONDS
    (line,) = messages(logged, log_text)
    assert "electricitymaps" in line and "keeping 302 gCO2e/kWh" in line
    # Retried after the backoff, which doubles; the same fault is not logged again.
    clock.advance(delay)
    assert await em.poll() == 2 * BACKOFF_START_SECONDS
    assert em_api.count(EM_PATH) == 3
    assert len(messages(logged, log_text)) == 1
    # Recovery is logged once and the value is live again.
    clock.advance(2 * BACKOFF_START_SECONDS)
    assert await em.poll() == 900.0
    assert em.up
    assert len(messages(logged, "works again")) == 1


async def test_electricitymaps_unreachable_is_a_fault(
        clock: FakeClock, logged: pytest.LogCaptureFixture) -> None:
    provider = ElectricityMaps(zone="DE", token="t0ken-unreachable", base_url=unused_port_url(),
                               timeout_seconds=0.3, clock=clock, trust_env=False)
    try:
        assert await provider.poll() == BACKOFF_START_SECONDS
    finally:
        await provider.close()
    assert not provider.up and provider.reading() is None
    (line,) = messages(logged, "request failed")
    assert "no value yet" in line and "t0ken-unreachable" not in line


@pytest.mark.parametrize(("fallback", "log_text"), [
    (None, "HTTP 404: Zone 'XX' does not exist."),
    ("DE", "answered for zone 'DE', not 'XX'"),  # the API's caller-IP fallback
])
async def test_electricitymaps_unknown_zone_is_a_fault(
        em_api: FakeElectricityMaps, clock: FakeClock, logged: pytest.LogCaptureFixture,
        fallback: str | None, log_text: str) -> None:
    em_api.fallback_zone = fallback
    provider = ElectricityMaps(zone="XX", token=em_api.token, base_url=em_api.url,
                               clock=clock, trust_env=False)
    try:
        await provider.poll()
    finally:
        await provider.close()
    assert not provider.up and provider.reading() is None
    assert messages(logged, log_text)


async def test_electricitymaps_401_says_check_the_token_once(
        em_api: FakeElectricityMaps, clock: FakeClock, logged: pytest.LogCaptureFixture) -> None:
    provider = ElectricityMaps(zone="DE", token="wrong-t0ken-987654321", base_url=em_api.url,
                               clock=clock, trust_env=False)
    try:
        assert await provider.poll() == 900.0  # no fast retries with a bad token
        clock.advance(900)
        await provider.poll()
    finally:
        await provider.close()
    assert not provider.up
    (line,) = messages(logged, "HTTP 401")
    assert line.startswith("electricitymaps: ") and "check the token" in line
    assert "wrong-t0ken-987654321" not in logged.text


async def test_electricitymaps_rereads_a_rotated_token_file_after_401(
        em_api: FakeElectricityMaps, clock: FakeClock, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("old-t0ken\n")
    provider = ElectricityMaps(zone="DE", base_url=em_api.url, clock=clock, trust_env=False,
                               token=Secret.load(file=str(token_file), key="t"))
    try:
        await provider.poll()
        assert not provider.up
        token_file.write_text(em_api.token + "\n")  # the Secret was updated in place
        clock.advance(900)
        await provider.poll()
    finally:
        await provider.close()
    assert provider.up
    assert [r.headers["auth-token"] for r in em_api.requests] == ["old-t0ken", em_api.token]


@pytest.mark.parametrize("header", ["120", "http-date"])
async def test_429_retry_after_is_honoured(
        em: ElectricityMaps, em_api: FakeElectricityMaps, clock: FakeClock,
        logged: pytest.LogCaptureFixture, header: str) -> None:
    if header == "http-date":
        header = format_datetime(datetime.fromtimestamp(clock.now + 120, UTC), usegmt=True)
    em_api.fail("429", retry_after=header)

    assert await em.poll() == pytest.approx(120.0)

    assert not em.up and em.reading() is None
    assert messages(logged, "rate limited (HTTP 429), Retry-After 120 s")
    for _ in range(3):  # however often the loop wakes, no request before it elapses
        clock.advance(39.5)
        await em.poll()
    assert em_api.count(EM_PATH) == 1
    clock.advance(1.5)
    assert await em.poll() == 900.0
    assert em_api.count(EM_PATH) == 2 and em.up


async def test_429_without_retry_after_backs_off(
        em: ElectricityMaps, em_api: FakeElectricityMaps) -> None:
    em_api.fail("429", retry_after=None)
    assert await em.poll() == BACKOFF_START_SECONDS


def test_retry_after_forms() -> None:
    assert retry_after_seconds("7", 0.0) == 7.0
    assert retry_after_seconds("-3", 0.0) == 0.0
    assert retry_after_seconds("Thu, 01 Jan 2026 00:02:00 GMT", START) == 120.0
    assert retry_after_seconds("Wed, 31 Dec 2025 23:00:00 GMT", START) == 0.0
    assert retry_after_seconds("soon", START) is None
    assert retry_after_seconds(None, START) is None


# -- WattTime -------------------------------------------------------------------------------


async def test_watttime_logs_in_and_reads_the_moer(
        wt: WattTime, wt_api: FakeWattTime, clock: FakeClock) -> None:
    delay = await wt.poll()

    assert delay == 300.0  # the default refresh: 5 minutes
    reading = wt.reading()
    assert reading is not None and wt.up
    # 1000 lbs CO2/MWh = 453.592 g/kWh
    assert reading.intensity == Intensity(1000.0 * 0.453592, "CAISO_NORTH", "watttime")
    assert reading.intensity.grams_per_kwh == pytest.approx(453.592)
    assert GRAMS_PER_KWH_PER_LBS_PER_MWH == 0.453592
    assert reading.basis == "marginal"
    assert reading.observed_unix == START - START % 300  # the first point's point_time
    login, forecast = wt_api.requests
    assert login.path == WT_LOGIN
    user_pass = f"{wt_api.username}:{wt_api.password}".encode()
    assert login.headers["authorization"] == "Basic " + base64.b64encode(user_pass).decode()
    assert forecast.path == WT_FORECAST
    assert forecast.query == {"region": "CAISO_NORTH", "signal_type": "co2_moer",
                              "horizon_hours": "0"}
    (token,) = wt_api.tokens
    assert forecast.headers["authorization"] == f"Bearer {token}"


async def test_watttime_reuses_the_token_and_renews_it_before_expiry(
        wt: WattTime, wt_api: FakeWattTime, clock: FakeClock) -> None:
    for _ in range(5):  # 25 minutes: one login
        await wt.poll()
        clock.advance(300)
    assert wt_api.count(WT_LOGIN) == 1 and wt_api.count(WT_FORECAST) == 5
    clock.advance(240)  # 29 minutes after the login: renew before the 30-minute expiry
    await wt.poll()
    assert wt_api.count(WT_LOGIN) == 2
    assert all(r.status == 200 for r in wt_api.requests)  # no request met an expired token


async def test_watttime_401_logs_in_again_once(
        wt: WattTime, wt_api: FakeWattTime, clock: FakeClock,
        logged: pytest.LogCaptureFixture) -> None:
    await wt.poll()
    wt_api.revoke_tokens()
    clock.advance(300)

    await wt.poll()

    assert wt.up
    assert [(r.path, r.status) for r in wt_api.requests] == [
        (WT_LOGIN, 200), (WT_FORECAST, 200),
        (WT_FORECAST, 401), (WT_LOGIN, 200), (WT_FORECAST, 200)]
    assert not messages(logged, "HTTP 401")


async def test_watttime_repeated_401_is_one_auth_fault(
        wt: WattTime, wt_api: FakeWattTime, logged: pytest.LogCaptureFixture) -> None:
    wt_api.fail("401", times=None)

    assert await wt.poll() == 300.0

    assert not wt.up
    assert wt_api.count(WT_LOGIN) == 2 and wt_api.count(WT_FORECAST) == 2  # one re-login
    (line,) = messages(logged, "HTTP 401")
    assert line.startswith("watttime: ")


async def test_watttime_login_refused_names_the_fix(
        wt_api: FakeWattTime, clock: FakeClock, logged: pytest.LogCaptureFixture) -> None:
    provider = WattTime(region="CAISO_NORTH", username=wt_api.username,
                        password="not-the-pa55word", base_url=wt_api.url, clock=clock,
                        trust_env=False)
    try:
        await provider.poll()
    finally:
        await provider.close()
    assert not provider.up
    assert wt_api.count(WT_FORECAST) == 0
    (line,) = messages(logged, "login refused (HTTP 401)")
    assert "check the username 'footprint' and the password" in line
    assert "not-the-pa55word" not in logged.text


async def test_watttime_region_without_access(
        wt_api: FakeWattTime, clock: FakeClock, logged: pytest.LogCaptureFixture) -> None:
    provider = WattTime(region="PJM_DC", username=wt_api.username, password=wt_api.password,
                        base_url=wt_api.url, clock=clock, trust_env=False)
    try:
        await provider.poll()
    finally:
        await provider.close()
    assert not provider.up
    assert messages(logged, "no access to co2_moer for region PJM_DC (HTTP 403)")


@pytest.mark.parametrize(("kind", "endpoint", "log_text"), [
    ("500", "data", "answered HTTP 500"),
    ("malformed", "data", "not JSON"),
    ("missing", "data", "without a numeric 'value'"),
    ("slow", "data", "did not answer within 0.3 s"),
    ("429", "data", "rate limited"),
    ("500", "login", "answered HTTP 500"),
    ("missing", "login", "login answered without a token"),
])
async def test_watttime_fault_keeps_the_last_value(
        wt: WattTime, wt_api: FakeWattTime, clock: FakeClock,
        logged: pytest.LogCaptureFixture, kind: str, endpoint: str, log_text: str) -> None:
    await wt.poll()
    good = wt.reading()
    if endpoint == "login":
        wt_api.revoke_tokens()
        wt_api.fail(kind, endpoint="login")
    else:
        wt_api.fail(kind)
    clock.advance(300)

    await wt.poll()

    assert not wt.up and wt.reading() is good
    (line,) = messages(logged, log_text)
    assert line.startswith("watttime: ")


async def test_watttime_rejects_other_units(
        wt: WattTime, wt_api: FakeWattTime, logged: pytest.LogCaptureFixture) -> None:
    wt_api.units = "kg_co2_per_mwh"
    await wt.poll()
    assert not wt.up and messages(logged, "answered in 'kg_co2_per_mwh', not lbs_co2_per_mwh")


# -- the fallback chain ---------------------------------------------------------------------


STATIC_DE = Intensity(338.0, "DE", "static")


async def test_chain_live_while_fresh_then_static_then_default(
        em: ElectricityMaps, clock: FakeClock, logged: pytest.LogCaptureFixture) -> None:
    chain = FallbackChain(em, STATIC_DE, world_average("DE"), clock=clock)
    bare = FallbackChain(em, None, world_average("DE"), clock=clock)
    assert chain.current() == STATIC_DE  # before the first answer
    assert bare.current() == Intensity(475.0, "DE", "default")
    assert chain.last_update_unix is None and not chain.up

    await em.poll()
    live = Intensity(302.0, "DE", "electricitymaps")
    assert chain.current() == live and bare.current() == live
    observed = START - START % 3600
    assert chain.last_update_unix == observed and chain.up

    clock.now = observed + 7200
    assert chain.current() == live  # exactly the max age (default 2 h): still in force
    clock.now = observed + 7201
    assert chain.current() == STATIC_DE
    assert bare.current() == Intensity(475.0, "DE", "default")
    assert chain.last_update_unix == observed  # the age keeps growing for the alert
    assert messages(logged, "grid intensity: the last electricitymaps value is older") == [
        "grid intensity: the last electricitymaps value is older than 7200 s; using static "
        "338 gCO2e/kWh for zone DE",
        "grid intensity: the last electricitymaps value is older than 7200 s; using default "
        "475 gCO2e/kWh for zone DE"]


def test_chain_without_a_live_provider() -> None:
    assert FallbackChain(None, STATIC_DE).current() == STATIC_DE
    chain = FallbackChain(None, None, world_average())
    assert chain.current() == Intensity(475.0, "unknown", "default")
    assert chain.up and chain.last_update_unix is None
    chain.start()
    chain.stop()


def test_chain_refreshes_in_a_background_thread() -> None:
    with FakeElectricityMaps() as api:
        provider = ElectricityMaps(zone="FR", token=api.token, base_url=api.url,
                                   timeout_seconds=5.0, refresh_seconds=600.0, trust_env=False)
        chain = FallbackChain(provider, Intensity(52.0, "FR", "static"))
        chain.start()
        try:
            deadline = time.monotonic() + 5.0
            while chain.current().provider != "electricitymaps" and time.monotonic() < deadline:
                time.sleep(0.01)
            assert chain.current() == Intensity(32.0, "FR", "electricitymaps")
            assert chain.up
        finally:
            chain.stop()
        assert provider._thread is None
        assert api.count(EM_PATH) == 1


def test_stop_cancels_a_fetch_in_flight() -> None:
    with FakeElectricityMaps() as api:
        api.fail("slow", times=None)
        provider = ElectricityMaps(zone="FR", token=api.token, base_url=api.url,
                                   timeout_seconds=60.0, trust_env=False)
        provider.start()
        deadline = time.monotonic() + 5.0
        while not api.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        thread = provider._thread
        provider.stop(timeout_seconds=5.0)
        assert thread is not None and not thread.is_alive()
        assert provider.reading() is None


# -- credentials never show -----------------------------------------------------------------


async def test_secrets_never_appear_in_logs_reprs_or_errors(
        em_api: FakeElectricityMaps, wt_api: FakeWattTime, clock: FakeClock, tmp_path: Path,
        logged: pytest.LogCaptureFixture) -> None:
    token_file = tmp_path / "em-token"
    token_file.write_text(em_api.token)
    em_token = Secret.load(file=str(token_file), key="carbon.electricitymaps.token_file")
    em = ElectricityMaps(zone="DE", token=em_token, base_url=em_api.url, timeout_seconds=0.3,
                         clock=clock, trust_env=False)
    wt = WattTime(region="CAISO_NORTH", username=wt_api.username, password=wt_api.password,
                  base_url=wt_api.url, timeout_seconds=0.3, clock=clock, trust_env=False)
    try:
        await em.poll()
        await wt.poll()
        for kind in ("401", "429", "500", "malformed", "missing", "slow"):
            em_api.fail(kind)
            wt_api.fail(kind)
            clock.advance(86_400)  # past any backoff, throttle period and Retry-After
            await em.poll()
            await wt.poll()
        wt_api.fail("401", times=2)
        clock.advance(86_400)
        await wt.poll()
        shown = [logged.text, repr(em), str(em), repr(wt), str(wt), repr(em_token),
                 str(em_token), repr(em.reading()), repr(wt.reading())]
    finally:
        await em.close()
        await wt.close()
    bearer_tokens = list(wt_api.tokens)
    assert bearer_tokens
    assert len(messages(logged)) >= 10
    for secret in [em_api.token, wt_api.password, *bearer_tokens]:
        for text in shown:
            assert secret not in text
    assert repr(em_token) == f"Secret(file {str(token_file)!r})"  # as schema.shown_path shows it
    with pytest.raises(TypeError):
        pickle.dumps(em_token)


def test_secret_from_env_and_config_errors(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOOTPRINT_TEST_TOKEN", "  env-t0ken-42\n")
    secret = Secret.load(env="FOOTPRINT_TEST_TOKEN", key="carbon.electricitymaps.token_env")
    assert secret.reveal() == "env-t0ken-42"
    assert repr(secret) == "Secret(env FOOTPRINT_TEST_TOKEN)"
    assert secret.redact("a env-t0ken-42 b") == "a <redacted> b"

    key = "carbon.electricitymaps.token_file"
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: cannot read .*missing"):
        Secret.load(file=str(tmp_path / "missing"), key=key)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        Secret.load(file=str(tmp_path / "empty"), key=key)
    monkeypatch.delenv("FOOTPRINT_TEST_TOKEN")
    with pytest.raises(ConfigError, match="FOOTPRINT_TEST_TOKEN is unset or empty"):
        Secret.load(env="FOOTPRINT_TEST_TOKEN", key=key)
    with pytest.raises(ConfigError, match="set a file"):
        Secret.load(key=key)


# -- zones ----------------------------------------------------------------------------------


def test_zone_for_eks_node() -> None:
    labels = {"topology.kubernetes.io/region": "us-east-1",
              "eks.amazonaws.com/nodegroup": "gpu"}
    found = zone_for(labels, "aws:///us-east-1a/i-0123456789abcdef0")
    assert found is not None
    assert (found.cloud, found.zone, found.grams_per_kwh) == ("aws", "US-MIDA-PJM", 415.755)
    assert "Cloud Carbon Footprint" in found.source
    assert found.intensity() == Intensity(415.755, "US-MIDA-PJM", "static")


def test_zone_for_gke_node_by_label() -> None:
    labels = {"topology.kubernetes.io/region": "europe-west4",
              "cloud.google.com/gke-nodepool": "default-pool"}
    found = zone_for(labels)
    assert found is not None
    assert (found.cloud, found.zone, found.grams_per_kwh) == ("gcp", "NL", 208.81)
    assert "region-carbon-info" in found.source


def test_zone_for_aks_node_by_provider_id() -> None:
    labels = {"topology.kubernetes.io/region": "westeurope"}
    provider_id = "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/x"
    found = zone_for(labels, provider_id)
    assert found is not None and (found.cloud, found.zone) == ("azure", "NL")


def test_zone_for_edge_cases() -> None:
    assert zone_for({}) is None
    assert zone_for({"topology.kubernetes.io/region": "mars-north-1"}) is None
    # Known cloud, region not in the table.
    assert zone_for({"topology.kubernetes.io/region": "me-south-1"}, "aws:///me-south-1a/i") \
        is None
    # No cloud known: a region name only one cloud uses still matches.
    found = zone_for({"failure-domain.beta.kubernetes.io/region": "EU-West-3"})
    assert found is not None and (found.cloud, found.zone) == ("aws", "FR")
    assert cloud_of({"kubernetes.azure.com/cluster": "c"}) == "azure"
    assert cloud_of({}, "gce://project/us-central1-a/node") == "gcp"
    assert cloud_of({}, "kind://docker/kind/kind-control-plane") is None


def test_every_zone_default_is_in_the_docs_table() -> None:
    docs = (REPO / "docs" / "carbon.md").read_text()
    assert 18 <= len(REGIONS) <= 30
    for row in REGIONS.values():
        line = f"| {row.cloud} | `{row.region}` | `{row.zone}` | {row.grams_per_kwh:g} |"
        assert line in docs, line


def test_live_intensity_in_the_exporter_never_shows_the_token(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The whole path: config -> chain -> sampler -> /metrics bytes, with a live provider."""
    from tests.support import parse, value

    caplog.set_level(logging.DEBUG, logger="footprint")
    with FakeElectricityMaps() as api:
        text = live_exporter_text(
            tmp_path, api, "FR", "no fetch",
            lambda sampler: api.count("/v3/carbon-intensity/latest") != 0
            and sampler._intensity.last_update_unix is not None)
    series = parse(text)
    assert value(series, "footprint_source_up", source="intensity") == 1.0
    assert value(series, "footprint_grid_intensity_grams_per_kwh",
                 provider="electricitymaps", grid_zone="FR") > 0
    assert value(series, "footprint_grid_intensity_last_update_timestamp_seconds",
                 provider="electricitymaps") > 0
    assert api.token not in text
    assert not any(api.token in r.getMessage() for r in caplog.records)
