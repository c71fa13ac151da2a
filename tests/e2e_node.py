"""Pieces of the end-to-end test (tests/test_e2e.py): a fixture GPU node with 50 pods, a
driver that advances its counters by known amounts, the exporter served in-process, and
Debian's real Prometheus on loopback."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from exporter.sampler import Sampler
from exporter.server import ExporterState, serve
from tests.fakes.fake_nvml import FakeGpu, FakeNvml, FakeProcess, h100
from tests.fakes.podresources_server import pod as resources_of
from tests.support import (
    FIXTURES,
    REPO,
    advance,
    max_uj,
    node_tree,
    read_uj,
    stop_process,
    wait_http_ok,
    write_atomic,
    write_in_place,
    zone_dir,
)

NODE = "e2e-node"
ALLOCATABLE_CPU = 64
GPU_UUIDS = [f"GPU-e2e00000-0000-4000-8000-00000000000{i}" for i in range(8)]
GPU_WATTS = [300.0, 320.0, 450.0, 460.0, 250.0, 500.0, 510.0, 520.0]
"""True power of each GPU while the driver runs (constant, so every second adds watts x 1 J)."""
RAPL_UJ_PER_SECOND = {
    # cpu: the two packages (core and uncore are inside them and never added)
    "intel-rapl:0": 80_000_000, "intel-rapl:1": 70_000_000,
    "intel-rapl:0:0": 30_000_000, "intel-rapl:1:0": 25_000_000, "intel-rapl:0:1": 5_000_000,
    # dram
    "intel-rapl:0:2": 10_000_000, "intel-rapl:1:1": 8_000_000,
    # platform (psys)
    "intel-rapl:2": 200_000_000,
}
COMPONENT_ZONES = {"cpu": ("intel-rapl:0", "intel-rapl:1"),
                   "dram": ("intel-rapl:0:2", "intel-rapl:1:1"),
                   "platform": ("intel-rapl:2",)}
BUSY_TICKS_PER_SECOND = 2_000  # /proc/stat user jiffies at 100 Hz: 20 busy CPUs of 64


@dataclass(frozen=True)
class Workload:
    """One pod of the fixture node (one container, `main`)."""

    name: str
    container_id: str
    cpu_request: str
    cpu_seconds_per_second: float
    labels: dict[str, str] = field(default_factory=dict)
    image: str = "busybox:1.36"
    args: tuple[str, ...] = ()
    gpus: tuple[int, ...] = ()
    pid: int = 0
    namespace: str = "ml"

    def pod(self) -> dict[str, Any]:
        return {
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "labels": dict(self.labels)},
            "spec": {"nodeName": NODE, "containers": [{
                "name": "main", "image": self.image, "args": list(self.args),
                "resources": {"requests": {"cpu": self.cpu_request}}}]},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "main", "containerID": f"containerd://{self.container_id}",
                "state": {"running": {"startedAt": "2026-11-26T10:00:00Z"}}}]},
        }


def workloads() -> list[Workload]:
    """50 pods: 7 hold the 8 GPUs (two vLLM, one KServe, one explicit, three Kubeflow
    workers), 43 run on CPU only (20 of an explicitly labelled model, 23 of none). A `team`
    label (chargeback, docs/chargeback.md) on 13 of them: `vision` on the explicit and the
    KServe GPU pods and 10 of the CPU model's, `speech` on the Kubeflow workers; none on the
    rest."""
    out: list[Workload] = []

    def add(name: str, request: str, busy: float, **kw: Any) -> None:
        index = len(out)
        out.append(Workload(name, f"{index + 1:064x}", request, busy,
                            pid=5000 + index if kw.get("gpus") else 0, **kw))

    vllm_args = ("vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct", "--port", "8000")
    for i in range(2):
        add(f"llama-7c9f8d6b5-x{i}", "4", 1.0, image="vllm/vllm-openai:v0.6.3",
            args=vllm_args, labels={"app": "llama"}, gpus=(i,))
    add("mixtral-0", "4", 1.0, labels={"footprint.dev/model": "mixtral-8x7b", "team": "vision"},
        gpus=(2, 3))
    add("sentiment-predictor-00001-deployment-6f7d9c8b4-qwert", "4", 1.0,
        labels={"serving.kserve.io/inferenceservice": "sentiment", "component": "predictor",
                "team": "vision"},
        gpus=(4,))
    for i in range(3):
        add(f"bert-finetune-worker-{i}", "4", 1.0,
            labels={"training.kubeflow.org/job-name": "bert-finetune",
                    "training.kubeflow.org/replica-type": "worker", "team": "speech"},
            gpus=(5 + i,))
    for i in range(20):
        add(f"embedder-{i:02d}", "500m", 0.25,
            labels={"footprint.dev/model": "e5-large", **({"team": "vision"} if i < 10 else {})})
    for i in range(23):
        add(f"web-{i:02d}", "500m", 0.25, labels={"app": "web"}, namespace="web")
    return out


def build_node(tmp_path: Path, pods: list[Workload]) -> tuple[Path, FakeNvml, list[FakeGpu]]:
    """RAPL (intel-2s), /proc (stat, meminfo, <pid>/cgroup of the GPU processes), a cgroup v2
    cgroupfs tree with one directory per container, and 8 fake H100s."""
    root = node_tree(tmp_path, "intel-2s")
    variant = FIXTURES / "cgroup" / "v2-cgroupfs-containerd" / "sys" / "fs"
    shutil.copytree(variant, root / "sys" / "fs")
    gpus = [h100(uuid) for uuid in GPU_UUIDS]
    for n, w in enumerate(pods):
        pod_dir = (root / "sys" / "fs" / "cgroup" / "kubepods" / "burstable" /
                   f"pod0e2e0000-0000-4000-8000-{n:012x}")
        (pod_dir / w.container_id).mkdir(parents=True)
        write_in_place(pod_dir / "cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n")
        write_in_place(pod_dir / w.container_id / "cpu.stat",
                     "usage_usec 1000000\nuser_usec 900000\nsystem_usec 100000\n")
        if w.gpus:
            cgroup = root / "proc" / str(w.pid) / "cgroup"
            cgroup.parent.mkdir(parents=True)
            write_atomic(cgroup, f"0::/kubepods/burstable/{pod_dir.name}/{w.container_id}\n")
            for index in w.gpus:
                gpus[index].processes = [FakeProcess(w.pid)]
    nvml = FakeNvml(gpus)
    for gpu, watts in zip(gpus, GPU_WATTS, strict=True):
        nvml.set_watts(gpu, watts)
    return root, nvml, gpus


def pod_resources(pods: list[Workload]) -> list[Any]:
    return [resources_of(w.namespace, w.name,
                         {"main": {"nvidia.com/gpu": [GPU_UUIDS[i] for i in w.gpus]}})
            for w in pods if w.gpus]


def cpu_stat_path(root: Path, pods: list[Workload], w: Workload) -> Path:
    n = pods.index(w)
    return (root / "sys" / "fs" / "cgroup" / "kubepods" / "burstable" /
            f"pod0e2e0000-0000-4000-8000-{n:012x}" / w.container_id / "cpu.stat")


class Driver:
    """Advances the node's counters once per second of wall time by known amounts and keeps
    the totals it drove (joules per component and per GPU), under a lock."""

    GARBAGE_SECONDS = range(10, 13)
    """psys reads garbage in these seconds (a fault: footprint_exporter_errors_total counts
    it); its true counter goes on and is written back afterwards, so the first good read
    counts the energy of the gap once."""

    def __init__(self, root: Path, nvml: FakeNvml, gpus: list[FakeGpu],
                 pods: list[Workload], vllm: VllmMetrics) -> None:
        self.root, self.nvml, self.gpus, self.pods, self.vllm = root, nvml, gpus, pods, vllm
        self._psys_uj = read_uj(root, "intel-rapl:2")
        self.lock = threading.Lock()
        self.seconds = 0
        self.joules = {"cpu": 0.0, "dram": 0.0, "platform": 0.0, "gpu": 0.0}
        self.gpu_joules = [0.0] * len(gpus)
        self._usage_us = {w.container_id: 1_000_000 for w in pods}
        self._paths = {w.container_id: cpu_stat_path(root, pods, w) for w in pods}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e2e-driver", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        assert not self._thread.is_alive(), "the driver did not stop"
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        next_at = time.monotonic()
        try:
            while True:
                next_at += 1.0
                if self._stop.wait(max(0.0, next_at - time.monotonic())):
                    return
                self.one_second()
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def one_second(self) -> None:
        with self.lock:
            for zone, uj in RAPL_UJ_PER_SECOND.items():
                if zone != "intel-rapl:2":
                    advance(self.root, zone, uj)
            self._psys_uj = (self._psys_uj + RAPL_UJ_PER_SECOND["intel-rapl:2"]) % max_uj(
                self.root, "intel-rapl:2")
            psys = zone_dir(self.root, "intel-rapl:2") / "energy_uj"
            garbage = self.seconds in self.GARBAGE_SECONDS
            write_atomic(psys, "garbage\n" if garbage else f"{self._psys_uj}\n")
            stat = self.root / "proc" / "stat"
            lines = stat.read_text().splitlines()
            fields = lines[0].split()
            fields[1] = str(int(fields[1]) + BUSY_TICKS_PER_SECOND)
            fields[4] = str(int(fields[4]) + ALLOCATABLE_CPU * 100 - BUSY_TICKS_PER_SECOND)
            lines[0] = "cpu  " + " ".join(fields[1:])
            write_atomic(stat, "\n".join(lines) + "\n")
            for w in self.pods:
                used = self._usage_us[w.container_id] + round(w.cpu_seconds_per_second * 1e6)
                self._usage_us[w.container_id] = used
                write_in_place(self._paths[w.container_id],
                             f"usage_usec {used}\nuser_usec {used}\nsystem_usec 0\n")
            self.nvml.advance(1.0)
            self.vllm.one_second()
            for component, zones in COMPONENT_ZONES.items():
                self.joules[component] += sum(RAPL_UJ_PER_SECOND[z] for z in zones) / 1e6
            for i, watts in enumerate(GPU_WATTS):
                self.gpu_joules[i] += watts
                self.joules["gpu"] += watts
            self.seconds += 1


class VllmMetrics:
    """One vLLM server's own counters (generated tokens, finished requests) on loopback, as
    vLLM publishes them; the driver advances them."""

    TOKENS_PER_SECOND = 500
    REQUESTS_PER_SECOND = 2

    def __init__(self) -> None:
        self.tokens = 0
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = ("# TYPE vllm:generation_tokens_total counter\n"
                        f"vllm:generation_tokens_total {outer.tokens}\n"
                        "# TYPE vllm:request_success_total counter\n"
                        f'vllm:request_success_total{{finished_reason="stop"}} {outer.requests}\n'
                        ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="e2e-vllm",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def one_second(self) -> None:
        self.tokens += self.TOKENS_PER_SECOND
        self.requests += self.REQUESTS_PER_SECOND

    def stop(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join(5)
        self.server.server_close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _ThreadLoop(asyncio.SelectorEventLoop):
    """An event loop for a non-main thread: `serve()` installs SIGTERM/SIGINT handlers, which
    only the main thread may do; the test stops the server with its `stop` event instead."""

    def add_signal_handler(  # type: ignore[override]
            self, sig: int, callback: Callable[..., object], *args: Any) -> None:
        pass

    def remove_signal_handler(self, sig: int) -> bool:
        return False


class ServedExporter:
    """`exporter.server.serve` with its real HTTP server, in a thread with its own loop."""

    def __init__(self, sampler: Sampler) -> None:
        self.port = free_port()
        self.state = ExporterState(sampler=sampler, telemetry_path="/metrics")
        self._loop = _ThreadLoop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="e2e-exporter", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "the exporter's loop did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> int:
            self._stop = asyncio.Event()
            self._ready.set()
            return await serve(self.state, listen_address=f"127.0.0.1:{self.port}",
                               interval_seconds=1.0, stop=self._stop)

        try:
            self.exit_code = self._loop.run_until_complete(main())
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        stop = self._stop
        if stop is not None:
            self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(15)
        assert not self._thread.is_alive(), "the exporter did not stop"


class Prometheus:
    """Debian's prometheus on a free loopback port with a temporary TSDB."""

    def __init__(self, binary: str, tmp_path: Path, *, exporter_port: int,
                 rule_files: list[Path], vllm_port: int, vllm_pod: tuple[str, str]) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{
                "job_name": "footprint-exporter", "honor_labels": True,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}],
            }, {
                # what Prometheus Operator's PodMonitor adds: the pod's namespace and name
                "job_name": "vllm",
                "static_configs": [{"targets": [f"127.0.0.1:{vllm_port}"],
                                    "labels": {"namespace": vllm_pod[0], "pod": vllm_pod[1]}}],
            }],
        }
        self._launch(binary, tmp_path, config)

    def _launch(self, binary: str, tmp_path: Path, config: dict[str, Any]) -> None:
        """Writes `config` to prometheus.yml and starts the server on `self.port`."""
        self.config = tmp_path / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = tmp_path / "prometheus.log"
        self._log = self.log.open("w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.config}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"],
            cwd=tmp_path, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_http_ok(self.url + "/-/ready", self.proc, "prometheus", self.logs, timeout)

    def logs(self) -> str:
        self._log.flush()
        return self.log.read_text()[-4000:]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self) -> None:
        stop_process(self.proc, 15)
        self._log.close()


BUDGET_ALERT = "FootprintModelDailyEmissionsOverBudget"
BUDGET_ALERT_FOR = "10s"


CHARGEBACK_BUDGETS = {
    "label_team:footprint_co2e_daily_budget_grams": ("label_team", "vision", 1e9),
    "label_team:footprint_co2e_monthly_budget_grams": ("label_team", "vision", 1e9),
    "namespace:footprint_co2e_daily_budget_grams": ("namespace", "ml", 1e9),
    "namespace:footprint_co2e_monthly_budget_grams": ("namespace", "ml", 1e9),
}
"""A chargeback budget of each kind (rules/chargeback-budgets.example.yaml), never exceeded:
the chargeback dashboard's budget panels have a budget to show."""


def rules_files(tmp_path: Path, budgets: dict[str, float]) -> list[Path]:
    """The rule pack, with the budget alert's `for` shortened so it can fire within the test's
    minute (its 5 m `for` is promtool-tested in tests/rules/alerts.yaml), a budgets group
    like rules/budgets.example.yaml, and a chargeback budgets group (CHARGEBACK_BUDGETS)."""
    pack = yaml.safe_load((REPO / "rules" / "footprint.rules.yaml").read_text())
    (alert,) = [r for g in pack["groups"] for r in g["rules"] if r.get("alert") == BUDGET_ALERT]
    alert["for"] = BUDGET_ALERT_FOR
    pack_path = tmp_path / "footprint.rules.yaml"
    pack_path.write_text(yaml.safe_dump(pack, sort_keys=False))
    terms = "\nor\n".join(f'label_replace(vector({grams!r}), "model", "{model}", "", "")'
                          for model, grams in budgets.items())
    path = tmp_path / "budgets.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "footprint.budgets", "rules": [
        {"record": "model:footprint_co2e_daily_budget_grams", "expr": terms}]}]},
        sort_keys=False))
    chargeback = tmp_path / "chargeback-budgets.yaml"
    chargeback.write_text(yaml.safe_dump({"groups": [{
        "name": "footprint.chargeback.budgets", "rules": [
            {"record": record,
             "expr": f'label_replace(vector({grams!r}), "{key}", "{value}", "", "")'}
            for record, (key, value, grams) in CHARGEBACK_BUDGETS.items()]}]}, sort_keys=False))
    return [pack_path, path, chargeback]
