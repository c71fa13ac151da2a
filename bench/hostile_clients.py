"""Hostile HTTP clients against the real exporter process: memory before auth, scrapes meanwhile.

The probe of issue 10's security review: 150 connections that each send about 1 MB of request
headers (128 lines of 8,000 bytes after `GET /metrics HTTP/1.1`) and never finish them, held
open for a while, then closed. Meanwhile one scraper (Prometheus' `Accept`, `Accept-Encoding:
gzip`, basic auth when on) scrapes `/metrics` back to back on a keep-alive connection from its
own thread, reconnecting when the exporter closes it.

The exporter is `python -m exporter` as tests/support.py's `Exporter` starts it (the RAPL
fixture `tests/fixtures/intel-2s`, no Kubernetes, no NVML, 1 s tick), run twice: without a web
config, and with basic auth for one user (bcrypt cost 10, as `htpasswd -nBC 10` makes).

Measured, per run, from `/proc/<pid>/status` of the exporter:

- `baseline_rss_mb`: VmRSS after 200 warm-up scrapes and a 2 s settle;
- `peak_rss_mb`: the highest VmRSS during the attack: VmHWM after resetting it through
  `/proc/<pid>/clear_refs` (`5`) just before, or the highest of VmRSS sampled every 5 ms where
  the reset is not allowed;
- `after_close_rss_mb`: VmRSS `--settle` seconds after the last hostile connection closed;
- `scrape_p50_ms`/`scrape_p99_ms`/`scrape_max_ms`: client-side latency of the scrapes made
  while the attack ran (send + whole body), and how many answered 200;
- `attackers`: how the hostile connections ended (the first line the exporter answered, or
  `reset`/`closed` without an answer, or `held` when the exporter never cut them off) and the
  median number of header bytes each managed to send.

Goals (issue 10): peak - baseline <= 40 MB, after close - baseline <= 20 MB, every scrape 200,
scrape p99 under 100 ms. `goal_met` is true when all hold in both runs.

Run from the repository root::

    .venv/bin/python bench/hostile_clients.py
    .venv/bin/python bench/hostile_clients.py --clients 150 --hold 3 --settle 3

Prints exactly one JSON line to stdout; progress goes to stderr. tests/test_hostile_http.py
runs the same probe (`run_probe`) with assertions on the memory bounds only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import json
import math
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CLIENTS = 150
BYTES_PER_CLIENT = 1 << 20
LINE_BYTES = 8000
GOAL_PEAK_INCREASE_MB = 40.0
GOAL_AFTER_INCREASE_MB = 20.0
GOAL_SCRAPE_P99_MS = 100.0
USER, PASSWORD = "prometheus", "a scrape password"
SCRAPE_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    "Accept-Encoding": "gzip",
}


def log(message: str) -> None:
    print(f"hostile_clients: {message}", file=sys.stderr, flush=True)


def status_kb(pid: int, key: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    assert match, f"no {key} in /proc/{pid}/status"
    return int(match.group(1))


def rss_mb(pid: int) -> float:
    return status_kb(pid, "VmRSS") / 1024


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, same user); False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RssSampler(threading.Thread):
    """VmRSS every 5 ms until stopped: the peak where VmHWM cannot be reset."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.peak = 0.0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.005):
            with contextlib.suppress(OSError, AssertionError):
                self.peak = max(self.peak, rss_mb(self.pid))


class Scraper(threading.Thread):
    """GET /metrics back to back on a keep-alive connection until stopped; latency per scrape."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        super().__init__(name="scraper", daemon=True)
        self.port = port
        self.headers = {**SCRAPE_HEADERS, **headers}
        self.latencies_ms: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.stopped = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            while not self.stopped.is_set():
                start = time.perf_counter()
                try:
                    conn.request("GET", "/metrics", headers=self.headers)
                    response = conn.getresponse()
                    response.read()
                    status = str(response.status)
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()  # reconnect at the next request
                    status = type(exc).__name__
                self.latencies_ms.append((time.perf_counter() - start) * 1000)
                self.statuses[status] += 1
                time.sleep(0.01)
        finally:
            conn.close()


@dataclass
class Attack:
    """How the hostile connections ended."""

    outcomes: Counter[str] = field(default_factory=Counter)
    sent: list[int] = field(default_factory=list)


async def hostile_client(port: int, total: int, release: asyncio.Event, attack: Attack) -> None:
    """Send `total` bytes of request headers that never end, then hold until `release`."""
    sent = 0
    outcome = "held"
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        attack.outcomes[f"connect failed: {type(exc).__name__}"] += 1
        attack.sent.append(0)
        return
    try:
        head = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        writer.write(head)
        sent += len(head)
        line = 0
        while sent < total:
            chunk = b"X-Pad-%04d: %s\r\n" % (line, b"a" * (LINE_BYTES - 16))
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
            line += 1
        # unfinished: no blank line; wait for the release or for the exporter to answer/close
        answer = asyncio.ensure_future(reader.readline())
        released = asyncio.ensure_future(release.wait())
        done, _ = await asyncio.wait({answer, released}, return_when=asyncio.FIRST_COMPLETED)
        released.cancel()
        if answer in done:
            first = answer.result().decode("latin-1").strip()
            outcome = first[:40] or "closed"
        else:
            answer.cancel()
    except (ConnectionError, OSError) as exc:
        outcome = "reset" if isinstance(exc, ConnectionResetError) else type(exc).__name__
        with contextlib.suppress(Exception):  # it may have answered before it closed
            first = (await asyncio.wait_for(reader.readline(), 0.2)).decode("latin-1").strip()
            if first:
                outcome = first[:40]
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        attack.outcomes[outcome] += 1
        attack.sent.append(sent)


async def attack_once(port: int, *, clients: int, total: int, hold_seconds: float) -> Attack:
    attack = Attack()
    release = asyncio.Event()
    tasks = [asyncio.ensure_future(hostile_client(port, total, release, attack))
             for _ in range(clients)]
    await asyncio.sleep(hold_seconds)
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    return attack


def percentile(values: list[float], pct: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def run_probe(pid: int, port: int, *, clients: int = CLIENTS, total: int = BYTES_PER_CLIENT,
              hold_seconds: float = 3.0, settle_seconds: float = 3.0,
              scrape_headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Warm up, take the baseline, attack while scraping, close, settle: the figures."""
    headers = dict(scrape_headers or {})
    warm = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(200):
            warm.request("GET", "/metrics", headers={**SCRAPE_HEADERS, **headers})
            response = warm.getresponse()
            response.read()
            assert response.status == 200, f"warm-up scrape answered {response.status}"
    finally:
        warm.close()
    time.sleep(2.0)
    baseline = rss_mb(pid)
    hwm = reset_peak(pid)
    sampler = RssSampler(pid)
    scraper = Scraper(port, headers)
    sampler.start()
    scraper.start()
    try:
        attack = asyncio.run(attack_once(port, clients=clients, total=total,
                                         hold_seconds=hold_seconds))
    finally:
        scraper.stopped.set()
        scraper.join(15)
        sampler.stopped.set()
        sampler.join(5)
    peak = max(sampler.peak, status_kb(pid, "VmHWM") / 1024 if hwm else 0.0)
    time.sleep(settle_seconds)
    after = rss_mb(pid)
    lat = scraper.latencies_ms
    return {
        "baseline_rss_mb": round(baseline, 1),
        "peak_rss_mb": round(peak, 1),
        "after_close_rss_mb": round(after, 1),
        "peak_increase_mb": round(peak - baseline, 1),
        "after_increase_mb": round(after - baseline, 1),
        "peak_from": "VmHWM" if hwm else "VmRSS every 5 ms",
        "scrapes": len(lat),
        "scrape_statuses": dict(scraper.statuses),
        "scrape_p50_ms": round(percentile(lat, 50), 2),
        "scrape_p99_ms": round(percentile(lat, 99), 2),
        "scrape_max_ms": round(max(lat, default=math.nan), 2),
        "attackers": dict(attack.outcomes),
        "attacker_bytes_sent_median": int(statistics.median(attack.sent or [0])),
    }


def basic_auth_header(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def write_web_config(directory: Path) -> Path:
    import bcrypt
    import yaml

    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    path = directory / "web.yml"
    path.write_text(yaml.safe_dump({"basic_auth_users": {USER: hashed}}))
    return path


def one_run(tmp: Path, *, auth: bool, clients: int, total: int, hold: float,
            settle: float) -> dict[str, Any]:
    from tests.support import Exporter, node_tree

    root = node_tree(tmp / ("auth" if auth else "plain"), "intel-2s")
    args = ["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
            "--no-collector.kubernetes", "--no-collector.nvml", "--collector.interval", "1"]
    headers: dict[str, str] = {}
    if auth:
        args += ["--web.config.file", str(write_web_config(root))]
        headers = basic_auth_header(USER, PASSWORD)
    with Exporter(args) as exp:
        deadline = time.monotonic() + 20
        while exp.get("/readyz")[0] != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.05)
        port = int(exp.url.rsplit(":", 1)[1])
        log(f"{'basic auth' if auth else 'no auth'}: exporter pid {exp.proc.pid} on {port}")
        result = run_probe(exp.proc.pid, port, clients=clients, total=total,
                           hold_seconds=hold, settle_seconds=settle, scrape_headers=headers)
        exp.stop()
        limit_lines = [line for line in exp.lines if "max-connections" in line]
    result["auth"] = auth
    result["connection_limit_log_lines"] = len(limit_lines)
    log(json.dumps(result))
    return result


def goal_met(run: dict[str, Any]) -> bool:
    statuses = run["scrape_statuses"]
    return (run["peak_increase_mb"] <= GOAL_PEAK_INCREASE_MB
            and run["after_increase_mb"] <= GOAL_AFTER_INCREASE_MB
            and set(statuses) == {"200"} and run["scrape_p99_ms"] < GOAL_SCRAPE_P99_MS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--bytes", type=int, default=BYTES_PER_CLIENT,
                        help="header bytes each hostile client sends (default 1 MiB)")
    parser.add_argument("--hold", type=float, default=3.0,
                        help="seconds the hostile connections are held open (default 3)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds after they close before RSS is read again (default 3)")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="footprint-hostile-"))
    try:
        runs = [one_run(tmp, auth=auth, clients=args.clients, total=args.bytes,
                        hold=args.hold, settle=args.settle) for auth in (False, True)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({
        "benchmark": "hostile_clients", "clients": args.clients, "bytes_per_client": args.bytes,
        "hold_seconds": args.hold, "settle_seconds": args.settle,
        "runs": runs,
        "goal": {"peak_increase_mb_max": GOAL_PEAK_INCREASE_MB,
                 "after_increase_mb_max": GOAL_AFTER_INCREASE_MB,
                 "scrape_p99_ms_max": GOAL_SCRAPE_P99_MS, "scrape_statuses": ["200"]},
        "goal_met": all(goal_met(run) for run in runs),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
