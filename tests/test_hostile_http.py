"""Hostile HTTP clients (issues 10 and 19): memory before auth, header limits and deadline,
the connection cap (eviction of idle connections, per address, keep-alive shortened near it),
/healthz when ticks stop, and bcrypt under a flood of wrong passwords. TLS: test_hostile_tls.py.

Every socket is on loopback (127.0.0.1, and 127.0.0.2 and up as other client addresses; Linux
routes 127.0.0.0/8 to lo); every wait is a bounded loop. Nothing asserts a latency."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import bcrypt
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_protocol import RequestHandler

from bench.hostile_clients import (
    GOAL_AFTER_INCREASE_MB,
    GOAL_KEEPALIVE_SCRAPE_SHARE,
    GOAL_PEAK_INCREASE_MB,
    basic_auth_header,
    run_keepalive_probe,
    run_probe,
)
from exporter import cli, server, webconfig
from exporter.sampler import Sampler
from exporter.server import ExporterState, ServerLimits, make_app, run_ticks, stall_threshold
from exporter.webconfig import BasicAuth, BcryptPool, Verdict, WebConfig
from tests.support import Exporter, node_tree

PASSWORD = "correct horse"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4))


def exporter_args(tmp_path: Path) -> list[str]:
    root = node_tree(tmp_path, "intel-2s")
    return ["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
            "--no-collector.kubernetes", "--no-collector.nvml", "--collector.interval", "0.5"]


def wait_ready(exp: Exporter) -> int:
    deadline = time.monotonic() + 20
    while exp.get("/readyz")[0] != 200:
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.05)
    return int(exp.url.rsplit(":", 1)[1])


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def exchange(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send `data` (as much as the exporter takes), then read until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # it answered and closed while we still sent
            sock.sendall(data)
        return read_until_closed(sock)


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    received = b""
    while len(received) < limit:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received


def status_of(response: bytes) -> int:
    assert response[:9] in (b"HTTP/1.1 ", b"HTTP/1.0 "), response[:200]
    return int(response[9:12])


def request(path: str = "/metrics", *headers: tuple[str, str], line: str | None = None,
            end: bool = True) -> bytes:
    text = (line or f"GET {path} HTTP/1.1") + "\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    text += "".join(f"{name}: {value}\r\n" for name, value in headers)
    return (text + ("\r\n" if end else "")).encode()


# --- memory: the 150-client probe of the security review, against the real process ---------

@pytest.mark.slow(seconds=8)  # the real process, 150 clients for seconds
@pytest.mark.parametrize("auth", [False, True], ids=["no-auth", "basic-auth"])
def test_150_clients_with_1mb_of_unfinished_headers(tmp_path: Path, auth: bool) -> None:
    args = exporter_args(tmp_path)
    headers: dict[str, str] = {}
    if auth:
        config = tmp_path / "web.yml"
        config.write_text(yaml.safe_dump({"basic_auth_users": {"alice": HASH.decode()}}))
        args += ["--web.config.file", str(config)]
        headers = basic_auth_header("alice", PASSWORD)
    with Exporter(args) as exp:
        port = wait_ready(exp)
        result = run_probe(exp.proc.pid, port, clients=150, total=1 << 20, hold_seconds=2.0,
                           settle_seconds=3.0, scrape_headers=headers)
        assert exp.stop() == 0
    assert result["peak_increase_mb"] <= GOAL_PEAK_INCREASE_MB, result
    assert result["after_increase_mb"] <= GOAL_AFTER_INCREASE_MB, result
    assert result["scrapes"] > 0, result
    assert result["scrape_statuses"] == {"200": result["scrapes"]}, result
    # each was cut off at 32 KiB of headers with a 431, not parsed to the end
    assert result["attackers"] == {"HTTP/1.1 431 Request Header Fields Too L": 150}, result
    assert not [line for line in exp.lines if "level=error" in line or "Traceback" in line]


# --- header limits and the header deadline, on a real process -------------------------------

PROCESS = pytest.mark.slow(seconds=1)
"""The tests on a real exporter process: the module's `limited` one (~1 s to start), or their
own."""


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Exporter, int]]:
    args = exporter_args(tmp_path_factory.mktemp("limits"))
    with Exporter([*args, "--web.read-header-timeout", "0.5"]) as exp:
        yield exp, wait_ready(exp)
        assert exp.stop() == 0


@PROCESS
def test_headers_prometheus_sends_pass(limited: tuple[Exporter, int]) -> None:
    _, port = limited
    token = "x" * 8000  # a long bearer token: a header of 8,022 bytes with its name
    response = exchange(port, request(
        "/metrics", ("Authorization", f"Bearer {token}"), ("Accept", "text/plain"),
        ("Accept-Encoding", "gzip"), ("User-Agent", "Prometheus/3.0.0"),
        ("X-Prometheus-Scrape-Timeout-Seconds", "10"),
        *((f"X-Forwarded-{i}", "proxy") for i in range(20))))
    assert status_of(response) == 200


@PROCESS
@pytest.mark.parametrize(("data", "status"), [
    (request("/metrics", *((f"X-Header-{i}", "v") for i in range(40))), 400),  # > 32 lines
    (request("/metrics", ("X-Big", "v" * 9000)), 400),  # one header > 8,190 bytes
    (request(line="GET /" + "p" * 9000 + " HTTP/1.1"), 400),  # request line > 8,190 bytes
    (request("/metrics", *((f"X-Part-{i}", "v" * 7000) for i in range(5))), 431),  # > 32 KiB
    (request("/metrics", *((f"X-Pad-{i:03d}", "v" * 8000) for i in range(128)),
             end=False), 431),  # the review's 1 MB that never ends
])
def test_header_limits(limited: tuple[Exporter, int], data: bytes, status: int) -> None:
    exp, port = limited
    response = exchange(port, data)
    assert status_of(response) == status, response[:200]
    assert b"Connection: close" in response or status == 400
    assert exp.get("/healthz")[0] == 200  # the exporter is still there


@PROCESS
def test_header_timeout_closes_a_slow_client(limited: tuple[Exporter, int]) -> None:
    _, port = limited
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        answered = b""
        for _ in range(100):  # drip a byte every 0.1 s; the deadline (0.5 s) is not moved
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                answered = read_until_closed(sock)
                break
            try:
                sock.sendall(b"X")
            except OSError:
                break
        assert status_of(answered) == 408, answered
        assert b"request headers not received within 0.5 s" in answered


@PROCESS
def test_header_timeout_closes_a_silent_connection(limited: tuple[Exporter, int]) -> None:
    _, port = limited
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert status_of(read_until_closed(sock)) == 408


@PROCESS
def test_header_timeout_is_not_the_keepalive_timeout(limited: tuple[Exporter, int]) -> None:
    """A kept-alive connection idle between requests is not cut at the header deadline."""
    _, port = limited
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = b""
            while not answer.endswith(b"ok\n"):
                chunk = sock.recv(4096)
                assert chunk, f"closed after {answer!r}"
                answer += chunk
            assert status_of(answer) == 200
            time.sleep(1.0)  # twice the header deadline, idle


# --- the connection cap (issue 19: counted from accept, eviction, per address, keep-alive) -----

Connect = Callable[..., socket.socket]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """`connect(port, source="127.0.0.1")`: a connection from `source` (Linux routes all of
    127.0.0.0/8 to lo), closed at the end of the test."""
    opened: list[socket.socket] = []

    def connect_from(port: int, source: str = "127.0.0.1") -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        opened.append(sock)
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        return sock

    yield connect_from
    for sock in opened:
        sock.close()


def healthz_kept_alive(sock: socket.socket) -> None:
    """One `GET /healthz` on a kept-alive connection, its answer read whole."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    answer = b""
    while not answer.endswith(b"ok\n"):
        chunk = sock.recv(4096)
        assert chunk, f"closed after {answer!r}"
        answer += chunk
    assert status_of(answer) == 200, answer


def closed_by_peer(sock: socket.socket, wait: float = 0.0) -> bool:
    """Whether the exporter closed `sock` (within `wait` seconds)."""
    readable, _, _ = select.select([sock], [], [], wait)
    if not readable:
        return False
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


def wait_for_line(exp: Exporter, needle: str, seconds: float = 10.0) -> str:
    deadline = time.monotonic() + seconds
    while True:
        found = [line for line in exp.lines if needle in line]
        if found:
            return found[0]
        assert time.monotonic() < deadline, "\n".join(exp.lines)
        time.sleep(0.02)


@PROCESS
def test_at_the_cap_the_longest_idle_connection_makes_room(
        tmp_path: Path, connect: Connect) -> None:
    """256 idle kept-alive connections held every slot and new ones got 503 (issue 19); now a
    new one closes the longest-idle one, as nginx does."""
    with Exporter([*exporter_args(tmp_path), "--web.max-connections", "4"]) as exp:
        port = wait_ready(exp)
        time.sleep(0.2)  # the readiness polls' connections have closed
        held = []
        for i in range(4):  # one per address: the per-address limit is 4 // 4 = 1
            sock = connect(port, f"127.0.0.{i + 2}")
            healthz_kept_alive(sock)
            held.append(sock)
        # a probe on a new connection (from 127.0.0.1) gets in; the longest-idle one makes room
        assert exchange(port, request("/healthz")).endswith(b"ok\n")
        assert closed_by_peer(held[0], 10)
        wait_for_line(exp, "below the connection limit again")  # 3 open once the probe left
        held.append(connect(port, "127.0.0.6"))
        healthz_kept_alive(held[4])
        assert exchange(port, request("/healthz")).endswith(b"ok\n")
        assert closed_by_peer(held[1], 10)
        held.append(connect(port, "127.0.0.7"))
        healthz_kept_alive(held[5])
        healthz_kept_alive(held[2])  # active again: no longer the longest idle
        assert exchange(port, request("/healthz")).endswith(b"ok\n")
        assert closed_by_peer(held[3], 10)
        assert not any(closed_by_peer(sock) for sock in (held[2], held[4], held[5]))
        for sock in (held[2], held[4], held[5]):
            healthz_kept_alive(sock)
            sock.close()
        assert exp.stop() == 0
    reached = [line for line in exp.lines if "connection limit reached" in line]
    assert len(reached) == 1, exp.lines  # three times at the cap: one warning per 5 minutes
    assert "level=warn" in reached[0] and "--web.max-connections 4" in reached[0]
    assert "closing an idle one for each new one" in reached[0]
    again = [line for line in exp.lines if "below the connection limit again" in line]
    assert len(again) == 1 and "1 idle connection(s) closed for new ones, 0 refused" in again[0]


@PROCESS
def test_at_the_cap_with_none_idle_new_connections_are_refused(
        tmp_path: Path, connect: Connect) -> None:
    """Connections with a request under way are never closed for a new one: then 503."""
    with Exporter([*exporter_args(tmp_path), "--web.max-connections", "4"]) as exp:
        port = wait_ready(exp)
        time.sleep(0.2)
        held = []
        for i in range(4):  # each in the middle of its headers (the deadline is 10 s)
            sock = connect(port, f"127.0.0.{i + 2}")
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            held.append(sock)
        time.sleep(0.2)  # the exporter has read them
        for _ in range(5):
            with connect(port) as extra:
                refused = read_until_closed(extra)
            assert status_of(refused) == 503
            assert refused.endswith(b"too many connections: retry later\n")
        assert not any(closed_by_peer(sock) for sock in held)
        for sock in held:
            sock.close()
        wait_for_line(exp, "below the connection limit again")
        assert exp.get("/healthz")[0] == 200
        assert exp.stop() == 0
    again = [line for line in exp.lines if "below the connection limit again" in line]
    assert len(again) == 1 and "0 idle connection(s) closed for new ones, 5 refused" in again[0]


@PROCESS
def test_the_per_address_limit_counts_connections_in_progress(
        tmp_path: Path, connect: Connect) -> None:
    """One address may have a quarter of the cap in progress (here 16 // 4 = 4); its idle
    connections count only against the cap, where anyone's new connection may close them."""
    with Exporter([*exporter_args(tmp_path), "--web.max-connections", "16"]) as exp:
        port = wait_ready(exp)
        time.sleep(0.2)
        idle = []
        for _ in range(6):  # more than 4, idle: all in
            sock = connect(port, "127.0.0.2")
            healthz_kept_alive(sock)
            idle.append(sock)
        busy = []  # four with their headers under way: a fifth from there is refused
        for _ in range(4):
            sock = connect(port, "127.0.0.2")
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            busy.append(sock)
        time.sleep(0.2)  # the exporter has read them
        with connect(port, "127.0.0.2") as extra:
            assert status_of(read_until_closed(extra)) == 503
        line = wait_for_line(exp, "127.0.0.2 has 4 connections in progress (TLS handshakes, "
                                  "requests), the limit for one address")
        assert "level=warn" in line
        assert exchange(port, request("/healthz")).endswith(b"ok\n")  # another address: in
        assert not any(closed_by_peer(sock) for sock in [*idle, *busy])
        for sock in busy:  # done: its new connections are accepted again
            sock.sendall(b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert status_of(read_until_closed(sock)) == 200
        healthz_kept_alive(connect(port, "127.0.0.2"))
        assert exp.stop() == 0


@pytest.mark.slow(seconds=10)  # waits out the 5 s keep-alive at the cap
def test_keepalive_shortens_near_the_cap(tmp_path: Path, connect: Connect) -> None:
    """At the cap an idle connection is kept 5 s, not 120 s; the timeout grows back as the
    count falls below the cap (120 s from 3/4 of it down)."""
    with Exporter([*exporter_args(tmp_path), "--web.max-connections", "8"]) as exp:
        port = wait_ready(exp)
        time.sleep(0.2)
        held = []
        for i in range(8):
            sock = connect(port, f"127.0.0.{i + 2}")
            healthz_kept_alive(sock)
            held.append(sock)
        closed = None
        for _ in range(300):  # 30 s at most
            closed = next((i for i, sock in enumerate(held) if closed_by_peer(sock)), None)
            if closed is not None:
                break
            time.sleep(0.1)
        assert closed == 0, "no idle connection was closed sooner at the cap"
        # 7 open: the keep-alive is 62.5 s now, the others stay
        assert not any(closed_by_peer(sock, 0.5) for sock in held[1:])
        for sock in held[1:]:
            healthz_kept_alive(sock)
            sock.close()
        assert exp.stop() == 0


@pytest.mark.slow(seconds=21)  # a 20 s probe against 256 idle connections
def test_probes_and_scrapes_on_new_connections_succeed_against_idle_connections(
        tmp_path: Path) -> None:
    """Issue 19's probe, shortened from 150 s: 256 kept-alive connections idle after an
    unauthenticated `GET /healthz`, reopened as the exporter closes them, from 16 addresses;
    before, every /healthz probe and scrape on a new connection got 503."""
    with Exporter(exporter_args(tmp_path)) as exp:
        port = wait_ready(exp)
        result = run_keepalive_probe(exp.proc.pid, port, seconds=20.0, probe_interval=0.5,
                                     probe_timeout=10.0, scrape_interval=1.0)
        assert exp.stop() == 0
    probes, scrapes = result["probes"], result["scrapes"]
    assert probes["total"] >= 10 and probes["statuses"] == {"200": probes["total"]}, result
    assert scrapes["total"] >= 5, result
    assert scrapes["ok"] >= GOAL_KEEPALIVE_SCRAPE_SHARE * scrapes["total"], result
    assert result["idle_answers"].get("200", 0) >= 256, result  # they were all in
    assert not [line for line in exp.lines if "level=error" in line or "Traceback" in line]


@pytest.mark.slow(seconds=13)  # a 12 s probe
def test_probes_from_the_attackers_own_address_succeed(tmp_path: Path) -> None:
    """The same from one address, the probes' too: the per-address limit (64 connections in
    progress) leaves the idle ones alone, and the cap's eviction makes room for the probe."""
    with Exporter(exporter_args(tmp_path)) as exp:
        port = wait_ready(exp)
        result = run_keepalive_probe(exp.proc.pid, port, addresses=1, seconds=12.0,
                                     probe_interval=0.5, probe_timeout=10.0,
                                     scrape_interval=1.0, probe_source="127.0.0.10")
        assert exp.stop() == 0
    probes, scrapes = result["probes"], result["scrapes"]
    assert probes["total"] >= 5 and probes["statuses"] == {"200": probes["total"]}, result
    assert scrapes["ok"] >= GOAL_KEEPALIVE_SCRAPE_SHARE * scrapes["total"] > 0, result


def test_max_connections_and_header_timeout_flags_are_checked() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["--web.max-connections", "10", "--web.read-header-timeout", "2.5"])
    assert (args.max_connections, args.read_header_timeout) == (10, 2.5)
    settings = cli.parse_settings([])
    assert ServerLimits(max_connections=settings.max_connections,
                        read_header_timeout=settings.read_header_timeout_seconds
                        ) == ServerLimits()  # one default, in one place
    for bad in (["--web.max-connections", "0"], ["--web.max-connections", "many"],
                ["--web.read-header-timeout", "0"], ["--web.read-header-timeout", "nan"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def idle_connections(count: int, address: str = "10.0.0.1") -> list[server.Connection]:
    """Connections that have sent nothing yet (idle, as a TLS one before its first byte)."""
    return [server.Connection(address, float(i)) for i in range(count)]


def busy_connections(count: int, address: str = "10.0.0.1") -> list[server.Connection]:
    conns = idle_connections(count, address)
    for conn in conns:
        conn.stage = server.Stage.HANDSHAKE
    return conns


def test_guard_logs_the_limit_once_per_period() -> None:
    guard = server.ConnectionGuard(4, per_address=8)
    records = Records()
    level = server.log.level
    server.log.addHandler(records)
    server.log.setLevel(logging.INFO)
    try:
        for _ in range(3):  # three episodes at the limit, within 5 minutes
            held = busy_connections(4)
            assert all(guard.admit(conn) for conn in held)
            assert not any(guard.admit(conn) for conn in busy_connections(10))
            for conn in held:
                guard.release(conn)
    finally:
        server.log.removeHandler(records)
        server.log.setLevel(level)
    assert len(records.messages) == 2, records.messages
    assert records.messages[0].startswith("connection limit reached: 4 connections open "
                                          "(--web.max-connections 4)")
    assert records.messages[1] == ("below the connection limit again (3 open); since it was "
                                   "reached 0 idle connection(s) closed for new ones, "
                                   "10 refused")
    assert guard.refused_total == 30 and guard.open == 0


def test_guard_closes_the_longest_idle_connection() -> None:
    guard = server.ConnectionGuard(4, per_address=4)
    old = idle_connections(4)
    assert all(guard.admit(conn) for conn in old)
    guard.touch(old[0], 10.0)  # the first one was active last
    new = server.Connection("10.0.0.2", 11.0)
    assert guard.admit(new)
    assert old[1].stage is server.Stage.CLOSED  # the longest idle: closed, its place taken
    assert [c.stage for c in (old[0], old[2], old[3])] == [server.Stage.WAITING] * 3
    assert guard.open == 4 and guard.evicted_total == 1
    guard.release(old[1])  # its close, reported later, changes nothing
    assert guard.open == 4


def test_guard_per_address_limit_counts_connections_in_progress() -> None:
    guard = server.ConnectionGuard(16, per_address=2)
    idle = idle_connections(5, "10.0.0.1")
    assert all(guard.admit(conn) for conn in idle)  # idle: the per-address limit ignores them
    busy = busy_connections(2, "10.0.0.3")
    assert all(guard.admit(conn) for conn in busy)
    assert guard.busy("10.0.0.3") == 2
    assert not guard.admit(server.Connection("10.0.0.3", 6.0))  # two in progress: refused
    assert guard.admit(server.Connection("10.0.0.4", 6.0))
    assert guard.from_address("10.0.0.3") == 2 and guard.open == 8


def test_guard_takes_from_the_address_with_the_most_connections_first() -> None:
    guard = server.ConnectionGuard(6, per_address=6)
    prometheus = idle_connections(1, "10.0.0.9")  # idle the longest
    heavy = idle_connections(5, "10.0.0.1")
    assert all(guard.admit(conn) for conn in [*prometheus, *heavy])
    assert guard.admit(server.Connection("10.0.0.7", 9.0))
    assert prometheus[0].stage is server.Stage.WAITING
    assert heavy[0].stage is server.Stage.CLOSED


def test_guard_keepalive_shortens_near_the_cap() -> None:
    guard = server.ConnectionGuard(8, per_address=8, keepalive_timeout=120.0,
                                   crowded_keepalive_timeout=5.0)
    conns = idle_connections(8)
    for count, conn in enumerate(conns, 1):
        assert guard.admit(conn)
        expected = {7: 62.5, 8: 5.0}.get(count, 120.0)  # 120 s up to 6 (3/4), then down to 5
        assert guard.keepalive() == expected, count
        assert guard.crowded is (count > 6)
    assert guard.sweep(now=6.0) == 1  # the one idle since 0.0: over 5 s at 8 open
    assert conns[0].stage is server.Stage.CLOSED
    assert guard.sweep(now=60.0) == 0  # 7 open: 62.5 s
    assert guard.sweep(now=64.0) == 1 and not guard.crowded
    assert guard.sweep(now=1000.0) == 0  # 6 open: not crowded, aiohttp's 120 s apply


def test_guard_address_keys() -> None:
    assert server.address_key("192.0.2.7") == "192.0.2.7"
    assert server.address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert server.address_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert server.address_key("fe80::1%eth0") == "fe80::/64"
    assert server.address_key("::1") == "::1"


def test_localhost_is_not_limited_per_address() -> None:
    """127.0.0.1 and ::1: the pod's own containers (a proxy sidecar, kubectl port-forward)."""
    guard = server.ConnectionGuard(16, per_address=2)
    for address in ("127.0.0.1", "::1"):
        assert all(guard.admit(conn) for conn in busy_connections(4, address))
    assert guard.open == 8
    assert all(guard.admit(conn) for conn in busy_connections(2, "127.0.0.3"))  # others: 2
    assert not guard.admit(busy_connections(1, "127.0.0.3")[0])


def test_memory_is_trimmed_once_after_a_burst() -> None:
    bursts: list[int] = []
    guard = server.ConnectionGuard(256, per_address=256, on_burst_end=lambda: bursts.append(1))
    conns = busy_connections(server.BURST_CONNECTIONS)
    for conn in conns:
        assert guard.admit(conn)
    for conn in conns:
        guard.release(conn)
    assert bursts == [1]
    lone = busy_connections(1)[0]
    assert guard.admit(lone)
    guard.release(lone)
    assert bursts == [1]  # a lone connection is no burst


def test_memory_is_trimmed_after_a_burst_of_refused_connections() -> None:
    """Refused connections count toward a burst too (issue 19: admitted or not)."""
    bursts: list[int] = []
    guard = server.ConnectionGuard(4, per_address=4, on_burst_end=lambda: bursts.append(1))
    held = busy_connections(4)
    assert all(guard.admit(conn) for conn in held)
    assert not any(guard.admit(conn) for conn in busy_connections(server.BURST_CONNECTIONS))
    for conn in held:
        guard.release(conn)
    assert bursts == [1]


def test_aiohttp_internals_read_by_limited_connection() -> None:
    """`LimitedConnection` reads these `RequestHandler` attributes (aiohttp 3.14); an upgrade
    that renames them must fail here rather than silently disable the limits."""
    slots = {name for cls in RequestHandler.__mro__ for name in getattr(cls, "__slots__", ())}
    assert {"_request_count", "_messages", "_request_in_progress", "_waiter"} <= slots
    assert callable(RequestHandler.finish_response)


# --- /healthz when ticks stop ---------------------------------------------------------------

class StuckSampler:
    """Ticks at once until `stuck` is set, then blocks (a hung read) until `release`."""

    def __init__(self) -> None:
        self.stuck = threading.Event()
        self.release = threading.Event()
        self.ticks = 0

    def tick(self) -> Any:
        if self.stuck.is_set():
            self.release.wait(30)
        self.ticks += 1
        return object()


async def poll(client: TestClient, path: str, status: int) -> str:  # type: ignore[type-arg]
    for _ in range(400):
        response = await client.get(path)
        if response.status == status:
            return await response.text()
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} never answered {status}")


async def test_healthz_fails_when_ticks_stop_and_recovers() -> None:
    sampler = StuckSampler()
    state = ExporterState(sampler=cast(Sampler, sampler), telemetry_path="/metrics",
                          stall_seconds=0.5)
    stop = asyncio.Event()
    async with TestClient(TestServer(make_app(state))) as client:
        ticking = asyncio.ensure_future(run_ticks(state, interval_seconds=0.05, stop=stop))
        try:
            await poll(client, "/readyz", 200)
            assert (await client.get("/healthz")).status == 200
            sampler.stuck.set()
            text = await poll(client, "/healthz", 503)
            assert text.startswith("tick loop stalled: no tick completed for ")
            assert text.endswith(" s (limit 0.5 s)\n") and text.count("\n") == 1
            assert (await client.get("/readyz")).status == 200  # readiness is unchanged
            sampler.stuck.clear()
            sampler.release.set()
            assert await poll(client, "/healthz", 200) == "ok\n"
        finally:
            sampler.release.set()
            stop.set()
            await asyncio.wait_for(ticking, 30)


def test_stall_before_the_first_tick_counts_from_run_ticks() -> None:
    state = ExporterState(sampler=cast(Sampler, StuckSampler()), telemetry_path="/metrics",
                          stall_seconds=30.0)
    state.last_tick = 100.0
    assert state.stalled(now=120.0) is None
    assert state.stalled(now=131.0) == 31.0
    state.stall_seconds = None
    assert state.stalled(now=1e9) is None


def test_stall_threshold() -> None:
    assert stall_threshold(5.0) == 30.0  # the default interval: 30 s
    assert stall_threshold(0.1) == 30.0
    assert stall_threshold(60.0) == 180.0  # three intervals


# --- bcrypt: a small pool, fair between clients, bounded waits ------------------------------

class Gate:
    """Makes `_checkpw` of wrong passwords block until opened, so a flood stays in flight."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = threading.Event()
        self.calls: list[tuple[bytes, bytes]] = []
        real: Callable[[bytes, bytes], bool] = webconfig._checkpw

        def gated(password: bytes, hashed: bytes) -> bool:
            self.calls.append((password, hashed))
            if password.startswith(b"wrong"):
                assert self.open.wait(30), "the gate was never opened"
            return real(password, hashed)

        monkeypatch.setattr(webconfig, "_checkpw", gated)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def test_a_flood_of_wrong_passwords_does_not_stop_a_valid_login(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(monkeypatch)
    auth = BasicAuth({"alice": HASH})
    flood = [asyncio.ensure_future(auth.verdict(basic("alice", f"wrong-{i}"), "10.0.0.66"))
             for i in range(40)]
    await until(lambda: auth.pool.busy == 1 and sum(f.done() for f in flood) == 35)
    # the flood's address holds one worker and four waiting; the other 35 were shed at once
    assert [f.result() for f in flood if f.done()] == [Verdict.BUSY] * 35
    assert auth.pool.waiting == 4
    # a valid login from another address gets the second worker while the flood is in flight
    assert await asyncio.wait_for(auth.verdict(basic("alice", PASSWORD), "10.0.0.1"),
                                  30) is Verdict.OK
    assert not gate.open.is_set() and sum(not f.done() for f in flood) == 5
    # cached now: even from the flooding address, and with every worker busy, no bcrypt
    calls = len(gate.calls)
    assert await auth.verdict(basic("alice", PASSWORD), "10.0.0.66") is Verdict.OK
    assert len(gate.calls) == calls
    gate.open.set()
    results = await asyncio.wait_for(asyncio.gather(*flood), 30)
    assert results.count(Verdict.DENIED) == 5 and results.count(Verdict.BUSY) == 35
    assert (auth.pool.busy, auth.pool.waiting) == (0, 0)


async def test_clients_take_turns_and_waits_are_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(monkeypatch)
    pool = BcryptPool(2, waiting_per_client=4, waiting_total=6, max_wait_seconds=0.3)
    auth = BasicAuth({"alice": HASH}, pool)
    holders = [asyncio.ensure_future(auth.verdict(basic("alice", "wrong"), client))
               for client in ("a", "b")]  # two addresses: both workers
    await until(lambda: pool.busy == 2)
    waiting = [asyncio.ensure_future(auth.verdict(basic("alice", "wrong"), client))
               for client in ("a", "a", "a", "b", "c", "c")]
    await until(lambda: pool.waiting == 6)
    # the queues are full: shed at once, whatever the address
    assert await auth.verdict(basic("alice", PASSWORD), "d") is Verdict.BUSY
    # nobody got a worker within 0.3 s: all six shed after their bounded wait
    assert await asyncio.wait_for(asyncio.gather(*waiting), 30) == [Verdict.BUSY] * 6
    assert pool.waiting == 0
    gate.open.set()
    assert await asyncio.wait_for(asyncio.gather(*holders), 30) == [Verdict.DENIED] * 2
    assert pool.busy == 0


async def test_waiting_checks_are_served_round_robin() -> None:
    pool = BcryptPool(2, max_wait_seconds=30)
    started: list[str] = []
    finish = {name: threading.Event() for name in ("a1", "b1", "a2", "a3", "a4", "b2", "c1")}

    def job(name: str) -> Callable[[], str]:
        def call() -> str:
            started.append(name)
            assert finish[name].wait(30)
            return name
        return call

    tasks = []
    for name in finish:  # in this order: a1 and b1 run, a2-a4, b2 and c1 wait
        tasks.append(asyncio.ensure_future(pool.run(name[0], job(name))))
        await asyncio.sleep(0)
    await until(lambda: started == ["a1", "b1"] and pool.waiting == 5)
    for done, expected in (("a1", "a2"), ("b1", "b2"), ("a2", "c1"), ("b2", "a3"),
                           ("c1", None), ("a3", "a4"), ("a4", None)):
        count = len(started)
        finish[done].set()
        if expected is None:
            await until(lambda: tasks[list(finish).index(done)].done())  # noqa: B023
            assert len(started) == count, started  # nothing was waiting that could start
        else:
            await until(lambda: len(started) > count)  # noqa: B023
            assert started[-1] == expected, started
    # c1, queued last, ran before a's last two: round-robin, not one FIFO queue
    assert started == ["a1", "b1", "a2", "b2", "c1", "a3", "a4"]
    assert await asyncio.gather(*tasks) == list(finish)
    assert (pool.busy, pool.waiting) == (0, 0)


async def test_a_shed_check_answers_429_with_retry_after(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(monkeypatch)
    state = ExporterState(sampler=cast(Sampler, StuckSampler()), telemetry_path="/metrics")
    config = WebConfig(users={"alice": HASH})
    pool = BcryptPool(2, waiting_per_client=0)
    async with TestClient(TestServer(make_app(state, config.middlewares(pool)))) as client:
        holding = asyncio.ensure_future(
            client.get("/metrics", headers={"Authorization": basic("alice", "wrong")}))
        await until(lambda: pool.busy == 1)
        shed = await client.get("/metrics", headers={"Authorization": basic("alice", PASSWORD)})
        assert shed.status == 429  # the same address, its worker busy, no queue
        assert shed.headers["Retry-After"] == "1"
        assert "WWW-Authenticate" not in shed.headers
        gate.open.set()
        assert (await asyncio.wait_for(holding, 30)).status == 401
        assert (await client.get("/healthz")).status == 200  # probes never wait for bcrypt


def test_decoy_cost_is_the_typical_configured_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    users = {name: bcrypt.hashpw(b"pw", bcrypt.gensalt(cost)).replace(b"$2b$", b"$2y$")
             for name, cost in (("cheap", 4), ("dear", 6), ("middle", 5))}
    auth = BasicAuth(users)
    assert webconfig.BCRYPT_HASH.fullmatch(auth.decoy.decode())
    assert auth.decoy[4:6] == b"05"  # the median: an unknown user costs what a user costs
    gate = Gate(monkeypatch)
    gate.open.set()
    assert not asyncio.run(auth.check(basic("nobody", "pw")))
    assert gate.calls == [(b"pw", auth.decoy)]  # an unknown user costs one bcrypt at cost 05
    assert BasicAuth({"a": users["cheap"]}).decoy[4:6] == b"04"
