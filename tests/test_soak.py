"""Churn soak: 5,000 pod create/delete cycles against the fake API server while a thread scrapes
the real HTTP app (exporter.server.make_app, served in-process), bounded to a few minutes.

Afterwards, past the grace period: the series count is back to its baseline, the exporter's
memory is back to its baseline (tracemalloc, filtered to exporter/ files as test_kube.py's churn
test does; not RSS, which the allocator does not hand back reliably), and at every tick no
container series outlived its pod by more than the grace period."""

from __future__ import annotations

import asyncio
import gc
import gzip
import math
import shutil
import threading
import tracemalloc
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from exporter.metrics import CONTAINER_SERIES
from exporter.sampler import Sampler
from exporter.server import ExporterState, make_app
from tests.fakes.kube_api import FakeKubeAPI
from tests.support import parse
from tests.support.kube import (
    NODE,
    NODE_LABELS,
    cid,
    cpu_stat,
    drive,
    energy_series,
    four_pods,
    in_process,
    pod,
    pods_seen,
    tick_increments,
    wait_for,
)

pytestmark = pytest.mark.slow(seconds=90)

CYCLES = 5_000
BATCH = 50
GRACE = 6.0
"""Fake seconds; each batch takes 3 fake seconds, so about two batches' series coexist."""
STEADY = {cid("1"): 0.5, cid("2"): 0.5, cid("4"): 0.5, cid("3"): 0.5}


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(node_name=NODE, node_labels=NODE_LABELS, allocatable_cpu="16",
                     bookmark_interval=0.5, max_events=2_000) as fake:
        yield fake


class Served:
    """The exporter's aiohttp app on 127.0.0.1 in a thread of its own; the test ticks."""

    def __init__(self, sampler: Sampler) -> None:
        self.state = ExporterState(sampler=sampler, telemetry_path="/metrics")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = web.AppRunner(make_app(self.state), access_log=None,
                                    handle_signals=False)
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        self.port = int(self.runner.addresses[0][1])

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def counters(text: str) -> dict[str, float]:
    """Every `_total` sample of an exposition, by its name and labels as written (a light
    parser: prometheus_client's would hold the GIL long enough to slow the ticks down)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        key, _, number = line.rpartition(" ")
        if key.partition("{")[0].endswith("_total"):
            out[key] = float(number)
    return out


class Scraper(threading.Thread):
    """Scrapes until stopped; every text scrape parses and no counter goes back."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.stop = threading.Event()
        self.scrapes = 0
        self.errors: list[str] = []

    def run(self) -> None:
        previous: dict[str, float] | None = None
        while not self.stop.is_set():
            try:
                gzipped = self.scrapes % 5 == 4
                headers = {"Accept-Encoding": "gzip"} if gzipped else {}
                request = urllib.request.Request(self.url, headers=headers)
                with urllib.request.urlopen(request, timeout=10) as response:
                    body = response.read()
                series = counters((gzip.decompress(body) if gzipped else body).decode())
                if previous is not None:
                    for key, old in previous.items():
                        new = series.get(key)
                        if new is not None and new < old:
                            self.errors.append(f"{key} went back from {old} to {new}")
                previous = series
                self.scrapes += 1
                self.stop.wait(0.02)  # a busy scraper, not one that starves the ticks
            except Exception as exc:
                self.errors.append(repr(exc))
                return


def test_churn_while_scraping_returns_to_baseline(
        tmp_path: Path, api: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    for p in four_pods():
        api.add_pod(p)
    root, sampler, clock = in_process(tmp_path, api, monkeypatch, grace_seconds=GRACE)
    base = cpu_stat(root, cid("4")).parent
    pool = [f"{i:064x}" for i in range(1, BATCH + 1)]
    for container_id in pool:
        shutil.copytree(base, base.parent / container_id)
    deleted: dict[str, float] = {}  # churn pod -> fake time of its deletion
    live: set[str] = set()
    peak = 0
    served = Served(sampler)
    scraper = Scraper(served.port)

    def checked_tick() -> None:
        nonlocal peak
        before = energy_series(sampler)
        served.state.snapshot = sampler.tick()
        increments = tick_increments(before, energy_series(sampler))
        for component in ("cpu", "dram"):
            assert math.isclose(increments[("parts", component)],
                                increments[("node", component)],
                                rel_tol=1e-9, abs_tol=1e-9), component
        peak = max(peak, sampler.ledger.series_count())
        for store in (sampler.ledger.counters, sampler.ledger.gauges):
            for name in CONTAINER_SERIES:
                for labels in store.get(name, {}):
                    namespace, pod_name = labels[0], labels[1]
                    if namespace != "churn" or pod_name in live:
                        continue
                    assert clock.now - deleted[pod_name] <= GRACE, (name, labels)

    sampler.start()
    try:
        wait_for(lambda: len(pods_seen(sampler)) == 4, "the steady pods")
        for _ in range(3):
            drive(root, clock, cpu_j=50.0, busy=3.0, usage=STEADY)
            checked_tick()
        scraper.start()
        wait_for(lambda: scraper.scrapes >= 3 or bool(scraper.errors), "first scrapes")
        baseline_series = sampler.ledger.series_count()
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for start in range(0, CYCLES, BATCH):
            names = [f"churn-{i}" for i in range(start, start + BATCH)]
            for name, container_id in zip(names, pool, strict=True):
                api.add_pod(pod(name, container_id, namespace="churn",
                                labels={"footprint.dev/model": f"m{int(name[6:]) % 7}"}))
            live.update(names)
            wait_for(lambda: len(pods_seen(sampler)) == 4 + BATCH, "churn pods added")
            for _ in range(2):  # the first tick is each new container's CPU baseline
                drive(root, clock, cpu_j=50.0, busy=3.0,
                      usage={**STEADY, **dict.fromkeys(pool, 0.01)})
                checked_tick()
            for name in names:
                api.delete_pod("churn", name)
                deleted[name] = clock.now
            live.difference_update(names)
            wait_for(lambda: len(pods_seen(sampler)) == 4, "churn pods deleted")
            drive(root, clock, cpu_j=50.0, busy=3.0, usage=STEADY)
            checked_tick()
            assert not scraper.errors, scraper.errors[:5]
        clock.now += GRACE + 1.0  # past the grace period
        checked_tick()
        scrapes = scraper.scrapes
        wait_for(lambda: scraper.scrapes >= scrapes + 2 or bool(scraper.errors),
                 "scrapes of the last tick")
        scraper.stop.set()
        scraper.join(10)
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        final = parse(served.state.snapshot.text.decode())  # type: ignore[union-attr]
    finally:
        scraper.stop.set()
        sampler.close()
        served.close()
    assert not scraper.errors, scraper.errors[:5]
    assert scraper.scrapes > 100, "the scraper did run alongside the churn"
    assert peak >= baseline_series + BATCH * 10, "the churning containers did get series"
    assert sampler.ledger.series_count() == baseline_series
    assert not any(dict(ls).get("namespace") == "churn" for _, ls in final)
    exporter_code = [tracemalloc.Filter(True, "*/exporter/*")]
    diff = after.filter_traces(exporter_code).compare_to(before.filter_traces(exporter_code),
                                                        "lineno")
    grown = sum(stat.size_diff for stat in diff)
    top = "\n".join(str(stat) for stat in diff[:10])
    assert grown < 256 * 1024, f"exporter memory grew by {grown} bytes over the churn:\n{top}"
    assert api.stats["list"] == 1 and api.stats["watch"] == 1
