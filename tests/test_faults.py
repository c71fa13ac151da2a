"""Faults injected mid-run, one at a time: after each, no crash, every counter monotonic, the
energy of the fault window counted once, and the right `footprint_source_up` (with the alert
condition it drives: `FootprintPowerSourceDown` is `footprint_source_up == 0` for 15 m).

In-process tests drive a sampler with a fake clock through `Run`, which checks each tick:
every `_total` series is never lower than in the previous snapshot, and per component the
containers' plus the unattributed increments equal the node's increment. Process tests use
`tests.support.Exporter`."""

from __future__ import annotations

import math
import os
import random
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.carbon import Intensity
from exporter.config import AttributionSettings
from exporter.intensity import ElectricityMaps, FallbackChain
from exporter.sampler import Sampler
from exporter.sources.base import Probed
from exporter.sources.rapl import RaplSource
from tests.fakes.carbon_apis import FakeElectricityMaps
from tests.fakes.fake_nvml import FakeNvml
from tests.fakes.kube_api import FakeKubeAPI
from tests.fakes.podresources_server import FakePodResources
from tests.fakes.podresources_server import pod as resources_of
from tests.support import (
    START,
    Exporter,
    FakeClock,
    Series,
    advance,
    feed_fifo,
    max_uj,
    node_tree,
    parse,
    read_uj,
    total,
    value,
    write_atomic,
    zone_dir,
)
from tests.support.gpu import SLICED, WHOLE, gpu_node
from tests.support.gpu import start as start_gpu_sampler
from tests.support.kube import (
    NODE,
    NODE_LABELS,
    add_busy,
    add_cpu,
    cid,
    energy_series,
    four_pods,
    in_process,
    pod,
    pods_seen,
    tick_increments,
    wait_for,
)

API_OUTAGE_SECONDS = 6.0
"""A real API outage, on the wall clock as the watcher backs off on it. With
backoff_max_seconds 1 (tests/support/kube.py's in_process) the watcher is at its longest wait
after one failure, so a few seconds hold the same cycle a 2-minute outage repeats: fail, keep
the last known pods, wait the capped backoff, fail again (MIN_OUTAGE_RETRIES at least), then
recover with one re-list."""
MIN_OUTAGE_RETRIES = 3
USAGE = {cid("1"): 2.0, cid("2"): 1.0, cid("4"): 1.0, cid("3"): 1.0}


def counters(series: Series) -> Series:
    return {k: v for k, v in series.items() if k[0].endswith("_total")}


def assert_monotonic(before: Series | None, after: Series) -> None:
    """Every `_total` series present in both snapshots is never lower in the later one."""
    if before is None:
        return
    for key, old in counters(before).items():
        new = after.get(key)
        if new is not None:
            assert new >= old, f"{key} went back from {old} to {new}"


def alerting(series: Series) -> set[str]:
    """Sources for which FootprintPowerSourceDown's condition (source_up == 0) holds."""
    return {dict(ls)["source"] for (n, ls), v in series.items()
            if n == "footprint_source_up" and v == 0.0}


class Run:
    """Ticks one sampler and checks every tick (see the module docstring)."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.last: Series | None = None
        self.ticks = 0

    def tick(self) -> Series:
        before = energy_series(self.sampler)
        series = parse(self.sampler.tick().text.decode())
        increments = tick_increments(before, energy_series(self.sampler))
        for component in {c for _, c in increments}:
            node = increments.get(("node", component), 0.0)
            parts = increments.get(("parts", component), 0.0)
            assert math.isclose(parts, node, rel_tol=1e-9, abs_tol=1e-6), (component, parts,
                                                                           node)
        assert_monotonic(self.last, series)
        self.last = series
        self.ticks += 1
        return series


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(node_name=NODE, node_labels=NODE_LABELS, allocatable_cpu="16",
                     bookmark_interval=0.5) as fake:
        yield fake


# -- a. the API server down, then back -------------------------------------------------------


def drive(root: Path, clock: FakeClock, *, cpu_j: float = 50.0) -> None:
    """One fake second: package 0 uses cpu_j, DRAM 5 J, psys 60 J; the four pods use CPU."""
    advance(root, "intel-rapl:0", round(cpu_j * 1e6))
    advance(root, "intel-rapl:0:2", 5_000_000)
    advance(root, "intel-rapl:2", 60_000_000)
    for container_id, seconds in USAGE.items():
        add_cpu(root, container_id, seconds)
    add_busy(root, 6.0)
    clock.now += 1.0


@pytest.mark.slow(seconds=8)  # a real outage of API_OUTAGE_SECONDS
def test_api_server_down_then_back(
        tmp_path: Path, api: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    pods = four_pods()
    for p in pods:
        api.add_pod(p)
    root, sampler, clock = in_process(tmp_path, api, monkeypatch)
    run = Run(sampler)
    watcher = sampler._kubernetes.pods  # type: ignore[union-attr]
    names = {p["metadata"]["name"] for p in pods}
    drives = 0
    sampler.start()
    try:
        wait_for(lambda: pods_seen(sampler) == names, "the four pods")
        run.tick()  # baselines
        for _ in range(3):
            drive(root, clock)
            drives += 1
            assert alerting(run.tick()) == set()
        api.set_outage(True)
        started = time.monotonic()
        wait_for(lambda: not watcher.view().up, "the watcher to notice the outage")
        api.delete_pod("ml", "web-5f8b7c6d9d-abcde")  # unseen until the API is back
        during: Series = {}
        while time.monotonic() - started < API_OUTAGE_SECONDS:
            drive(root, clock)
            drives += 1
            during = run.tick()
            assert alerting(during) == {"kubernetes"}  # pending: `for: 15m` outlasts it
            assert pods_seen(sampler) == names  # the last known pods are kept and attributed
            time.sleep(0.5)
        web_during = total(during, "footprint_container_energy_joules_total",
                           pod="web-5f8b7c6d9d-abcde")
        retries = api.stats["outage_responses"]
        api.set_outage(False)
        wait_for(lambda: watcher.view().up, "recovery", timeout=30)
        wait_for(lambda: pods_seen(sampler) == names - {"web-5f8b7c6d9d-abcde"},
                 "the pod deleted during the outage to go")
        for _ in range(3):
            drive(root, clock)
            drives += 1
            after = run.tick()
            assert alerting(after) == set()
    finally:
        sampler.close()
    assert web_during > 0
    assert retries >= MIN_OUTAGE_RETRIES, f"the watcher tried {retries} times in the outage"
    for component, joules in (("cpu", 50.0), ("dram", 5.0)):
        assert value(after, "footprint_node_energy_joules_total", component=component) == (
            pytest.approx(joules * drives, abs=1e-6)), component
    assert value(after, "footprint_node_platform_energy_joules_total", source="rapl") == (
        pytest.approx(60.0 * drives, abs=1e-6))
    assert value(after, "footprint_exporter_errors_total", source="kubernetes",
                 reason="api") >= 1
    # the deleted pod's series stay for the grace period (120 s), so its total is unchanged
    assert total(after, "footprint_container_energy_joules_total",
                 pod="web-5f8b7c6d9d-abcde") == pytest.approx(web_during)


# -- b. the kubelet's pod-resources socket gone, then back -----------------------------------


GPU_WATTS = {WHOLE: 400.0, SLICED: 300.0}  # and the MIG board at 250 W (gpu_node)


def gpu_second(nvml: FakeNvml, clock: FakeClock, run: Run) -> Series:
    nvml.advance(1.0)
    clock.now += 1.0
    sliced = next(g for g in nvml.gpus if g.uuid == SLICED)
    nvml.add_sample(sliced, 4242, sm_util=70)
    nvml.add_sample(sliced, 4243, sm_util=30)
    return run.tick()


def gpu_pods(api: FakeKubeAPI, tmp_path: Path) -> FakePodResources:
    for name, container_id in (("vllm", cid("1")), ("chat-a", cid("2")), ("chat-b", cid("3")),
                               ("train", cid("4")), ("small", cid("b"))):
        api.add_pod(pod(name, container_id, labels={"footprint.dev/model": name}))
    server = FakePodResources(tmp_path / "pr.sock")
    server.set_pods(
        resources_of("ml", "vllm", {"main": {"nvidia.com/gpu": [WHOLE]}}),
        resources_of("ml", "chat-a", {"main": {"nvidia.com/gpu": [f"{SLICED}::0"]}}),
        resources_of("ml", "chat-b", {"main": {"nvidia.com/gpu": [f"{SLICED}::1"]}}))
    return server


def vllm_gpu(series: Series) -> float:
    return total(series, "footprint_container_energy_joules_total", pod="vllm",
                 component="gpu")


def test_podresources_socket_gone_then_back(tmp_path: Path, api: FakeKubeAPI,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    root, nvml = gpu_node(tmp_path)
    server = gpu_pods(api, tmp_path)
    server.start()
    sampler, clock = start_gpu_sampler(tmp_path, api, monkeypatch, root, nvml,
                                       tmp_path / "pr.sock")
    run = Run(sampler)
    seconds = 0
    try:
        wait_for(lambda: len(pods_seen(sampler)) == 5, "the GPU pods")
        run.tick()
        for _ in range(3):
            before = gpu_second(nvml, clock, run)
            seconds += 1
        assert value(before, "footprint_source_up", source="podresources") == 1.0
        server.stop()
        for _ in range(5):
            gone = gpu_second(nvml, clock, run)
            seconds += 1
            assert alerting(gone) == {"podresources"}
        # vLLM's process still runs on its GPU: NVML's process list keeps it charged
        assert vllm_gpu(gone) - vllm_gpu(before) == pytest.approx(5 * 400.0)
        server.start()
        for _ in range(3):
            back = gpu_second(nvml, clock, run)
            seconds += 1
            assert alerting(back) == set()
        assert value(back, "footprint_exporter_errors_total", source="nvml") == 0.0
    finally:
        sampler.close()
        server.stop()
    assert value(back, "footprint_node_energy_joules_total", component="gpu") == (
        pytest.approx(950.0 * seconds, abs=1e-6))


# -- c. a GPU lost mid-run --------------------------------------------------------------------


def test_a_gpu_lost_mid_run_stops_its_energy_and_the_others_go_on(
        tmp_path: Path, api: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    root, nvml = gpu_node(tmp_path)
    server = gpu_pods(api, tmp_path)
    server.start()
    sampler, clock = start_gpu_sampler(tmp_path, api, monkeypatch, root, nvml,
                                       tmp_path / "pr.sock")
    run = Run(sampler)
    try:
        wait_for(lambda: len(pods_seen(sampler)) == 5, "the GPU pods")
        run.tick()
        for _ in range(3):
            before = gpu_second(nvml, clock, run)
        next(g for g in nvml.gpus if g.uuid == WHOLE).lost = True
        for _ in range(5):
            lost = gpu_second(nvml, clock, run)
            assert alerting(lost) == {"nvml"}
            assert value(lost, "footprint_gpu_energy_joules_total", uuid=WHOLE) == value(
                before, "footprint_gpu_energy_joules_total", uuid=WHOLE)
    finally:
        sampler.close()
        server.stop()
    assert value(lost, "footprint_gpu_energy_joules_total", uuid=SLICED) - value(
        before, "footprint_gpu_energy_joules_total", uuid=SLICED) == pytest.approx(5 * 300.0)
    assert vllm_gpu(lost) == vllm_gpu(before)  # nothing invented for the lost GPU
    # 3 s of all three boards, then 5 s of the two left: the lost GPU's last second is lost
    assert value(lost, "footprint_node_energy_joules_total", component="gpu") == (
        pytest.approx(3 * 950.0 + 5 * 550.0, abs=1e-6))
    assert value(lost, "footprint_exporter_errors_total", source="nvml") >= 5


# -- d. RAPL's energy_uj unreadable (a directory, then garbage) and back ----------------------


@pytest.mark.parametrize("fault", ["directory", "garbage", "directory-then-garbage"])
def test_rapl_unreadable_then_back_counts_the_window_once(
        tmp_path: Path, api: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    """As root, chmod does not stop reads: energy_uj becomes a directory (EISDIR) or garbage
    while the true counter keeps counting; when it comes back it holds the counted value."""
    for p in four_pods():
        api.add_pod(p)
    root, sampler, clock = in_process(tmp_path, api, monkeypatch)
    run = Run(sampler)
    zone = "intel-rapl:0"
    path = zone_dir(root, zone) / "energy_uj"
    top = max_uj(root, zone)
    sampler.start()
    try:
        wait_for(lambda: len(pods_seen(sampler)) == 4, "the pods")
        run.tick()
        for _ in range(3):
            drive(root, clock)
            before = run.tick()
        true_uj = read_uj(root, zone)
        steps = {"directory": ["dir"] * 6, "garbage": ["junk"] * 6,
                 "directory-then-garbage": ["dir"] * 3 + ["junk"] * 3}[fault]
        for i, kind in enumerate(steps):
            true_uj = (true_uj + 50_000_000) % top
            clock.now += 1.0
            advance(root, "intel-rapl:0:2", 5_000_000)
            advance(root, "intel-rapl:2", 60_000_000)
            if kind == "dir" and not path.is_dir():
                path.unlink()
                path.mkdir()
            elif kind == "junk":
                if path.is_dir():
                    path.rmdir()
                write_atomic(path, f"garbage {i}\x00\n")
            during = run.tick()
            assert alerting(during) == {"rapl"}
            assert value(during, "footprint_node_energy_joules_total", component="cpu") == (
                value(before, "footprint_node_energy_joules_total", component="cpu"))
        if path.is_dir():
            path.rmdir()
        write_atomic(path, f"{true_uj}\n")  # the counter kept running meanwhile
        drive(root, clock)
        back = run.tick()
        assert alerting(back) == set()
        drive(root, clock)
        back = run.tick()
    finally:
        sampler.close()
    drives = 3 + len(steps) + 2
    assert value(back, "footprint_node_energy_joules_total", component="cpu") == (
        pytest.approx(50.0 * drives, abs=1e-6))  # the window counted once, on recovery
    assert value(back, "footprint_node_energy_joules_total", component="dram") == (
        pytest.approx(5.0 * drives, abs=1e-6))
    assert value(back, "footprint_rapl_energy_joules_total", zone=zone) == (
        pytest.approx(50.0 * drives, abs=1e-6))
    assert value(back, "footprint_exporter_errors_total", source="rapl",
                 reason="read") == len(steps)


# -- e. the intensity provider times out for an hour of fake time ----------------------------


STATIC_DE = Intensity(338.0, "DE", "static")
LIVE_DE = 302.0
MAX_AGE = 5400.0
"""1.5 h instead of the default 2 h, so that a 1-hour outage outlives the last value. It must stay
above an hour (the value is for the hour it was fetched in) plus the 900 s refresh: below that
the chain falls back to static every hour while the provider is healthy.
FootprintGridIntensityStale keeps its own fixed 2 h limit."""
OUTAGE = (START + 2000.0, START + 2000.0 + 3600.0)


async def test_intensity_provider_times_out_for_an_hour(tmp_path: Path) -> None:
    clock = FakeClock(START)
    root = node_tree(tmp_path, "intel-2s")
    with FakeElectricityMaps(clock=clock) as em_api:
        em = ElectricityMaps(zone="DE", token=em_api.token, base_url=em_api.url,
                             timeout_seconds=0.3, clock=clock, trust_env=False)
        chain = FallbackChain(em, STATIC_DE, max_age_seconds=MAX_AGE, clock=clock)
        rapl = RaplSource(root / "sys")
        sampler = Sampler.assemble(sources=[Probed("rapl", rapl, rapl.probe())], intensity=chain,
                                   attribution=AttributionSettings(idle_watts={"cpu": 20.0}),
                                   node=NODE, cpu_model="", process_metrics=False,
                                   clock=clock, timer=clock)
        run = Run(sampler)
        try:
            next_poll = clock.now + await em.poll()
            run.tick()
            providers: list[str] = []
            for _ in range(3 * 60):  # three hours, a tick a minute
                clock.advance(60.0)
                if OUTAGE[0] <= clock.now < OUTAGE[1]:
                    em_api.fail("slow", times=None)
                else:
                    em_api.clear()
                if clock.now >= next_poll:
                    next_poll = clock.now + await em.poll()
                reading = em.reading()
                assert reading is not None
                fresh = clock.now - reading.observed_unix <= MAX_AGE
                expected = Intensity(LIVE_DE, "DE", "electricitymaps") if fresh else STATIC_DE
                before = sampler.ledger.total("footprint_node_co2e_grams_total")
                joules_before = sampler.ledger.total("footprint_node_energy_joules_total")
                advance(root, "intel-rapl:0", 6_000_000_000)  # 100 W for the minute
                series = run.tick()
                grid = [(dict(ls)["provider"], v) for (n, ls), v in series.items()
                        if n == "footprint_grid_intensity_grams_per_kwh"]
                assert grid == [(expected.provider, expected.grams_per_kwh)]
                joules = sampler.ledger.total("footprint_node_energy_joules_total") - (
                    joules_before)
                grams = sampler.ledger.total("footprint_node_co2e_grams_total") - before
                assert joules == pytest.approx(6000.0)
                assert grams == pytest.approx(joules / 3.6e6 * expected.grams_per_kwh)
                up = value(series, "footprint_source_up", source="intensity")
                assert (up == 0.0) == ("intensity" in alerting(series))
                age = clock.now - value(
                    series, "footprint_grid_intensity_last_update_timestamp_seconds")
                assert age <= 7200, "FootprintGridIntensityStale would fire"
                if not providers or providers[-1] != expected.provider:
                    providers.append(expected.provider)
                if OUTAGE[0] + 900 <= clock.now < OUTAGE[1]:  # after the next poll failed
                    assert up == 0.0
            assert up == 1.0
        finally:
            sampler.close()
            await em.close()
    assert providers == ["electricitymaps", "static", "electricitymaps"]


# -- f. scrapes that stall or disconnect mid-response ----------------------------------------


def _connect(port: int, *, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


def _reset(sock: socket.socket) -> None:
    """Close with RST, as a scraper whose timeout fires does to a half-read response."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


REQUEST = (b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: gzip\r\n"
           b"Accept: application/openmetrics-text;version=1.0.0\r\n\r\n")


@pytest.mark.slow(seconds=4)  # the real process
def test_stalled_and_dropped_scrapes_never_stop_serving_or_ticking(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "intel-2s")
    held: list[socket.socket] = []
    with Exporter(["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
                   "--collector.interval", "0.1"]) as exp:
        previous = exp.wait_ticks(1)
        port = int(exp.url.rsplit(":", 1)[1])
        try:
            for i in range(300):
                kind = i % 4
                sock = _connect(port, rcvbuf=1024 if kind == 1 else None)
                if kind == 0:  # headers never finished
                    sock.sendall(REQUEST[:30])
                    held.append(sock)
                elif kind == 1:  # a full request, never read
                    sock.sendall(REQUEST)
                    held.append(sock)
                elif kind == 2:  # reset after part of the response
                    sock.sendall(REQUEST)
                    sock.recv(64)
                    _reset(sock)
                else:  # reset mid-request
                    sock.sendall(REQUEST[:50])
                    _reset(sock)
                if i % 25 == 24:  # meanwhile, another scraper is served and ticks go on
                    advance(root, "intel-rapl:0", 1_000_000)
                    started = time.monotonic()
                    series = exp.wait_ticks(2)
                    assert time.monotonic() - started < 5
                    assert_monotonic(previous, series)
                    previous = series
            assert exp.proc.poll() is None
            assert len(held) == 150
            started = time.monotonic()
            assert exp.stop() == 0  # with 150 stalled scrapers still connected
            assert time.monotonic() - started < 5
        finally:
            for sock in held:
                sock.close()
    assert not any("Traceback" in line for line in exp.lines)


# -- g. SIGTERM mid-tick -----------------------------------------------------------------------


@pytest.mark.slow(seconds=4)  # the real process; a blocked read held up to a second
@pytest.mark.parametrize("attempt", range(10))
def test_sigterm_mid_tick_exits_zero_within_5_seconds(tmp_path: Path, attempt: int) -> None:
    """Even attempts: a read is blocked (energy_uj is a FIFO nobody writes yet; the watchdog
    lets the ticks go on without RAPL) when SIGTERM (twice) arrives, and released a moment
    later. Odd attempts: SIGTERM at a random point of a 50 ms tick cycle."""
    rng = random.Random(attempt)
    root = node_tree(tmp_path, "intel-2s")
    path = zone_dir(root, "intel-rapl:0") / "energy_uj"
    with Exporter(["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
                   "--collector.interval", "0.05"]) as exp:
        exp.wait_ticks(2)
        if attempt % 2 == 0:
            counted = read_uj(root, "intel-rapl:0") + 1_000_000
            path.unlink()
            os.mkfifo(path)
            series = exp.wait_ticks(2)  # the ticks go on around the blocked read
            assert value(series, "footprint_source_up", source="rapl") == 0.0
            started = time.monotonic()
            exp.proc.send_signal(signal.SIGTERM)
            time.sleep(0.05)
            exp.proc.send_signal(signal.SIGTERM)
            time.sleep(rng.uniform(0.0, 1.0))
            feeder = threading.Thread(target=feed_fifo, args=(path, f"{counted}\n",
                                                              time.monotonic() + 5))
            feeder.start()
            code = exp.proc.wait(5)  # no third signal: it could land after the handler is gone
            elapsed = time.monotonic() - started
            feeder.join(5)  # it gives up at its deadline if the exporter left before it wrote
        else:
            time.sleep(rng.uniform(0.0, 0.5))
            started = time.monotonic()
            code = exp.stop(signal.SIGTERM, timeout=5)
            elapsed = time.monotonic() - started
        assert elapsed < 5
    assert code == 0
    assert not any("Traceback" in line for line in exp.lines), exp.lines
    assert any("stopping: the last tick finished" in line for line in exp.lines)
