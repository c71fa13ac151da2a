"""The report's test doubles and data (from tests/test_report.py): a fake of Prometheus' query
API and its answers, the credentials, a synthetic exporter with its promtool backfill and the
real Prometheus, and the exporter's series for training runs; shared by the report, chargeback,
hostile-report and Alertmanager tests."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from exporter import report
from tests.support import REPO, stop_process

RULES = REPO / "rules" / "footprint.rules.yaml"
CO2E = "model:footprint_co2e_grams:rate5m"
ENERGY = "model:footprint_energy_joules:rate5m"


# --- a fake Prometheus -----------------------------------------------------------------------

def vector(*samples: tuple[Mapping[str, str], float | str]) -> dict[str, Any]:
    """The body of a successful instant query, as Prometheus writes it."""
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": dict(labels), "value": [1700000000.123, str(value)]}
        for labels, value in samples]}}


def grams(model: str, phase: str, **scopes: float) -> list[tuple[dict[str, str], float]]:
    return [({"model": model, "phase": phase, "scope": scope}, value)
            for scope, value in scopes.items()]


CO2E_DATA = vector(
    *grams("llama", "inference", operational=15.0, infrastructure=3.0, embodied=2.0, total=20.0),
    *grams("llama", "training", operational=12_000.0, infrastructure=2_400.0, embodied=600.0,
           total=15_000.0),
    *grams("bert", "inference", operational=2_500_000.0, infrastructure=500_000.0,
           embodied=1_000_000.0, total=4_000_000.0),
)
ENERGY_DATA = vector(
    ({"model": "llama", "phase": "inference"}, 135_000.0),
    ({"model": "llama", "phase": "training"}, 108_000_000.0),
    ({"model": "bert", "phase": "inference"}, 22_500_000_000.0),
)
WATER = "model:footprint_water_liters:rate5m"
WATER_DATA = vector(  # none for bert: its nodes publish no water gauges
    ({"model": "llama", "phase": "inference", "scope": "water_onsite"}, 0.0675),
    ({"model": "llama", "phase": "inference", "scope": "water_offsite"}, 0.25),
    ({"model": "llama", "phase": "training", "scope": "water_onsite"}, 54.0),
    ({"model": "llama", "phase": "training", "scope": "water_offsite"}, 200.0),
)


@dataclass
class FakePrometheus:
    """Answers /api/v1/query: `co2e` for the grams query, `water` for the litres query, `energy`
    for the joules query, each a (HTTP status, body) pair; a str body goes out as text, anything
    else as JSON."""

    co2e: tuple[int, Any] = (200, CO2E_DATA)
    energy: tuple[int, Any] = (200, ENERGY_DATA)
    water: tuple[int, Any] = (200, WATER_DATA)
    by_rule: dict[str, tuple[int, Any]] = field(default_factory=dict)
    """Answers to the queries that name these records, before the three above."""
    delay: float = 0.0
    requests: list[dict[str, str]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    """Each request's headers, names lower-cased."""
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        self.requests.append(params)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        await asyncio.sleep(self.delay)
        query = params.get("query", "")
        status, body = next(
            (answer for rule, answer in self.by_rule.items() if rule in query),
            self.co2e if CO2E in query else self.water if WATER in query else self.energy)
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return web.json_response(body, status=status)


@pytest.fixture
async def prom() -> AsyncIterator[FakePrometheus]:
    fake = FakePrometheus()
    app = web.Application()
    app.router.add_get("/api/v1/query", fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


async def run(*argv: str) -> int:
    """report.main in a thread, so the fake (on this event loop) can answer it."""
    return await asyncio.to_thread(report.main, list(argv))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- authentication, tenants and TLS options -------------------------------------------------

TOKEN = "s3cr3t-t0ken-VALUE"
PASSWORD = "pa55-w0rd-VALUE"


def secret_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- end to end: a real Prometheus, the real rule pack ---------------------------------------

INTENSITY_G_PER_KWH = 400.0
CO2E_RATE = 0.5
"""g/s of the synthetic container's operational emissions."""
ENERGY_RATE = CO2E_RATE / INTENSITY_G_PER_KWH * 3.6e6
"""J/s (4.5 kW) that give CO2E_RATE at INTENSITY_G_PER_KWH."""
PUE = 1.2
SERVER_GRAMS = 1_500_000.0
GPU_GRAMS = 150_000.0
LIFETIME_SECONDS = 4 * 365 * 86_400
CONTAINER = 'namespace="ml",pod="p",container="c",model="llama",phase="inference"'
WORKLOAD = 'namespace="ml",model="llama",phase="inference"'


def exposition(now: float, t0: float, *, timestamp: bool = False) -> str:
    """The synthetic exporter's metrics at `now`, counters started at `t0` (OpenMetrics with
    timestamps for promtool's backfill; the text format without, for scraping)."""
    ts = f" {now:.3f}" if timestamp else ""
    node = 'node="n1"'
    lines = [
        "# TYPE footprint_container_co2e_grams counter",
        f'footprint_container_co2e_grams_total{{{node},{CONTAINER},component="gpu",'
        f'mode="dynamic"}} {CO2E_RATE * (now - t0)}{ts}',
        "# TYPE footprint_container_energy_joules counter",
        f'footprint_container_energy_joules_total{{{node},{CONTAINER},component="gpu",'
        f'mode="dynamic"}} {ENERGY_RATE * (now - t0)}{ts}',
        "# TYPE footprint_container_allocation_ratio gauge",
        f'footprint_container_allocation_ratio{{{node},{CONTAINER},resource="gpu"}} 0.5{ts}',
        # the exporter's sums per namespace, model and phase: the one container's
        "# TYPE footprint_workload_co2e_grams counter",
        f"footprint_workload_co2e_grams_total{{{node},{WORKLOAD}}} {CO2E_RATE * (now - t0)}{ts}",
        "# TYPE footprint_workload_energy_joules counter",
        f"footprint_workload_energy_joules_total{{{node},{WORKLOAD}}} "
        f"{ENERGY_RATE * (now - t0)}{ts}",
        "# TYPE footprint_workload_allocation_ratio gauge",
        f'footprint_workload_allocation_ratio{{{node},{WORKLOAD},resource="gpu"}} 0.5{ts}',
        "# TYPE footprint_pue gauge",
        f"footprint_pue{{{node}}} {PUE}{ts}",
        "# TYPE footprint_embodied_grams gauge",
        f'footprint_embodied_grams{{{node},component="server",gpu=""}} {SERVER_GRAMS}{ts}',
        f'footprint_embodied_grams{{{node},component="gpu",gpu="0"}} {GPU_GRAMS}{ts}',
        "# TYPE footprint_embodied_lifetime_seconds gauge",
        f"footprint_embodied_lifetime_seconds{{{node}}} {LIFETIME_SECONDS}{ts}",
        "# TYPE footprint_grid_intensity_grams_per_kwh gauge",
        f'footprint_grid_intensity_grams_per_kwh{{{node},grid_zone="test",provider="static"}} '
        f"{INTENSITY_G_PER_KWH}{ts}",
    ]
    return "\n".join(lines) + "\n"


Exposition = Callable[..., str]
"""`exposition` or another with its signature (now, t0, *, timestamp=False)."""


class SyntheticExporter:
    """A tiny metrics endpoint on 127.0.0.1 whose counters grow at known rates since t0."""

    def __init__(self, t0: float, text: Exposition | None = None) -> None:
        t = t0
        exposition_of = text or exposition

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exposition_of(time.time(), t).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def backfill(tmp_path: Path, tsdb: Path, t0: float, end: float, target: str,
             text: Exposition | None = None) -> None:
    """History from t0 to `end`, one sample a second, with the labels scraping will add, so
    the scraped series continue the backfilled ones (of `text`, by default `exposition`)."""
    exposition_of = text or exposition
    extra = f'job="footprint-exporter",instance="{target}",'
    chunks: dict[str, list[str]] = {}
    for k in range(int(end - t0) + 1):
        for line in exposition_of(t0 + k, t0, timestamp=True).splitlines():
            if line.startswith("#"):
                chunks.setdefault(line, [])
                current = line
            else:
                chunks[current].append(line.replace("{", "{" + extra, 1))
    text = "".join(f"{head}\n" + "".join(f"{s}\n" for s in samples)
                   for head, samples in chunks.items()) + "# EOF\n"
    source = tmp_path / "history.om"
    source.write_text(text)
    done = subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(source),
                           str(tsdb)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def get_json(url: str, path: str, **params: str) -> Any:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}{path}?{query}", timeout=10) as response:
        return json.loads(response.read())


class Prometheus:
    """The real prometheus binary on a free loopback port; `args` are more flags. With
    `web_config` (its --web.config.file) the URL is https:// when `tls`, and readiness is
    polled with `context` and `headers`."""

    def __init__(self, tmp_path: Path, config: Path, tsdb: Path, *, args: Sequence[str] = (),
                 web_config: Path | None = None, tls: bool = False,
                 context: ssl.SSLContext | None = None,
                 headers: Mapping[str, str] | None = None, name: str = "prometheus") -> None:
        port = closed_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        self.context, self.headers = context, dict(headers or {})
        self.log = tmp_path / f"{name}.log"
        web = [f"--web.config.file={web_config}"] if web_config is not None else []
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn", *web, *args],
                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)

    def logs(self) -> str:
        return self.log.read_text()[-4000:]

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        request = urllib.request.Request(f"{self.url}/-/ready", headers=self.headers)
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.logs()}"
            try:
                with urllib.request.urlopen(request, timeout=2,
                                            context=self.context) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready after {timeout} s:\n{self.logs()}")

    def stop(self) -> None:
        stop_process(self.proc, 20)


# --- --by run: the exporter's own series for training runs, backfilled with promtool ---------

SCRAPE_S = 60
LIFETIME_BLOOM = 6 * 8760 * 3600 * 0.85  # 160,833,600 s: 6 years at 85% use (exporter/facts.py)
SERVER_BLOOM, GPU_BLOOM = 2_500_000.0, 150_000.0  # grams, BLOOM's embodied defaults


@dataclass
class NodeFacts:
    intensity: float
    pue: float
    wue: float | None = None
    water: float | None = None
    gpus: int = 8


@dataclass
class RunPod:
    node: str
    namespace: str
    pod: str
    model: str
    owner_kind: str
    owner_name: str
    watts: float
    gpu_ratio: float
    start: float
    end: float
    phase: str = "training"
    container: str = "trainer"
    labels: Mapping[str, str] = field(default_factory=dict)
    """Pod labels as the exporter publishes them on footprint_container_info (`label_team`)."""


GRACE_S = 120.0
"""The exporter's default grace period (kubernetes.grace_period_seconds)."""


def _counted(p: RunPod, t: float, up: float) -> float:
    """The pod's energy counter as the exporter last published it at `t`: its value at its
    last scrape at or before `t` (pods start and end on the scrape grid here), 0 before its
    start or when a restart at `up` came since."""
    last = min(t, p.end)
    if last < p.start or (t >= up > last):
        return 0.0
    return p.watts * (last - (max(p.start, up) if last >= up else p.start))


def write_exporter_series(path: Path, nodes: Mapping[str, NodeFacts], pods: Sequence[RunPod],
                          t0: float, t1: float,
                          restarts: Mapping[str, tuple[float, float]] | None = None) -> None:
    """The exporters' scrapes every minute from t0 to t1. A restart (node: crash, up): the
    node's counters lose what they counted since the last scrape and start again from 0 at
    `up`; scrapes in between fail."""
    from tests.backfill import OpenMetricsWriter

    restarts = restarts or {}
    families: dict[str, list[tuple[dict[str, str], list[tuple[float, float]]]]] = {}

    def series(family: str, labels: dict[str, str], samples: list[tuple[float, float]]) -> None:
        families.setdefault(family, []).append((labels, samples))

    def scrapes(node: str) -> list[float]:
        crash, up = restarts.get(node, (math.inf, math.inf))
        return [t0 + k * SCRAPE_S for k in range(int((t1 - t0) // SCRAPE_S) + 1)
                if not crash < t0 + k * SCRAPE_S < up]

    for node, f in nodes.items():
        base = {"node": node, "job": "footprint-exporter", "instance": f"{node}:9102"}
        times = scrapes(node)

        def const(value: float, ts: list[float] = times) -> list[tuple[float, float]]:
            return [(t, value) for t in ts]

        series("footprint_pue", base, const(f.pue))
        series("footprint_grid_intensity_grams_per_kwh",
               {**base, "grid_zone": "FR", "provider": "static"}, const(f.intensity))
        series("footprint_embodied_lifetime_seconds", base, const(LIFETIME_BLOOM))
        series("footprint_embodied_grams", {**base, "component": "server", "gpu": ""},
               const(SERVER_BLOOM))
        for gpu in range(f.gpus):
            series("footprint_embodied_grams", {**base, "component": "gpu", "gpu": str(gpu)},
                   const(GPU_BLOOM))
        series("footprint_node_info", {**base, "topology_zone": "", "topology_region": "",
                                       "instance_type": "", "cpu_model": "",
                                       "gpu_product": "NVIDIA A100-SXM4-80GB",
                                       "gpu_count": str(f.gpus)}, const(1.0))
        if f.wue is not None:
            series("footprint_wue_liters_per_kwh", base, const(f.wue))
        if f.water is not None:
            series("footprint_grid_water_intensity_liters_per_kwh",
                   {**base, "grid_zone": "FR", "source": "test"}, const(f.water))
    for p in pods:
        f = nodes[p.node]
        base = {"node": p.node, "job": "footprint-exporter", "instance": f"{p.node}:9102",
                "namespace": p.namespace, "pod": p.pod, "container": p.container,
                "model": p.model, "phase": p.phase}
        times = [t for t in scrapes(p.node) if p.start <= t <= p.end]
        up = restarts.get(p.node, (math.inf, math.inf))[1]
        joules = [(t, p.watts * (t - (max(p.start, up) if t >= up else p.start)))
                  for t in times]
        counter = {**base, "component": "gpu", "mode": "dynamic"}
        series("footprint_container_energy_joules_total", counter, joules)
        series("footprint_container_co2e_grams_total", counter,
               [(t, j * f.intensity / 3.6e6) for t, j in joules])
        series("footprint_container_allocation_ratio", {**base, "resource": "gpu"},
               [(t, p.gpu_ratio) for t in times])
        series("footprint_container_info", {
            k: v for k, v in {**base, "model_source": "kubeflow-training",
                              "owner_kind": p.owner_kind, "owner_name": p.owner_name,
                              "container_id": f"containerd://{p.pod}", "uid": f"uid-{p.pod}"
                              }.items() if k != "phase"} | {"phase": p.phase} | dict(p.labels),
               [(t, 1.0) for t in times])
    # The exporters' sums (exporter.chargeback): per node, per (namespace, model, phase), and
    # per value of each pod label any pod carries (as if kubernetes.chargeback_labels named
    # it; "" for a pod without it), the pods' counters added up, kept (flat) for the grace
    # period after the last of them ends; the GPU ratios summed while the pods run. A restart
    # starts the node's sums again from 0, as it does each container's counter.
    names = sorted({name for p in pods for name in p.labels})

    def keys_of(p: RunPod) -> list[tuple[str, dict[str, str]]]:
        return [("workload", {"namespace": p.namespace, "model": p.model, "phase": p.phase}),
                *(("chargeback", {"label": name, "value": p.labels.get(name, "")})
                  for name in names)]

    for node in nodes:
        up = restarts.get(node, (math.inf, math.inf))[1]
        groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[RunPod]] = {}
        for p in pods:
            if p.node == node:
                for kind, key in keys_of(p):
                    groups.setdefault((kind, tuple(key.items())), []).append(p)
        for (kind, key), group in sorted(groups.items()):
            totals = [sum(_counted(p, t, up) for p in group) for t in scrapes(node)]
            kept = [(t, j) for t, j in zip(scrapes(node), totals, strict=True)
                    if any(p.start <= t <= p.end + GRACE_S for p in group)]
            f = nodes[node]
            labels = {"node": node, "job": "footprint-exporter", "instance": f"{node}:9102",
                      **dict(key)}
            # the workload sums carry no component or mode (exporter/metrics.py)
            counter = labels if kind == "workload" else {**labels, "component": "gpu",
                                                         "mode": "dynamic"}
            series(f"footprint_{kind}_energy_joules_total", counter, kept)
            series(f"footprint_{kind}_co2e_grams_total", counter,
                   [(t, j * f.intensity / 3.6e6) for t, j in kept])
            ratios = [(t, sum(p.gpu_ratio for p in group if p.start <= t <= p.end))
                      for t in scrapes(node) if any(p.start <= t <= p.end for p in group)]
            series(f"footprint_{kind}_allocation_ratio", {**labels, "resource": "gpu"},
                   ratios)
    with path.open("w") as out:
        writer = OpenMetricsWriter(out)
        for family, members in families.items():
            writer.family(family, "counter" if family.endswith("_total") else "gauge")
            for labels, samples in members:
                writer.series(family, labels, samples)
        writer.close()
