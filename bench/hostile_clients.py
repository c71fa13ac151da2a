"""Hostile HTTP clients against the real exporter process: memory before auth, scrapes meanwhile.

The probe of issue 10's security review: 150 connections that each send about 1 MB of request
headers (128 lines of 8,000 bytes after `GET /metrics HTTP/1.1`) and never finish them, held
open for a while, then closed. Meanwhile one scraper (Prometheus' `Accept`, `Accept-Encoding:
gzip`, basic auth when on) scrapes `/metrics` back to back on a keep-alive connection from its
own thread, reconnecting when the exporter closes it.

The exporter is `python -m exporter` as tests.support's `Exporter` starts it (the RAPL
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

The hostile clients connect from `--addresses` loopback source addresses (127.0.0.10 and up,
16 by default; Linux routes all of 127.0.0.0/8 to `lo`), as clients of a real attack would, so
that they meet the exporter's global limits rather than only its per-address one; the scraper
and the probes connect from 127.0.0.1.

`--scenario tls-handshakes` (issue 19): TLS on (a self-signed certificate made with `openssl`),
`--connections` (2,000) TCP connections opened as fast as they go that never finish a
handshake: `--tls-mode silent` sends nothing, `hello` sends a ClientHello and then nothing. They
are held `--hold` seconds (10) and closed; RSS is read each second for `--settle` seconds (30)
after, and the peak (VmHWM) covers the attack and the settle. Meanwhile a
kubelet-style probe (a new TLS connection, `GET /healthz`, 2 s timeout as the chart's
`timeoutSeconds`) runs every 0.5 s. Goals: peak - baseline < 40 MB, after - baseline <= 20 MB,
every probe 200.

`--scenario keepalive` (issue 19): 256 connections (`--connections`) that each send one
unauthenticated `GET /healthz`, read the answer and idle, each reopened (and idle again) as soon
as the exporter closes it, for `--seconds` (150). Meanwhile a probe on a new connection to
`/healthz` every `--probe-interval` (1 s; 2 s timeout) and a scrape of `/metrics` on a new
connection every 1.25 s (10 s timeout, Prometheus' default). Goals: every probe 200, at least
95 % of the scrapes 200.

Run from the repository root::

    .venv/bin/python bench/hostile_clients.py
    .venv/bin/python bench/hostile_clients.py --clients 150 --hold 3 --settle 3
    .venv/bin/python bench/hostile_clients.py --scenario tls-handshakes --connections 2000
    .venv/bin/python bench/hostile_clients.py --scenario keepalive --seconds 150

Prints exactly one JSON line to stdout; progress goes to stderr. tests/test_hostile_http.py
and tests/test_hostile_tls.py run the same probes (`run_probe`, `run_tls_probe`,
`run_keepalive_probe`), shorter, with assertions on the goals but none on a latency.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import json
import math
import os
import re
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
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
ADDRESSES = 16
TLS_CONNECTIONS = 2000
KEEPALIVE_CONNECTIONS = 256
GOAL_KEEPALIVE_SCRAPE_SHARE = 0.95
PROBE_TIMEOUT_SECONDS = 2.0  # the chart's livenessProbe.timeoutSeconds
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


def source_addresses(count: int) -> list[str]:
    """`count` loopback source addresses for hostile clients: 127.0.0.10 and up (Linux routes
    127.0.0.0/8 to lo); 0: 127.0.0.1 alone, the address of the scraper and the probes."""
    return [f"127.0.{(10 + i) // 256}.{(10 + i) % 256}" for i in range(count)] or ["127.0.0.1"]


async def hostile_client(port: int, total: int, release: asyncio.Event, attack: Attack,
                         source: str = "127.0.0.1") -> None:
    """Send `total` bytes of request headers that never end, then hold until `release`."""
    sent = 0
    outcome = "held"
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=(source, 0))
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


async def attack_once(port: int, *, clients: int, total: int, hold_seconds: float,
                      addresses: int = ADDRESSES) -> Attack:
    attack = Attack()
    release = asyncio.Event()
    sources = source_addresses(addresses)
    tasks = [asyncio.ensure_future(hostile_client(port, total, release, attack,
                                                  sources[i % len(sources)]))
             for i in range(clients)]
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
              scrape_headers: dict[str, str] | None = None,
              addresses: int = ADDRESSES) -> dict[str, Any]:
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
                                         hold_seconds=hold_seconds, addresses=addresses))
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


# --- issue 19: connections that never finish a TLS handshake, and idle kept-alive ones --------

def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def make_tls_files(directory: Path) -> tuple[Path, Path]:
    """A self-signed EC certificate for 127.0.0.1 and its key, made with `openssl`."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl is not installed: run scripts/test.sh, which installs it"
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=footprint hostile_clients",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    return cert, key


def write_tls_web_config(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A web config with TLS on, and a client context that trusts its certificate."""
    import yaml

    cert, key = make_tls_files(directory)
    path = directory / "web-tls.yml"
    path.write_text(yaml.safe_dump({"tls_server_config": {"cert_file": str(cert),
                                                          "key_file": str(key)}}))
    return path, ssl.create_default_context(cafile=str(cert))


def client_hello() -> bytes:
    """The first flight of a TLS client: what a client sends before it waits for the server."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_side=False)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def fetch(port: int, path: str, *, timeout: float, context: ssl.SSLContext | None = None,
          headers: dict[str, str] | None = None,
          source: str = "127.0.0.1") -> tuple[str, float]:
    """GET `path` on a new connection from `source` that is closed after: the status (or the
    exception's name) and the time it took in ms, connect included."""
    start = time.perf_counter()
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                          source_address=(source, 0))
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context,
                                           source_address=(source, 0))
    try:
        conn.request("GET", path, headers={"Connection": "close", **(headers or {})})
        response = conn.getresponse()
        response.read()
        status = str(response.status)
    except (OSError, http.client.HTTPException) as exc:
        status = type(exc).__name__
    finally:
        conn.close()
    return status, (time.perf_counter() - start) * 1000


class Prober(threading.Thread):
    """`fetch` every `interval` seconds on a new connection, as the kubelet probes (or as a
    Prometheus that does not keep connections alive scrapes), until stopped."""

    def __init__(self, port: int, path: str, *, interval: float, timeout: float,
                 context: ssl.SSLContext | None = None,
                 headers: dict[str, str] | None = None, source: str = "127.0.0.1") -> None:
        super().__init__(name=f"probe {path}", daemon=True)
        self.port, self.path, self.interval, self.timeout = port, path, interval, timeout
        self.context = context
        self.source = source
        self.headers = headers or {}
        self.statuses: Counter[str] = Counter()
        self.latencies_ms: list[float] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stopped.wait(max(0.0, next_at - time.monotonic())):
            next_at += self.interval
            status, ms = fetch(self.port, self.path, timeout=self.timeout,
                               context=self.context, headers=self.headers, source=self.source)
            self.statuses[status] += 1
            self.latencies_ms.append(ms)

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_ms
        return {"total": len(lat), "ok": self.statuses["200"],
                "statuses": dict(self.statuses),
                "p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2),
                "max_ms": round(max(lat, default=math.nan), 2)}


def wait_ready(port: int, context: ssl.SSLContext | None = None, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while fetch(port, "/readyz", timeout=5, context=context)[0] != "200":
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_unfinished(port: int, count: int, sources: list[str], hello: bytes,
                    seconds: float = 60.0, parallel: int = 128) -> list[socket.socket]:
    """`count` TCP connections (fewer if `seconds` pass first), `parallel` connects at a time,
    that send `hello` (maybe nothing) and never more."""
    socks: list[socket.socket] = []

    async def one(index: int, limit: asyncio.Semaphore, deadline: float) -> None:
        async with limit:
            if time.monotonic() > deadline:
                return
            loop = asyncio.get_running_loop()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.bind((sources[index % len(sources)], 0))
                await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 10)
                if hello:
                    await asyncio.wait_for(loop.sock_sendall(sock, hello), 10)
            except (OSError, TimeoutError):
                sock.close()
                return
            socks.append(sock)

    async def all_of_them() -> None:
        limit = asyncio.Semaphore(parallel)
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(one(i, limit, deadline) for i in range(count)))

    asyncio.run(all_of_them())
    return socks


def outcome_of(sock: socket.socket) -> str:
    """Whether the exporter closed a connection it had not served (`closed`), or it is open."""
    sock.setblocking(False)
    try:
        while True:
            if not sock.recv(65536):
                return "closed by the exporter"
    except BlockingIOError:
        return "held open"
    except OSError:
        return "reset by the exporter"


def run_tls_probe(pid: int, port: int, context: ssl.SSLContext, *,
                  connections: int = TLS_CONNECTIONS, mode: str = "silent",
                  addresses: int = ADDRESSES, hold_seconds: float = 10.0,
                  settle_seconds: float = 30.0, probe_interval: float = 0.5,
                  probe_timeout: float = PROBE_TIMEOUT_SECONDS) -> dict[str, Any]:
    """Warm up over TLS, take the baseline, open `connections` that never finish a handshake
    while probing /healthz, hold, close, and read RSS each second for `settle_seconds`."""
    raise_open_files_limit()
    warm = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        for _ in range(200):
            warm.request("GET", "/metrics", headers=SCRAPE_HEADERS)
            response = warm.getresponse()
            response.read()
            assert response.status == 200, f"warm-up scrape answered {response.status}"
    finally:
        warm.close()
    time.sleep(2.0)
    baseline = rss_mb(pid)
    hwm = reset_peak(pid)
    sampler = RssSampler(pid)
    prober = Prober(port, "/healthz", interval=probe_interval, timeout=probe_timeout,
                    context=context)
    sampler.start()
    prober.start()
    socks: list[socket.socket] = []
    try:
        start = time.monotonic()
        socks = open_unfinished(port, connections, source_addresses(addresses),
                                client_hello() if mode == "hello" else b"")
        opened_in = time.monotonic() - start
        time.sleep(hold_seconds)
        held_rss = rss_mb(pid)
        outcomes = Counter(outcome_of(sock) for sock in socks)
    finally:
        for sock in socks:
            sock.close()
        prober.stopped.set()
        prober.join(15)
    after: dict[str, float] = {}
    try:
        for second in range(1, int(settle_seconds) + 1):
            time.sleep(1.0)
            if second in (1, 2, 5, 10, 20, 30) or second == int(settle_seconds):
                after[str(second)] = round(rss_mb(pid), 1)
    finally:
        sampler.stopped.set()
        sampler.join(5)
    peak = max(sampler.peak, status_kb(pid, "VmHWM") / 1024 if hwm else 0.0)
    last = rss_mb(pid)
    return {
        "mode": mode, "connections": len(socks), "opened_in_s": round(opened_in, 2),
        "hold_seconds": hold_seconds, "source_addresses": max(addresses, 1),
        "baseline_rss_mb": round(baseline, 1), "peak_rss_mb": round(peak, 1),
        "held_rss_mb": round(held_rss, 1),
        "peak_increase_mb": round(peak - baseline, 1),
        "after_close_rss_mb_by_s": after,
        "after_increase_mb": round(last - baseline, 1),
        "peak_from": "VmHWM" if hwm else "VmRSS every 5 ms",
        "attackers_at_close": dict(outcomes),
        "probes": prober.summary(),
    }


@dataclass
class Idlers:
    """What the kept-alive idle connections met."""

    connects: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    ends: Counter[str] = field(default_factory=Counter)


async def idle_client(port: int, source: str, end: float, idlers: Idlers) -> None:
    """One unauthenticated `GET /healthz` on a kept-alive connection, then idle until the
    exporter closes it; again at once, until `end` (time.monotonic())."""
    while time.monotonic() < end:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 5)
        except (OSError, TimeoutError):
            idlers.ends["connect failed"] += 1
            await asyncio.sleep(0.1)
            continue
        idlers.connects += 1
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            idlers.answers[head[9:12].decode("latin-1")] += 1
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            await asyncio.wait_for(reader.readexactly(int(length.group(1)) if length else 0), 10)
            left = end - time.monotonic()
            if left <= 0:
                break
            try:
                more = await asyncio.wait_for(reader.read(1), left)
            except TimeoutError:
                idlers.ends["held to the end"] += 1
                break
            idlers.ends["closed by the exporter" if not more else "unexpected bytes"] += 1
        except (OSError, TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError) as exc:
            idlers.ends[type(exc).__name__] += 1
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)


async def idle_attack(port: int, *, connections: int, addresses: int, seconds: float) -> Idlers:
    idlers = Idlers()
    sources = source_addresses(addresses)
    end = time.monotonic() + seconds
    tasks = [asyncio.ensure_future(idle_client(port, sources[i % len(sources)], end, idlers))
             for i in range(connections)]
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 60)
    return idlers


def run_keepalive_probe(pid: int, port: int, *, connections: int = KEEPALIVE_CONNECTIONS,
                        addresses: int = ADDRESSES, seconds: float = 150.0,
                        probe_interval: float = 1.0,
                        probe_timeout: float = PROBE_TIMEOUT_SECONDS,
                        scrape_interval: float = 1.25,
                        scrape_timeout: float = 10.0,
                        probe_source: str = "127.0.0.1") -> dict[str, Any]:
    """`connections` idle kept-alive connections, refilled as they close, for `seconds`, while
    a probe and a scrape each open a new connection from `probe_source` at their interval."""
    raise_open_files_limit()
    baseline = rss_mb(pid)
    cpu = cpu_seconds(pid)
    probe = Prober(port, "/healthz", interval=probe_interval, timeout=probe_timeout,
                   headers={"User-Agent": "kube-probe/1.33"}, source=probe_source)
    scrape = Prober(port, "/metrics", interval=scrape_interval, timeout=scrape_timeout,
                    headers={**SCRAPE_HEADERS, "User-Agent": "Prometheus/3.0.0"},
                    source=probe_source)
    sampler = RssSampler(pid)
    sampler.start()

    async def attack_and_probe() -> Idlers:
        attack = asyncio.ensure_future(idle_attack(port, connections=connections,
                                                   addresses=addresses, seconds=seconds))
        await asyncio.sleep(min(3.0, seconds / 10))  # the idle connections are in place
        probe.start()
        scrape.start()
        return await attack

    try:
        idlers = asyncio.run(attack_and_probe())
    finally:
        for prober in (probe, scrape):
            prober.stopped.set()
            if prober.is_alive():
                prober.join(15)
        sampler.stopped.set()
        sampler.join(5)
    probes, scrapes = probe.summary(), scrape.summary()
    return {
        "connections": connections, "source_addresses": max(addresses, 1),
        "probe_source": probe_source, "seconds": seconds,
        "idle_connects": idlers.connects, "idle_answers": dict(idlers.answers),
        "idle_ends": dict(idlers.ends),
        "probes": probes, "scrapes": scrapes,
        "scrape_ok_share": round(scrapes["ok"] / max(scrapes["total"], 1), 3),
        "exporter_cpu_s": round(cpu_seconds(pid) - cpu, 1),
        "baseline_rss_mb": round(baseline, 1), "peak_rss_mb": round(sampler.peak, 1),
    }


@contextlib.contextmanager
def exporter(tmp: Path, extra: list[str] | None = None) -> Iterator[Any]:
    from tests.support import Exporter, node_tree

    root = node_tree(tmp, "intel-2s")
    args = ["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
            "--no-collector.kubernetes", "--no-collector.nvml", "--collector.interval", "1",
            *(extra or [])]
    with Exporter(args) as exp:
        yield exp


def tls_run(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    config, context = write_tls_web_config(tmp)
    with exporter(tmp, ["--web.config.file", str(config)]) as exp:
        port = int(exp.url.rsplit(":", 1)[1])
        wait_ready(port, context)
        log(f"TLS: exporter pid {exp.proc.pid} on {port}; {args.connections} connections, "
            f"{args.tls_mode}")
        result = run_tls_probe(exp.proc.pid, port, context, connections=args.connections,
                               mode=args.tls_mode, addresses=args.addresses,
                               hold_seconds=args.hold, settle_seconds=args.settle)
        result["exit"] = exp.stop()
    probes = result["probes"]
    result.update(benchmark="hostile_clients", scenario="tls-handshakes", goal={
        "peak_increase_mb_max": GOAL_PEAK_INCREASE_MB,
        "after_increase_mb_max": GOAL_AFTER_INCREASE_MB, "probes_ok": "all"})
    result["goal_met"] = (result["peak_increase_mb"] < GOAL_PEAK_INCREASE_MB
                          and result["after_increase_mb"] <= GOAL_AFTER_INCREASE_MB
                          and probes["total"] > 0 and probes["ok"] == probes["total"])
    return result


def keepalive_run(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    with exporter(tmp) as exp:
        port = int(exp.url.rsplit(":", 1)[1])
        wait_ready(port)
        log(f"keep-alive: exporter pid {exp.proc.pid} on {port}; {args.connections} idle "
            f"connections for {args.seconds:g} s")
        result = run_keepalive_probe(exp.proc.pid, port, connections=args.connections,
                                     addresses=args.addresses, seconds=args.seconds,
                                     probe_interval=args.probe_interval,
                                     probe_source=args.probe_source)
        result["exit"] = exp.stop()
        result["log_lines"] = [line for line in exp.lines if "level=warn" in line
                               or "level=error" in line or "connection limit" in line]
    probes = result["probes"]
    result.update(benchmark="hostile_clients", scenario="keepalive", goal={
        "probes_ok": "all", "scrape_ok_share_min": GOAL_KEEPALIVE_SCRAPE_SHARE})
    result["goal_met"] = (probes["total"] > 0 and probes["ok"] == probes["total"]
                          and result["scrape_ok_share"] >= GOAL_KEEPALIVE_SCRAPE_SHARE)
    return result


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
            settle: float, addresses: int = ADDRESSES) -> dict[str, Any]:
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
                           hold_seconds=hold, settle_seconds=settle, scrape_headers=headers,
                           addresses=addresses)
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
    parser.add_argument("--scenario", choices=("headers", "tls-handshakes", "keepalive"),
                        default="headers", help="the probe (default headers, issue 10's)")
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--bytes", type=int, default=BYTES_PER_CLIENT,
                        help="header bytes each hostile client sends (default 1 MiB)")
    parser.add_argument("--hold", type=float, default=None,
                        help="seconds the hostile connections are held open (default 3; "
                             "tls-handshakes: 10)")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds after they close before RSS is read again (default 3; "
                             "tls-handshakes: 30)")
    parser.add_argument("--addresses", type=int, default=ADDRESSES,
                        help="loopback source addresses of the hostile clients, 127.0.0.10 and "
                             f"up; 0: 127.0.0.1, the probes' own (default {ADDRESSES})")
    parser.add_argument("--connections", type=int, default=None,
                        help=f"tls-handshakes: connections (default {TLS_CONNECTIONS}); "
                             f"keepalive: idle connections (default {KEEPALIVE_CONNECTIONS})")
    parser.add_argument("--tls-mode", choices=("silent", "hello"), default="silent",
                        help="tls-handshakes: send nothing, or a ClientHello and then nothing")
    parser.add_argument("--seconds", type=float, default=150.0,
                        help="keepalive: how long the attack lasts (default 150)")
    parser.add_argument("--probe-interval", type=float, default=1.0,
                        help="keepalive: seconds between /healthz probes (default 1)")
    parser.add_argument("--probe-source", default="127.0.0.1",
                        help="keepalive: the probes' and scrapes' source address (default "
                             "127.0.0.1; 127.0.0.10 with --addresses 1: the attackers' own)")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="footprint-hostile-"))
    try:
        if args.scenario == "tls-handshakes":
            args.connections = args.connections or TLS_CONNECTIONS
            args.hold = 10.0 if args.hold is None else args.hold
            args.settle = 30.0 if args.settle is None else args.settle
            print(json.dumps(tls_run(tmp, args)), flush=True)
            return 0
        if args.scenario == "keepalive":
            args.connections = args.connections or KEEPALIVE_CONNECTIONS
            print(json.dumps(keepalive_run(tmp, args)), flush=True)
            return 0
        hold = 3.0 if args.hold is None else args.hold
        settle = 3.0 if args.settle is None else args.settle
        runs = [one_run(tmp, auth=auth, clients=args.clients, total=args.bytes,
                        hold=hold, settle=settle, addresses=args.addresses)
                for auth in (False, True)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({
        "benchmark": "hostile_clients", "clients": args.clients, "bytes_per_client": args.bytes,
        "hold_seconds": hold, "settle_seconds": settle, "source_addresses": max(args.addresses, 1),
        "runs": runs,
        "goal": {"peak_increase_mb_max": GOAL_PEAK_INCREASE_MB,
                 "after_increase_mb_max": GOAL_AFTER_INCREASE_MB,
                 "scrape_p99_ms_max": GOAL_SCRAPE_P99_MS, "scrape_statuses": ["200"]},
        "goal_met": all(goal_met(run) for run in runs),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
