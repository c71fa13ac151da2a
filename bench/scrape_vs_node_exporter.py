"""Scrape latency and memory of footprint-exporter against Debian's node_exporter.

Both exporters serve the same RAPL sysfs fixture (``tests/fixtures/intel-2s`` plus
``tests/fixtures/proc``, copied into a temp dir). footprint-exporter runs as a real process
(``python -m exporter``); node_exporter runs with only its ``rapl`` collector enabled. Each is
scraped over one persistent keep-alive connection with the headers Prometheus sends
(OpenMetrics-preferring ``Accept``, ``Accept-Encoding: gzip``): 50 warm-up scrapes each, then
``--scrapes`` timed scrapes each, interleaved A, B, A, B. Every 100 rounds the fixture's
``energy_uj`` counters advance (atomic rename) so both serve changing data.

Run from the repository root::

    .venv/bin/python bench/scrape_vs_node_exporter.py [--scrapes 1000]

Needs ``/usr/bin/prometheus-node-exporter`` (tested with 1.5.0). ``promtool``, if installed,
checks both text-format bodies once after the run. Prints exactly one JSON line to stdout
(p50/p99 latency in ms, ratios footprint/node_exporter, RSS in MB after the scrapes, body sizes);
progress and diagnostics go to stderr. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gzip
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
FIXTURE_SYS = REPO / "tests" / "fixtures" / "intel-2s"
FIXTURE_PROC = REPO / "tests" / "fixtures" / "proc"
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
SCRAPE_HEADERS = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
WARMUP = 50
ADVANCE_EVERY = 100
ADVANCE_UJ = 7_500_000  # 7.5 J per zone per advance
STARTUP_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
GOAL = {"p50_ratio_max": 1.0, "rss_mb_max": 60}

LISTENING_RE = re.compile(r'msg="listening on 127\.0\.0\.1:(\d+)"')
LEVEL_RE = re.compile(r"\blevel=(\w+)")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class StderrDrain(threading.Thread):
    """Reads a child's stderr until EOF, keeping the tail and noting the listening port."""

    def __init__(self, name: str, stream: IO[bytes]) -> None:
        super().__init__(name=f"drain-{name}", daemon=True)
        self.stream = stream
        self.tail: collections.deque[str] = collections.deque(maxlen=200)
        self.levels: collections.Counter[str] = collections.Counter()
        self.problems: list[str] = []
        self.port: int | None = None
        self.port_seen = threading.Event()

    def run(self) -> None:
        for raw in self.stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.tail.append(line)
            level = LEVEL_RE.search(line)
            if level:
                self.levels[level.group(1)] += 1
                if level.group(1) in ("warn", "warning", "error") and len(self.problems) < 50:
                    self.problems.append(line)
            elif "Traceback" in line and len(self.problems) < 50:
                self.problems.append(line)
            if self.port is None and (match := LISTENING_RE.search(line)):
                self.port = int(match.group(1))
                self.port_seen.set()
        self.port_seen.set()  # EOF: wake waiters, port may still be None


@dataclass
class Target:
    name: str
    proc: subprocess.Popen[bytes]
    drain: StderrDrain
    port: int = 0
    conn: http.client.HTTPConnection | None = None
    samples_ns: list[int] = field(default_factory=list)
    connects: int = 0
    first_body: bytes = b""
    last_body: bytes = b""
    last_headers: dict[str, str] = field(default_factory=dict)

    def scrape(self) -> int:
        """One GET /metrics on the kept-alive connection; returns elapsed ns."""
        assert self.conn is not None
        if self.conn.sock is None:
            self.connects += 1
        start = time.perf_counter_ns()
        self.conn.request("GET", "/metrics", headers=SCRAPE_HEADERS)
        resp = self.conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter_ns() - start
        if resp.status != 200:
            raise RuntimeError(f"{self.name}: /metrics answered {resp.status}: {body[:200]!r}")
        if not self.first_body:
            self.first_body = body
        self.last_body = body
        self.last_headers = {k.lower(): v for k, v in resp.getheaders()}
        return elapsed


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_status(port: int, path: str) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return None
    finally:
        conn.close()


def start(name: str, argv: list[str]) -> Target:
    log(f"starting {name}: {' '.join(argv)}")
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    drain = StderrDrain(name, proc.stderr)
    drain.start()
    return Target(name=name, proc=proc, drain=drain)


def wait_ready(target: Target, path: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if target.proc.poll() is not None:
            break
        if http_status(target.port, path) == 200:
            target.conn = http.client.HTTPConnection(
                "127.0.0.1", target.port, timeout=HTTP_TIMEOUT_S
            )
            log(f"{target.name} ready on 127.0.0.1:{target.port}")
            return
        time.sleep(0.05)
    tail = "\n".join(target.drain.tail)
    raise RuntimeError(f"{target.name} not ready (exit={target.proc.poll()}); stderr:\n{tail}")


def start_footprint(root: Path) -> Target:
    target = start(
        "footprint",
        [
            sys.executable, "-m", "exporter",
            "--path.sysfs", str(root / "sys"),
            "--path.procfs", str(root / "proc"),
            "--web.listen-address", "127.0.0.1:0",
            "--collector.interval", "1",
        ],
    )
    target.drain.port_seen.wait(STARTUP_TIMEOUT_S)
    if target.drain.port is None:
        tail = "\n".join(target.drain.tail)
        raise RuntimeError(f"footprint never logged its port (exit={target.proc.poll()}):\n{tail}")
    target.port = target.drain.port
    wait_ready(target, "/readyz")
    return target


def start_node_exporter(root: Path) -> Target:
    port = free_port()
    target = start(
        "node_exporter",
        [
            NODE_EXPORTER,
            "--collector.disable-defaults",
            "--collector.rapl",
            f"--path.sysfs={root / 'sys'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
    )
    target.port = port
    wait_ready(target, "/metrics")
    return target


def stop(target: Target) -> None:
    if target.conn is not None:
        target.conn.close()
    if target.proc.poll() is None:
        target.proc.send_signal(signal.SIGTERM)
        try:
            target.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log(f"{target.name} ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s; killing it")
            target.proc.kill()
            target.proc.wait()
    target.drain.join(2)
    log(f"{target.name} exited with {target.proc.returncode}")


def energy_files(root: Path) -> list[tuple[Path, int]]:
    """Every zone's energy_uj with its max_energy_range_uj (for wrapping)."""
    out = []
    for path in sorted((root / "sys" / "class" / "powercap").glob("*/energy_uj")):
        max_file = path.with_name("max_energy_range_uj")
        max_uj = int(max_file.read_text().split()[0]) if max_file.exists() else 0
        out.append((path, max_uj))
    return out


def advance_energy(files: list[tuple[Path, int]], step: int) -> None:
    """Adds ADVANCE_UJ (scaled per zone) to each counter; write temp + os.replace."""
    for i, (path, max_uj) in enumerate(files):
        value = int(path.read_text().split()[0]) + ADVANCE_UJ * (1 + i % 3)
        if max_uj > 0:
            value %= max_uj + 1
        tmp = path.with_name(f".energy_uj.{os.getpid()}.{step}")
        tmp.write_text(f"{value}\n")
        os.replace(tmp, path)


def percentile_ms(samples_ns: list[int], pct: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    ordered = sorted(samples_ns)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1] / 1e6


def rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def body_sizes(target: Target) -> dict[str, Any]:
    gzipped = target.last_headers.get("content-encoding", "") == "gzip"

    def plain(body: bytes) -> bytes:
        return gzip.decompress(body) if gzipped else body

    body = target.last_body
    raw = plain(body)
    return {
        "body_bytes": len(raw),
        "wire_bytes": len(body),
        "content_type": target.last_headers.get("content-type", ""),
        "content_encoding": target.last_headers.get("content-encoding", "identity"),
        "series": sum(1 for line in raw.splitlines() if line and not line.startswith(b"#")),
        "data_changed": plain(target.first_body) != raw,
    }


def promtool_check(target: Target) -> str | None:
    """Runs `promtool check metrics` on a text-format body; returns its complaints, if any."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return None
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=HTTP_TIMEOUT_S)
    try:
        conn.request("GET", "/metrics", headers={"Accept": "text/plain;version=0.0.4"})
        body = conn.getresponse().read()
    finally:
        conn.close()
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
    )
    text = (result.stdout + result.stderr).decode("utf-8", "replace").strip()
    return f"rc={result.returncode} {text}" if result.returncode or text else ""


def summary(target: Target) -> dict[str, Any]:
    return {
        "p50_ms": round(percentile_ms(target.samples_ns, 50), 4),
        "p99_ms": round(percentile_ms(target.samples_ns, 99), 4),
        "mean_ms": round(sum(target.samples_ns) / len(target.samples_ns) / 1e6, 4),
        "max_ms": round(max(target.samples_ns) / 1e6, 4),
        "rss_mb": rss_mb(target.proc.pid),
        "connections": target.connects,
        **body_sizes(target),
    }


def run(scrapes: int) -> dict[str, Any]:
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="footprint-bench-") as tmp:
        root = Path(tmp)
        shutil.copytree(FIXTURE_SYS, root, dirs_exist_ok=True)
        shutil.copytree(FIXTURE_PROC, root / "proc")
        files = energy_files(root)
        log(f"fixture in {root}: {len(files)} energy_uj files")
        try:
            footprint = start_footprint(root)
            targets.append(footprint)
            node = start_node_exporter(root)
            targets.append(node)

            log(f"warm-up: {WARMUP} scrapes each")
            for _ in range(WARMUP):
                for target in targets:
                    target.scrape()

            log(f"measuring: {scrapes} scrapes each, interleaved")
            for i in range(scrapes):
                if i and i % ADVANCE_EVERY == 0:
                    advance_energy(files, i)
                for target in targets:
                    target.samples_ns.append(target.scrape())
                if (i + 1) % (scrapes // 5 or 1) == 0:
                    log(f"  {i + 1}/{scrapes}")

            result: dict[str, Any] = {
                "benchmark": "scrape_vs_node_exporter",
                "scrapes": scrapes,
                "footprint": summary(footprint),
                "node_exporter": summary(node),
            }
            fp, ne = result["footprint"], result["node_exporter"]
            result["p50_ratio"] = round(fp["p50_ms"] / ne["p50_ms"], 3)
            result["p99_ratio"] = round(fp["p99_ms"] / ne["p99_ms"], 3)
            result["goal"] = GOAL
            result["goal_met"] = (
                result["p50_ratio"] <= GOAL["p50_ratio_max"]
                and fp["rss_mb"] is not None
                and fp["rss_mb"] <= GOAL["rss_mb_max"]
            )
            for target in targets:
                complaints = promtool_check(target)
                if complaints is not None:
                    log(f"promtool check metrics on {target.name}: {complaints or 'ok'}")
            return result
        finally:
            for target in targets:
                with contextlib.suppress(Exception):
                    stop(target)
            for target in targets:
                levels = dict(target.drain.levels)
                log(f"{target.name} stderr levels: {levels}")
                for line in target.drain.problems:
                    log(f"  {target.name}: {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scrapes", type=int, default=1000, help="timed scrapes per exporter")
    args = parser.parse_args(argv)
    if args.scrapes < 1:
        parser.error("--scrapes must be at least 1")
    if not os.access(NODE_EXPORTER, os.X_OK):
        parser.error(f"{NODE_EXPORTER} not found (apt-get install prometheus-node-exporter)")
    result = run(args.scrapes)
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
