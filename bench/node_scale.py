"""The exporter at node scale: tick CPU, scrape latency under load, RSS and series counts.

One simulated node, in a temp dir: the ``tests/fixtures/intel-2s`` RAPL tree, procfs ``stat`` and
``meminfo``, a cgroup v2 tree (cgroupfs driver, as ``tests/fixtures/cgroup/v2-cgroupfs-containerd``)
with 250 containers in 120 pods, each with a ``cpu.stat`` and 20 processes (5,000
``/proc/<pid>/cgroup`` files), 8 fake H100s (``tests.fakes.fake_nvml``) of which 6 are held
whole and 2 time-sliced three ways through a real pod-resources gRPC server on a unix socket
(``tests.fakes.podresources_server``), and the pods served by the fake API server
(``tests.fakes.kube_api``) to the real ``kubernetes`` client. Every GPU holder runs one
process on its GPU with utilisation samples. Five pods in six carry a ``team`` label (five
teams), which the exporter charges as the chart configures it by default
(``kubernetes.chargeback_labels: [team]``, the per-team sums of exporter/chargeback.py).

The exporter is the project's real code, in this process: ``cli.build_sampler`` then
``server.serve`` on 127.0.0.1 with a 1 s tick. A driver thread advances every counter each
second (RAPL ``energy_uj``, each container's ``usage_usec``, ``/proc/stat``, fake NVML time and
samples). The ``cpu.stat`` files are rewritten in place, as the kernel updates them, and the
exporter is told to read them as it reads cgroupfs (``as_on_cgroupfs``: kept open, ``pread``
only; on an ordinary disk it would also ``fstat`` each after reading, in case a file was replaced
by a rename). Ten scraper *processes* (Prometheus' ``Accept`` and ``Accept-Encoding: gzip``)
scrape back to back for the whole run, so their own CPU does not share this process' GIL; every
other scrape of each goes to the exporter, the rest to the scrape floor (below), each over a
keep-alive connection of its own.

Measured:

- ``tick_cpu_ms``: CPU time of each ``Sampler.tick``: its own thread's (``time.thread_time``)
  plus the sources' read threads' (``read-*``, exporter/watchdog.py); the first two ticks,
  which walk the cgroup tree and read every pid's cgroup, are reported apart;
- ``render_cpu_ms``: CPU time of each render of the exposition, which runs on the first scrape
  after a tick (exporter/exposition.py), not in the tick; with ten scrapers every tick is
  rendered, so a tick's whole CPU here is ``tick_cpu_ms`` + ``render_cpu_ms``;
- ``floor_cpu_ms``: the floor of a tick, timed beside the ticks under the same load (a thread,
  once a second, half a tick after the tick): the same 250 ``cpu.stat`` reads as the exporter
  does them (``pread`` on descriptors kept open) and the same NVML calls on the fake (recorded
  from the first 20 ticks, replayed in turn), nothing else; ``tick_to_floor_p50`` is the
  tick's p50 over the floor's, the figure to trust where the machine's speed varies (goal: at
  most 2). ``floor_open_read_close_cpu_ms``: the same reads opened and closed each time (the
  floor as it was defined before the exporter kept its files open). ``counters_cpu_ms``: timed
  after each floor, the least arithmetic the container counters need each tick, in the
  cheapest Python there is for it: for four columns (cpu and dram, idle and dynamic) of the 250
  containers, each part's joules and grams (products in C, ``map``) added to two dicts keyed
  by the series' labels (``dict.update``), nothing else; ``tick_to_floor_and_counters_p50``
  is the tick's p50 over the sum of both p50s: what a tick in Python that publishes these
  series cannot go below. ``quiet``: after the scrapers stop, 20 ticks and floors in turn,
  the same ratio on an otherwise idle process;
- ``scrape_ms``: client-side latency of every scrape of the exporter (send + read whole body),
  all scrapers; ``scrape_ms.floor``: the same for the scrape floor, a second process running
  the exporter's own HTTP server (``server.serve``) with one fixed, rendered exposition (the
  exporter's first) and no tick, scraped in turn with the exporter by the same scrapers: what
  the machine and the HTTP stack cost a scrape under this load. ``p99_to_floor`` is the
  exporter's p99 over the floor's;
- ``rss_mb``: VmRSS of this process at the end: it holds the exporter *and* the fake API
  server, the gRPC server, the fake NVML and the driver thread;
- ``exporter_only``: a second pass running the exporter as its own process (``python -m
  exporter``'s ``cli.main``, with only the fake ``pynvml`` module injected and a thread advancing
  it) against the same tree, API server and socket, hammered the same way; its VmRSS is the
  exporter's without the other fakes;
- ``series``: sample lines of the last rendered text, total and per container (max).

If a goal is missed, a cProfile of 30 ticks goes to stderr (top 15 by cumulative time).

Run from the repository root::

    .venv/bin/python bench/node_scale.py                # 10 minutes, then a 60 s second pass
    .venv/bin/python bench/node_scale.py --minutes 1 --exporter-only-seconds 0   # quick look

Prints exactly one JSON line to stdout; progress and diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import cProfile
import http.client
import io
import itertools
import json
import math
import operator
import os
import pstats
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support import write_atomic, write_in_place  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures"
NODE = "node-a"
PODS = 120
CONTAINERS = 250
PIDS_PER_CONTAINER = 20
FIRST_PID = 10_000
GPUS = 8
WHOLE_GPUS = 6  # GPUs 0-5 held whole; 6 and 7 time-sliced
SLICES = 3
SCRAPERS = 10
WARMUP_TICKS = 2
PROFILE_TICKS = 30
FLOOR_TICKS = 20
GOALS = {"tick_cpu_p50_ms_max": 5.0, "tick_cpu_p99_ms_max": 10.0, "scrape_p99_ms_max": 5.0,
         "tick_to_floor_p50_max": 2.0,
         "rss_mb_max": 80.0, "series_per_container_max": 16}
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
SCRAPE_HEADERS = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
LABEL_RE = re.compile(r'(namespace|pod|container)="([^"]*)"')


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def as_on_cgroupfs() -> None:
    """The node's `cpu.stat` files are on this disk, not cgroupfs, but written in place as the
    kernel does: let the exporter read them as it reads cgroupfs (kept open, `pread` only, no
    fstat after each read; exporter/usage/cgroups.py, `CgroupReader.check_links`)."""
    from exporter.usage import cgroups

    cgroups.on_cgroupfs = lambda path: True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_mb(pid: int | str = "self") -> dict[str, float]:
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = round(int(rest.split()[0]) / 1024, 1)
        elif key == "Threads":
            out[key] = int(rest)
    return out


def reader_clocks() -> dict[int, int]:
    """CPU clock ids of the sources' read threads (named `read-<source>`)."""
    clocks = {}
    for t in threading.enumerate():
        if t.name.startswith("read-") and t.ident is not None:
            with contextlib.suppress(OSError):
                clocks[t.ident] = time.pthread_getcpuclockid(t.ident)
    return clocks


def percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


# -- the node ----------------------------------------------------------------------------------


def gpu_uuid(i: int) -> str:
    return f"GPU-{i:08x}-0000-4000-8000-{i:012x}"


def container_id(i: int) -> str:
    return f"{i:04x}".ljust(64, "c")


def first_pid(i: int) -> int:
    return FIRST_PID + i * PIDS_PER_CONTAINER


class Node:
    """The simulated node's files and the layout of pods, containers and GPUs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        shutil.copytree(FIXTURES / "intel-2s" / "sys", root / "sys")
        shutil.copytree(FIXTURES / "proc", root / "proc")
        shutil.copytree(FIXTURES / "cgroup" / "v2-cgroupfs-containerd" / "sys" / "fs",
                        root / "sys" / "fs")
        self.pods: list[dict[str, Any]] = []
        self.cpu_stat: list[Path] = []
        self.usage_usec: list[int] = []
        # container index -> (pod name, container name)
        self.names: list[tuple[str, str]] = []
        kubepods = root / "sys" / "fs" / "cgroup" / "kubepods" / "burstable"
        index = 0
        for p in range(PODS):
            count = 3 if p < CONTAINERS - 2 * PODS else 2
            name = f"svc-{p:03d}-7c9f8d6b5-{p:05x}"
            uid = f"0a1b2c3d-{p:04x}-4000-8000-{p:012x}"
            containers, statuses = [], []
            for c in range(count):
                cname = "main" if c == 0 else f"side{c}"
                cid = container_id(index)
                directory = kubepods / f"pod{uid}" / cid
                directory.mkdir(parents=True)
                usec = 1_000_000 + index * 7919
                stat = directory / "cpu.stat"
                write_in_place(stat, self._stat_text(usec))
                self.cpu_stat.append(stat)
                self.usage_usec.append(usec)
                for k in range(PIDS_PER_CONTAINER):
                    pid_dir = root / "proc" / str(first_pid(index) + k)
                    pid_dir.mkdir()
                    (pid_dir / "cgroup").write_text(f"0::/kubepods/burstable/pod{uid}/{cid}\n")
                containers.append({"name": cname, "image": "registry.example/svc:1.0",
                                   "args": [], "resources": {"requests": {"cpu": "250m"}}})
                statuses.append({"name": cname, "containerID": f"containerd://{cid}",
                                 "state": {"running": {"startedAt": "2026-11-26T10:00:00Z"}}})
                self.names.append((name, cname))
                index += 1
            labels = {"app": f"svc-{p:03d}", "pod-template-hash": "7c9f8d6b5"}
            if p % 6:  # five teams, every sixth pod without one (chargeback_labels: [team])
                labels["team"] = f"team-{p % 6}"
            self.pods.append({
                "metadata": {"name": name, "namespace": "ml" if p < 16 else "apps",
                             "uid": uid, "labels": labels,
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                                  "name": f"svc-{p:03d}-7c9f8d6b5",
                                                  "uid": f"u-{p}", "controller": True}]},
                "spec": {"nodeName": NODE, "containers": containers},
                "status": {"phase": "Running", "containerStatuses": statuses},
            })
        assert index == CONTAINERS, index
        # GPU holders: the main container of the first 12 pods (all in namespace ml)
        main_of_pod = {}
        for i, (pod_name, cname) in enumerate(self.names):
            if cname == "main":
                main_of_pod[pod_name] = i
        holders = [main_of_pod[p["metadata"]["name"]] for p in self.pods[:WHOLE_GPUS +
                                                                          2 * SLICES]]
        # (container index, gpu index, device id)
        self.gpu_holders: list[tuple[int, int, str]] = []
        for n, c in enumerate(holders):
            if n < WHOLE_GPUS:
                self.gpu_holders.append((c, n, gpu_uuid(n)))
            else:
                g = WHOLE_GPUS + (n - WHOLE_GPUS) // SLICES
                self.gpu_holders.append((c, g, f"{gpu_uuid(g)}::{(n - WHOLE_GPUS) % SLICES}"))
        for p in self.pods[:len(holders)]:
            p["metadata"]["labels"]["footprint.dev/model"] = p["metadata"]["labels"]["app"]
        self.zones = sorted((root / "sys" / "class" / "powercap").glob("intel-rapl*:*"))
        self.busy_jiffies = 0

    @staticmethod
    def _stat_text(usec: int) -> str:
        return (f"usage_usec {usec}\nuser_usec {usec * 9 // 10}\nsystem_usec {usec // 10}\n"
                "nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n")

    def advance_files(self, rng: random.Random) -> None:
        """One second on the node: RAPL, every container's CPU time, /proc/stat."""
        for n, zone in enumerate(self.zones):
            energy = zone / "energy_uj"
            limit = int((zone / "max_energy_range_uj").read_text())
            value = (int(energy.read_text()) + (40_000_000 if n % 3 == 0 else 6_000_000))
            write_atomic(energy, f"{value % limit}\n")
        total = 0
        for i, path in enumerate(self.cpu_stat):
            used = rng.randint(0, 40_000)
            self.usage_usec[i] += used
            total += used
            write_in_place(path, self._stat_text(self.usage_usec[i]))
        stat = self.root / "proc" / "stat"
        lines = stat.read_text().splitlines()
        fields = lines[0].split()
        fields[1] = str(int(fields[1]) + total // 10_000 + 200)  # user jiffies at 100 Hz
        lines[0] = "cpu  " + " ".join(fields[1:])
        write_atomic(stat, "\n".join(lines) + "\n")


def make_nvml(holders: list[tuple[int, int, str]]) -> Any:
    from tests.fakes.fake_nvml import FakeNvml, FakeProcess, h100

    gpus = [h100(gpu_uuid(i)) for i in range(GPUS)]
    for c, g, _ in holders:
        gpus[g].processes.append(FakeProcess(first_pid(c)))
    nvml = FakeNvml(gpus)
    for i, gpu in enumerate(gpus):
        nvml.set_watts(gpu, 250.0 + 50.0 * (i % 4))
    return nvml


def advance_nvml(nvml: Any, rng: random.Random) -> None:
    nvml.advance(1.0)
    for gpu in nvml.gpus:
        for process in gpu.processes:
            nvml.add_sample(gpu, process.pid, sm_util=rng.randint(5, 95))
        # the fake filters its whole sample list on every call; the driver keeps a short
        # buffer (about what it holds for a few seconds) so the fake's cost does not grow
        del gpu.samples[:-8]


class Driver(threading.Thread):
    """Advances the node's counters (and the fake NVML, if given) once a second."""

    def __init__(self, node: Node | None, nvml: Any) -> None:
        super().__init__(name="driver", daemon=True)
        self.node, self.nvml = node, nvml
        self.stop = threading.Event()
        self.rng = random.Random(42)

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            if self.node is not None:
                self.node.advance_files(self.rng)
            if self.nvml is not None:
                advance_nvml(self.nvml, self.rng)
            next_at += 1.0
            self.stop.wait(max(0.0, next_at - time.monotonic()))


def write_config(tmp: Path, kubeconfig: Path, pr_socket: Path) -> Path:
    config = tmp / "footprint.yaml"
    config.write_text(f"kubernetes:\n  kubeconfig: {kubeconfig}\n"
                      "  chargeback_labels: [team]\n"  # the chart's default
                      f"  pod_resources_socket: {pr_socket}\n")
    return config


def exporter_argv(node: Node, config: Path, port: int) -> list[str]:
    return ["--path.sysfs", str(node.root / "sys"), "--path.procfs", str(node.root / "proc"),
            "--config.file", str(config), "--web.listen-address", f"127.0.0.1:{port}",
            "--collector.interval", "1"]


# -- scrapers (child processes) ----------------------------------------------------------------


def wait_ready(port: int, deadline: float) -> bool:
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def scraper(port: int, seconds: float, out: Path, floor_port: int = 0) -> int:
    """Waits for /readyz, then scrapes back to back for `seconds`; latencies (ns) to `out`.
    With a `floor_port`, every other scrape goes to that server (the scrape floor, same
    headers, its own keep-alive connection) and its latencies to `<out>.floor.bin`."""
    deadline = time.monotonic() + 60
    ports = [port, floor_port] if floor_port else [port]
    if not all(wait_ready(p, deadline) for p in ports):
        return 1
    conns = [http.client.HTTPConnection("127.0.0.1", p, timeout=30) for p in ports]
    samples = [array.array("q") for _ in ports]
    connects = errors = 0
    body = b""
    turn = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        which = turn % len(ports)
        turn += 1
        conn = conns[which]
        if conn.sock is None:
            connects += 1
        start = time.perf_counter_ns()
        try:
            conn.request("GET", "/metrics", headers=SCRAPE_HEADERS)
            resp = conn.getresponse()
            got = resp.read()
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            continue
        samples[which].append(time.perf_counter_ns() - start)
        if which == 0:
            body = got
        if resp.status != 200 or resp.getheader("Content-Encoding") != "gzip":
            errors += 1
    with out.open("wb") as f:
        samples[0].tofile(f)
    if floor_port:
        with out.with_suffix(".floor.bin").open("wb") as f:
            samples[1].tofile(f)
    out.with_suffix(".json").write_text(json.dumps(
        {"connects": connects, "errors": errors, "wire_bytes": len(body)}))
    return 0


class _FixedTicker:
    """The scrape floor's tick: the same snapshot every time, already rendered."""

    def __init__(self, text: bytes, openmetrics: bytes) -> None:
        from exporter.exposition import Snapshot

        self.snapshot = Snapshot(text=text, openmetrics=openmetrics)

    def tick(self) -> Any:
        return self.snapshot

    def inputs(self) -> list[Any]:
        return []


def floor_server(port: int, text_file: Path, om_file: Path) -> int:
    """The scrape floor: the exporter's own HTTP server (`server.serve`, its connection
    handling and `/metrics` handler) serving one fixed, rendered exposition (the exporter's,
    taken at the start of the run), in a process of its own: no tick, no render, no other
    thread. Its latency is what the machine and the HTTP stack cost a scrape, under the same
    load."""
    from exporter.server import ExporterState, serve

    state = ExporterState(sampler=_FixedTicker(text_file.read_bytes(), om_file.read_bytes()),
                          telemetry_path="/metrics")
    return asyncio.run(serve(state, listen_address=f"127.0.0.1:{port}", interval_seconds=1.0))


def start_scrapers(port: int, seconds: float, tmp: Path, tag: str,
                   floor_port: int = 0) -> list[tuple[Any, Path]]:
    procs = []
    for i in range(SCRAPERS):
        out = tmp / f"scrape-{tag}-{i}.bin"
        proc = subprocess.Popen([sys.executable, __file__, "--scraper", str(port),
                                 str(seconds), str(out), str(floor_port)],
                                stdin=subprocess.DEVNULL)
        procs.append((proc, out))
    return procs


def read_latencies(path: Path) -> list[float]:
    data = array.array("q")
    data.frombytes(path.read_bytes())
    return [ns / 1e6 for ns in data]


def collect_scrapers(procs: list[tuple[Any, Path]], seconds: float) -> dict[str, Any]:
    samples: list[float] = []
    floor: list[float] = []
    connects = errors = wire = 0
    for proc, out in procs:
        proc.wait()
        if proc.returncode != 0 or not out.exists():
            errors += 1
            continue
        samples.extend(read_latencies(out))
        if out.with_suffix(".floor.bin").exists():
            floor.extend(read_latencies(out.with_suffix(".floor.bin")))
        meta = json.loads(out.with_suffix(".json").read_text())
        connects += meta["connects"]
        errors += meta["errors"]
        wire = meta["wire_bytes"]
    if not samples:
        raise RuntimeError("no scrape succeeded")
    out: dict[str, Any] = {
        "scrapers": len(procs), "scrapes": len(samples),
        "per_second": round(len(samples) / seconds, 1),
        "p50_ms": round(percentile(samples, 50), 3),
        "p99_ms": round(percentile(samples, 99), 3),
        "max_ms": round(max(samples), 3), "connects": connects, "errors": errors,
        "wire_bytes": wire}
    if floor:
        out["floor"] = {"scrapes": len(floor), "p50_ms": round(percentile(floor, 50), 3),
                        "p99_ms": round(percentile(floor, 99), 3),
                        "max_ms": round(max(floor), 3)}
        out["p99_to_floor"] = round(out["p99_ms"] / out["floor"]["p99_ms"], 2)
        out["p50_to_floor"] = round(out["p50_ms"] / out["floor"]["p50_ms"], 2)
    return out


# -- the exporter, in this process -------------------------------------------------------------


def series_counts(text: str) -> dict[str, Any]:
    total = 0
    per: Counter[tuple[str, ...]] = Counter()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        total += 1
        if line.startswith("footprint_container_"):
            labels = dict(LABEL_RE.findall(line.split("}", 1)[0]))
            per[(labels.get("namespace", ""), labels.get("pod", ""),
                 labels.get("container", ""))] += 1
    worst = max(per.items(), key=lambda kv: kv[1]) if per else (("", "", ""), 0)
    return {"total": total, "containers": len(per), "per_container_max": worst[1],
            "per_container_max_of": "/".join(worst[0]),
            "container_series": sum(per.values())}


async def serve_for(state: Any, port: int, seconds: float, tmp: Path,
                    ready: threading.Event, floor: Floor) -> dict[str, Any]:
    from exporter.server import serve

    stop = asyncio.Event()
    server = asyncio.create_task(serve(state, listen_address=f"127.0.0.1:{port}",
                                       interval_seconds=1.0, stop=stop))
    loop = asyncio.get_running_loop()
    while state.snapshot is None:
        if server.done():
            raise RuntimeError(f"serve() ended early: {server.result()}")
        await asyncio.sleep(0.05)
    # the scrape floor serves the exporter's first exposition, fixed
    first = state.snapshot
    text_file, om_file = tmp / "floor.txt", tmp / "floor.om"
    text_file.write_bytes(await asyncio.to_thread(lambda: first.text))
    om_file.write_bytes(first.openmetrics)
    floor_port = free_port()
    floor_proc = subprocess.Popen([sys.executable, __file__, "--floor-server", str(floor_port),
                                   str(text_file), str(om_file)], stdin=subprocess.DEVNULL)
    ready.set()
    log(f"exporter serving on 127.0.0.1:{port}, the scrape floor on {floor_port}; "
        f"{SCRAPERS} scrapers for {seconds:.0f} s, every other scrape to each")
    floor.start()
    procs = start_scrapers(port, seconds, tmp, "main", floor_port)
    try:
        await loop.run_in_executor(None, lambda: [proc.wait() for proc, _ in procs])
    finally:
        floor.halt()
        floor_proc.send_signal(signal.SIGTERM)
        await loop.run_in_executor(None, floor_proc.wait)
    memory = rss_mb()  # before the latencies are loaded into this process
    stop.set()
    code = await server
    scrape = collect_scrapers(procs, seconds)
    return {"scrape": scrape, "memory": memory, "serve_exit": code}


def record_nvml_calls(nvml: Any, tick: Any, ticks: int) -> list[list[tuple[str, Any, Any]]]:
    """The NVML calls each of `ticks` ticks makes on the fake, recorded (for the floor)."""
    calls: list[list[tuple[str, Any, Any]]] = []
    names = [n for n in dir(type(nvml)) if n.startswith("nvml")]

    def recorder(name: str, call: Any) -> Any:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            calls[-1].append((name, args, kwargs))
            return call(*args, **kwargs)
        return recorded

    for name in names:
        setattr(nvml, name, recorder(name, getattr(nvml, name)))
    try:
        for _ in range(ticks):
            calls.append([])
            tick()
            time.sleep(0.2)
    finally:
        for name in names:
            delattr(nvml, name)
    return calls


class Floor(threading.Thread):
    """The floor of a tick, timed beside the ticks under the same load: once a second, half a
    second after the tick (the tick is 1 s), one tick's NVML calls (recorded, replayed in
    turn) and one read of every container's cpu.stat as the exporter reads it: `pread` on a
    descriptor kept open (exporter/usage/cgroups.py). Each time, the same reads as `os.open`,
    `os.read`, `os.close` (the floor before the descriptors were kept) are timed apart."""

    def __init__(self, nvml: Any, paths: list[str], calls: list[list[tuple[str, Any, Any]]]
                 ) -> None:
        super().__init__(name="floor", daemon=True)
        self.nvml, self.paths, self.calls = nvml, paths, calls
        self.fds = [os.open(p, os.O_RDONLY | os.O_CLOEXEC) for p in paths]
        self.cpu_ms: list[float] = []
        self.open_read_close_ms: list[float] = []
        self.counters_ms: list[float] = []
        # the container counters' series (as exporter/metrics.py labels them) and two ledgers
        self.columns = [[("apps", f"pod-{i}", "main", "", "", component, mode)
                         for i in range(len(paths))]
                        for component in ("cpu", "dram") for mode in ("idle", "dynamic")]
        self.joules = {series: 0.0 for column in self.columns for series in column}
        self.grams = dict(self.joules)
        self.shares = [1.0 / len(paths)] * len(paths)
        self.stop = threading.Event()
        self.turn = 0

    def once(self) -> tuple[float, float]:
        """CPU ms of one floor (pread) and of the same reads opened and closed."""
        calls = self.calls[self.turn % len(self.calls)]
        self.turn += 1
        nvml = self.nvml
        cpu = time.thread_time()
        for fd in self.fds:
            os.pread(fd, 4096, 0)
        for name, args, kwargs in calls:
            with contextlib.suppress(Exception):  # an NVML error the tick met, met again
                getattr(nvml, name)(*args, **kwargs)
        floor = (time.thread_time() - cpu) * 1000
        cpu = time.thread_time()
        for path in self.paths:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.read(fd, 4096)
            finally:
                os.close(fd)
        return floor, (time.thread_time() - cpu) * 1000

    def counters(self) -> float:
        """CPU ms of the container counters' arithmetic for one tick (`counters_cpu_ms`)."""
        joules, grams, shares = self.joules, self.grams, self.shares
        cpu = time.thread_time()
        for part, column in zip((10.0, 40.0, 2.0, 6.0), self.columns, strict=True):
            js = list(map(operator.mul, itertools.repeat(part), shares))
            gs = list(map(operator.mul, map(operator.truediv, js, itertools.repeat(3.6e6)),
                          itertools.repeat(56.0)))
            joules.update(zip(column, map(operator.add, map(joules.get, column), js),
                              strict=True))
            grams.update(zip(column, map(operator.add, map(grams.get, column), gs),
                             strict=True))
        return (time.thread_time() - cpu) * 1000

    def run(self) -> None:
        next_at = time.monotonic() + 0.5
        while not self.stop.wait(max(0.0, next_at - time.monotonic())):
            floor, orc = self.once()
            self.cpu_ms.append(floor)
            self.open_read_close_ms.append(orc)
            self.counters_ms.append(self.counters())
            next_at += 1.0

    def halt(self) -> None:
        self.stop.set()
        if self.is_alive():
            self.join(5)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def quiet_ticks(tick: Any, floor: Floor, count: int
                ) -> tuple[list[float], list[float], list[float]]:
    """`count` ticks and floors in turn with no scraper running: CPU ms of each (the tick's
    thread and its read threads, as `timed_tick` counts them), and of the counters'
    arithmetic after each floor."""
    ticks, floors, counters = [], [], []
    for _ in range(count):
        readers = reader_clocks()
        before = {i: time.clock_gettime(c) for i, c in readers.items()}
        cpu = time.thread_time()
        tick()
        used = time.thread_time() - cpu
        for i, c in reader_clocks().items():
            with contextlib.suppress(OSError):
                used += time.clock_gettime(c) - before.get(i, 0.0)
        ticks.append(used * 1000)
        time.sleep(0.1)
        floors.append(floor.once()[0])
        counters.append(floor.counters())
        time.sleep(0.1)
    return ticks, floors, counters


def profile_ticks(tick: Any) -> str:
    profiler = cProfile.Profile()
    for _ in range(PROFILE_TICKS):
        profiler.enable()
        tick()
        profiler.disable()
        time.sleep(0.2)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(15)
    stats.sort_stats("tottime").print_stats(25)
    print(out.getvalue(), file=sys.stderr, flush=True)
    # the exporter function with the most own time: the likely bottleneck
    own = [(tt, f"{Path(fn).name}:{line}({name})") for (fn, line, name), (_, _, tt, _, _)
           in stats.stats.items() if "/exporter/" in fn]  # type: ignore[attr-defined]
    own.sort(reverse=True)
    top = [f"{where} {tt / PROFILE_TICKS * 1000:.2f} ms/tick" for tt, where in own[:3]]
    log("most own time in exporter/: " + "; ".join(top))
    return "; ".join(top)


# -- the exporter as its own process (second pass) ---------------------------------------------


def child_exporter(argv: list[str], holders_json: str) -> int:
    """`python -m exporter` as-is, but with the fake pynvml module and a thread advancing it."""
    holders = [tuple(h) for h in json.loads(holders_json)]
    nvml = make_nvml(holders)  # type: ignore[arg-type]
    sys.modules["pynvml"] = nvml
    Driver(None, nvml).start()
    as_on_cgroupfs()
    from exporter import cli

    return cli.main(argv)


def exporter_only(node: Node, config: Path, seconds: float, tmp: Path) -> dict[str, Any]:
    port = free_port()
    holders = json.dumps(node.gpu_holders)
    proc = subprocess.Popen([sys.executable, __file__, "--child-exporter", holders, "--",
                             *exporter_argv(node, config, port)],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "NODE_NAME": NODE})
    assert proc.stderr is not None
    tail: list[str] = []

    def drain() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            tail.append(raw.decode("utf-8", "replace").rstrip())
            del tail[:-50]

    threading.Thread(target=drain, daemon=True).start()
    try:
        before = {}
        if wait_ready(port, time.monotonic() + 60):
            time.sleep(5)  # the pods listed and a few ticks made, not yet scraped
            before = rss_mb(proc.pid)
        procs = start_scrapers(port, seconds, tmp, "child")
        for scrape_proc, _ in procs:
            scrape_proc.wait()
        memory = rss_mb(proc.pid)
        scrape = collect_scrapers(procs, seconds)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/metrics", headers={"Accept": "text/plain"})
        text = conn.getresponse().read().decode()
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    warnings = [line for line in tail if "level=warn" in line or "level=error" in line]
    for line in warnings[-5:]:
        log(f"  exporter process: {line}")
    return {"seconds": seconds, "rss_mb": memory.get("VmRSS"), "hwm_mb": memory.get("VmHWM"),
            "rss_anon_mb": memory.get("RssAnon"), "rss_file_mb": memory.get("RssFile"),
            "threads": memory.get("Threads"), "rss_before_scrapes_mb": before.get("VmRSS"),
            "rss_anon_before_scrapes_mb": before.get("RssAnon"),
            "scrape_p50_ms": scrape["p50_ms"], "scrape_p99_ms": scrape["p99_ms"],
            "scrapes": scrape["scrapes"], "series": series_counts(text)["total"],
            "exit": proc.returncode}


# -- main --------------------------------------------------------------------------------------


def run(minutes: float, child_seconds: float) -> dict[str, Any]:
    from exporter import cli
    from exporter.server import ExporterState
    from tests.fakes.kube_api import FakeKubeAPI
    from tests.fakes.podresources_server import FakePodResources
    from tests.fakes.podresources_server import pod as resources_of

    seconds = minutes * 60
    with tempfile.TemporaryDirectory(prefix="footprint-node-") as tmp_name:
        tmp = Path(tmp_name)
        started = time.monotonic()
        node = Node(tmp / "node")
        log(f"node tree in {tmp}: {CONTAINERS} containers in {PODS} pods, "
            f"{CONTAINERS * PIDS_PER_CONTAINER} pid cgroup files, {GPUS} GPUs, "
            f"{len(node.gpu_holders)} GPU holders ({time.monotonic() - started:.1f} s)")
        nvml = make_nvml(node.gpu_holders)
        pr_socket = tmp / "pr.sock"
        podres = FakePodResources(pr_socket)
        by_pod: dict[str, dict[str, dict[str, list[str]]]] = {}
        for c, _, device in node.gpu_holders:
            pod_name, cname = node.names[c]
            by_pod.setdefault(pod_name, {})[cname] = {"nvidia.com/gpu": [device]}
        podres.set_pods(*(resources_of("ml", name, containers)
                          for name, containers in by_pod.items()))
        podres.start()
        api = FakeKubeAPI(node_name=NODE, allocatable_cpu="96", bookmark_interval=5.0)
        api.start()
        driver = Driver(node, nvml)
        try:
            for p in node.pods:
                api.add_pod(p)
            kubeconfig = api.write_kubeconfig(tmp / "kubeconfig")
            config = write_config(tmp, kubeconfig, pr_socket)
            os.environ["NODE_NAME"] = NODE
            port = free_port()
            as_on_cgroupfs()
            settings = cli.parse_settings(exporter_argv(node, config, port))
            sampler = cli.build_sampler(settings, nvml_module=nvml)
            original_tick = sampler.tick
            ticks: list[tuple[float, float]] = []  # (thread CPU ms, wall ms)

            def timed_tick() -> Any:
                # The tick's own thread plus the sources' read threads (exporter/watchdog.py):
                # both are the tick's CPU.
                readers = reader_clocks()
                before = {i: time.clock_gettime(c) for i, c in readers.items()}
                cpu, wall = time.thread_time(), time.perf_counter()
                snapshot = original_tick()
                used = time.thread_time() - cpu
                for i, c in reader_clocks().items():
                    with contextlib.suppress(OSError):  # the thread ended meanwhile
                        used += time.clock_gettime(c) - before.get(i, 0.0)
                ticks.append((used * 1000, (time.perf_counter() - wall) * 1000))
                return snapshot

            sampler.tick = timed_tick  # type: ignore[method-assign]
            renderer = sampler._renderer
            render_locked = renderer._render_locked
            renders: list[float] = []

            def timed_render(*args: Any) -> Any:
                cpu = time.thread_time()
                out = render_locked(*args)
                renders.append((time.thread_time() - cpu) * 1000)
                return out

            renderer._render_locked = timed_render  # type: ignore[method-assign]
            sampler.start()
            cli.settle_memory()  # as cli.main does
            synced = time.monotonic() + 60
            kube = sampler._kubernetes
            assert kube is not None
            while not (kube.pods.view().synced and len(kube.pods.view().pods) == PODS):
                if time.monotonic() > synced:
                    raise RuntimeError("the pod watch never saw all pods")
                time.sleep(0.05)
            driver.start()
            # the first ticks (they walk the cgroup tree and read every pid's cgroup) record
            # the NVML calls the floor replays
            log(f"{FLOOR_TICKS} ticks with their NVML calls recorded for the floor")
            calls = record_nvml_calls(nvml, sampler.tick, FLOOR_TICKS)
            first = [t[0] for t in ticks[:WARMUP_TICKS]]
            del ticks[:]
            floor = Floor(nvml, [str(p) for p in node.cpu_stat], calls)
            state = ExporterState(sampler=sampler, telemetry_path="/metrics")
            ready = threading.Event()
            served = asyncio.run(serve_for(state, port, seconds, tmp, ready, floor))
            assert state.snapshot is not None
            text = state.snapshot.text.decode()
            counts = series_counts(text)
            measured = ticks[1:]  # the first one ran before the scrapers
            cpu = [t[0] for t in measured]
            log(f"quiet: {FLOOR_TICKS} ticks and floors in turn, no scrapers")
            quiet_cpu, quiet_floor, quiet_counters = quiet_ticks(original_tick, floor,
                                                                 FLOOR_TICKS)
            floor.close()
            floor_cpu = floor.cpu_ms
            wall = [t[1] for t in measured]
            result: dict[str, Any] = {
                "benchmark": "node_scale", "minutes": minutes,
                "node": {"pods": PODS, "containers": CONTAINERS,
                         "pid_cgroup_files": CONTAINERS * PIDS_PER_CONTAINER, "gpus": GPUS,
                         "gpu_holders": len(node.gpu_holders),
                         "time_sliced_holders": 2 * SLICES, "cpus": os.cpu_count()},
                "ticks": len(ticks),
                "tick_cpu_ms": {"p50": round(percentile(cpu, 50), 2),
                                "p99": round(percentile(cpu, 99), 2),
                                "max": round(max(cpu), 2),
                                "first": [round(t, 1) for t in first]},
                "tick_wall_ms": {"p50": round(percentile(wall, 50), 2),
                                 "p99": round(percentile(wall, 99), 2)},
                "render_cpu_ms": {"p50": round(percentile(renders, 50), 2),
                                  "p99": round(percentile(renders, 99), 2),
                                  "renders": len(renders)},
                "floor_cpu_ms": {"p50": round(percentile(floor_cpu, 50), 2),
                                 "p99": round(percentile(floor_cpu, 99), 2),
                                 "floors": len(floor_cpu)},
                "floor_open_read_close_cpu_ms": {
                    "p50": round(percentile(floor.open_read_close_ms, 50), 2),
                    "p99": round(percentile(floor.open_read_close_ms, 99), 2)},
                "tick_to_floor_p50": round(percentile(cpu, 50) / percentile(floor_cpu, 50), 2),
                "counters_cpu_ms": {"p50": round(percentile(floor.counters_ms, 50), 2),
                                    "p99": round(percentile(floor.counters_ms, 99), 2)},
                "tick_to_floor_and_counters_p50": round(
                    percentile(cpu, 50) / (percentile(floor_cpu, 50)
                                           + percentile(floor.counters_ms, 50)), 2),
                "quiet": {"ticks": len(quiet_cpu),
                          "tick_cpu_ms_p50": round(percentile(quiet_cpu, 50), 2),
                          "floor_cpu_ms_p50": round(percentile(quiet_floor, 50), 2),
                          "tick_to_floor_p50": round(percentile(quiet_cpu, 50)
                                                     / percentile(quiet_floor, 50), 2),
                          "counters_cpu_ms_p50": round(percentile(quiet_counters, 50), 2),
                          "tick_to_floor_and_counters_p50": round(
                              percentile(quiet_cpu, 50) / (percentile(quiet_floor, 50)
                                                           + percentile(quiet_counters, 50)),
                              2)},
                "scrape_ms": served["scrape"],
                "rss_mb": served["memory"].get("VmRSS"),
                "hwm_mb": served["memory"].get("VmHWM"),
                "series": counts,
                "body_bytes": len(text),
            }
            if child_seconds > 0:
                log(f"second pass: the exporter as its own process for {child_seconds:.0f} s")
                result["exporter_only"] = exporter_only(node, config, child_seconds, tmp)
            exporter_rss = (result.get("exporter_only") or {}).get("rss_mb")
            met = {
                "tick_cpu_p50": result["tick_cpu_ms"]["p50"] <= GOALS["tick_cpu_p50_ms_max"],
                "tick_cpu_p99": result["tick_cpu_ms"]["p99"] <= GOALS["tick_cpu_p99_ms_max"],
                "tick_to_floor_p50": (result["tick_to_floor_p50"]
                                      <= GOALS["tick_to_floor_p50_max"]),
                "scrape_p99": result["scrape_ms"]["p99_ms"] <= GOALS["scrape_p99_ms_max"],
                "rss": (exporter_rss if exporter_rss is not None
                        else result["rss_mb"]) <= GOALS["rss_mb_max"],
                "rss_in_process": result["rss_mb"] <= GOALS["rss_mb_max"],
                "series_per_container": (counts["per_container_max"]
                                         <= GOALS["series_per_container_max"]),
            }
            result["goals"] = GOALS
            result["met"] = met
            result["all_met"] = all(v for k, v in met.items() if k != "rss_in_process")
            if not result["all_met"]:
                log(f"a goal is missed ({[k for k, v in met.items() if not v]}); "
                    f"profiling {PROFILE_TICKS} ticks")
                result["profile_own_time"] = profile_ticks(original_tick)
            sampler.close()
            return result
        finally:
            driver.stop.set()
            with contextlib.suppress(Exception):
                api.stop()
            with contextlib.suppress(Exception):
                podres.stop()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--scraper"]:
        return scraper(int(args[1]), float(args[2]), Path(args[3]),
                       int(args[4]) if len(args) > 4 else 0)
    if args[:1] == ["--floor-server"]:
        return floor_server(int(args[1]), Path(args[2]), Path(args[3]))
    if args[:1] == ["--child-exporter"]:
        return child_exporter(args[3:], args[1])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the main run")
    parser.add_argument("--exporter-only-seconds", type=float, default=60.0,
                        help="length of the second pass (exporter as its own process); 0: skip")
    parsed = parser.parse_args(args)
    if parsed.minutes <= 0:
        parser.error("--minutes must be positive")
    result = run(parsed.minutes, parsed.exporter_only_seconds)
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
