"""HTTP: the scrape serves the last tick's bytes, negotiated as Prometheus asks."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from exporter import cli
from exporter.server import STATE, ExporterState, accepts_gzip, make_app, wants_openmetrics
from tests.support import node_tree, parse, value

PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


@pytest.mark.parametrize(("accept", "openmetrics"), [
    ("", False),
    ("*/*", False),
    ("text/plain;version=0.0.4", False),
    (PROMETHEUS_ACCEPT, True),
    ("application/openmetrics-text", True),
    ("application/openmetrics-text;version=1.0.0;q=0.2,text/plain;q=0.9", False),
    ("application/openmetrics-text;version=0.0.1", False),  # a version we do not render
    ("application/openmetrics-text;q=0", False),
    ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
     "text/plain;version=0.0.4;q=0.3", True),  # Prometheus 3
])
def test_negotiation(accept: str, openmetrics: bool) -> None:
    assert wants_openmetrics(accept) is openmetrics


def test_gzip_negotiation() -> None:
    assert accepts_gzip("gzip")
    assert accepts_gzip("deflate, gzip;q=0.5")
    assert not accepts_gzip("gzip;q=0")
    assert not accepts_gzip("")


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    root = node_tree(tmp_path, "intel-2s")
    settings = cli.parse_settings(["--path.sysfs", str(root / "sys"),
                                   "--path.procfs", str(root / "proc"),
                                   "--no-collector.kubernetes", "--no-collector.nvml"])
    state = ExporterState(sampler=cli.build_sampler(settings), telemetry_path="/metrics")
    async with TestClient(TestServer(make_app(state))) as client:
        yield client


async def test_not_ready_until_the_first_tick(client: TestClient) -> None:  # type: ignore[type-arg]
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/metrics")).status == 503
    state: ExporterState = client.app[STATE]
    state.snapshot = state.sampler.tick()
    assert (await client.get("/readyz")).status == 200


async def test_formats(client: TestClient) -> None:  # type: ignore[type-arg]
    state: ExporterState = client.app[STATE]
    state.snapshot = state.sampler.tick()
    plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert plain.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "Content-Encoding" not in plain.headers
    text = await plain.text()
    assert value(parse(text), "footprint_source_up", source="rapl") == 1.0

    om = await client.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT,
                                               "Accept-Encoding": "gzip"},
                          auto_decompress=False)
    assert om.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert om.headers["Content-Encoding"] == "gzip"
    body = gzip.decompress(await om.read()).decode()
    assert body.endswith("# EOF\n")
    assert "footprint_node_energy_joules_total{" in body


async def test_scrape_serves_the_snapshot_not_the_hardware(
        client: TestClient, tmp_path: Path) -> None:  # type: ignore[type-arg]
    state: ExporterState = client.app[STATE]
    state.snapshot = state.sampler.tick()
    first = await (await client.get("/metrics")).read()
    for zone in (tmp_path / "node" / "sys" / "class" / "powercap").glob("intel-rapl:*"):
        (zone / "energy_uj").write_text("0\n")  # hardware changes, no tick runs
    assert await (await client.get("/metrics")).read() == first


async def test_landing_page_says_why_each_source_is_on_or_off(
        client: TestClient) -> None:  # type: ignore[type-arg]
    page = await (await client.get("/")).text()
    assert "<td>rapl</td><td>on</td><td>cpu, dram, platform</td>" in page
    assert "<td>estimated</td><td>off</td>" in page
    assert "not needed: a sensor covers cpu and dram" in page


async def test_landing_page_lists_every_input(client: TestClient) -> None:  # type: ignore[type-arg]
    state: ExporterState = client.app[STATE]
    state.snapshot = state.sampler.tick()
    page = await (await client.get("/")).text()
    assert "<td>kubernetes</td><td>off</td>" in page  # --no-collector.kubernetes
    assert "<td>intensity</td><td>up</td><td>carbon</td><td>475 gCO2e/kWh for zone unknown " \
           "from default; no live provider</td>" in page
    assert "<td>pue</td><td>on</td><td>infrastructure</td><td>PUE 1.58</td>" in page
    assert "<td>nvml</td><td>off</td>" in page and "<td>hwmon</td><td>off</td>" in page
