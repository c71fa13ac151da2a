"""Test helpers: fixture node trees, counters written as the kernel does, a real exporter.

The helpers that several test modules share live here and in this package's topic modules
(tests.support.kube, .gpu, .report, ...): a test module never imports another
(tests/test_layers.py checks that)."""

from __future__ import annotations

import ctypes
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

FIXTURES = Path(__file__).parent.parent / "fixtures"
REPO = Path(__file__).parent.parent.parent

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def node_tree(tmp_path: Path, rapl: str | None) -> Path:
    """A node root with `sys/` from a committed RAPL fixture (or none) and `proc/`."""
    root = tmp_path / "node"
    if rapl is not None:
        shutil.copytree(FIXTURES / rapl / "sys", root / "sys")
    else:
        (root / "sys").mkdir(parents=True)
    shutil.copytree(FIXTURES / "proc", root / "proc")
    return root


def zone_dir(root: Path, zone: str) -> Path:
    return root / "sys" / "class" / "powercap" / zone


def write_atomic(path: Path, text: str) -> None:
    """Replace a file in one step, so a concurrent reader never sees half a value."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_in_place(path: Path, text: str) -> None:
    """Rewrite a file in place, keeping its inode, as the kernel updates a cgroup's `cpu.stat`
    or `cpuacct.usage`: the exporter keeps those files open and re-reads them with `pread`
    (exporter/usage/cgroups.py), so a file replaced by a rename (write_atomic) is one it would
    have to notice and open again, which cgroupfs never needs. One `pwrite` then a truncate to
    the new length: a concurrent reader sees the old text or the new one (or, if the new one is
    shorter, the new one followed by the old one's tail for a moment)."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def read_uj(root: Path, zone: str) -> int:
    return int((zone_dir(root, zone) / "energy_uj").read_text())


def max_uj(root: Path, zone: str) -> int:
    return int((zone_dir(root, zone) / "max_energy_range_uj").read_text())


def advance(root: Path, zone: str, microjoules: int) -> None:
    """Advance a zone's counter by true energy, wrapping at max_energy_range_uj as RAPL does."""
    value = (read_uj(root, zone) + microjoules) % max_uj(root, zone)
    write_atomic(zone_dir(root, zone) / "energy_uj", f"{value}\n")


def parse(text: str) -> Series:
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(series: Series, name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels`; fails if none or several."""
    found = [v for (n, ls), v in series.items()
             if n == name and set(labels.items()) <= set(ls)]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def total(series: Series, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in series.items()
               if n == name and set(labels.items()) <= set(ls))


def drop_file_read_override() -> None:
    """preexec_fn: as root, drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set,
    so mode 0400 files owned by someone else are unreadable, as root-only energy_uj is to a
    non-root exporter."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


class Exporter:
    """footprint-exporter as a real process on a free loopback port."""

    def __init__(self, args: Sequence[str], *, env: Mapping[str, str] | None = None,
                 unreadable_as_root: bool = False,
                 launcher: Sequence[str] = ("-m", "exporter")) -> None:
        """`launcher`: what runs the exporter, e.g. ("-m", "tests.fakes.nvml_process",
        "tests.test_dra:four_dra_gpus") for the real process on the fake NVML."""
        cmd = [sys.executable, *launcher, "--web.listen-address", "127.0.0.1:0", *args]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "KUBECONFIG": str(REPO / "tests" / "no-such-kubeconfig"),
                 **(env or {})},
            preexec_fn=drop_file_read_override if unreadable_as_root else None)
        self.lines: list[str] = []
        self._port: int | None = None
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        if not self._listening.wait(20):
            self.stop()
            raise AssertionError("exporter did not start:\n" + "\n".join(self.lines))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            match = re.search(r'msg="listening on 127\.0\.0\.1:(\d+)"', line)
            if match:
                self._port = int(match.group(1))
                self._listening.set()
        self._listening.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def get(self, path: str, headers: Mapping[str, str] | None = None
            ) -> tuple[int, Mapping[str, str], bytes]:
        request = urllib.request.Request(self.url + path, headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def metrics(self) -> Series:
        status, _, body = self.get("/metrics")
        assert status == 200, body
        return parse(body.decode())

    def ticks(self) -> float:
        return value(self.metrics(), "footprint_exporter_tick_duration_seconds_count")

    def wait_ticks(self, count: int = 2, timeout: float = 20.0) -> Series:
        """Wait until `count` more ticks have completed, so the last writes were read."""
        deadline = time.monotonic() + timeout
        while self.get("/readyz")[0] != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.02)
        start = self.ticks()
        while True:
            series = self.metrics()
            if value(series, "footprint_exporter_tick_duration_seconds_count") >= start + count:
                return series
            assert time.monotonic() < deadline, "ticks stalled"
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def require_binary(name: str) -> str:
    """The path of a real tool the test needs; fails (never skips) when it is missing."""
    path = shutil.which(name)
    assert path, f"{name} is not installed: run scripts/test.sh, which installs it"
    return path


def log_lines(lines: Sequence[str], needle: str) -> Iterator[str]:
    return (line for line in lines if needle in line)


def feed_fifo(path: Path, text: str, deadline: float) -> bool:
    """Write `text` to the FIFO once a reader has it open; True when written by `deadline`."""
    while time.monotonic() < deadline:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            time.sleep(0.01)
            continue
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        return True
    return False


START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
"""The `clock` fixture's (tests/conftest.py) start: Unix seconds, as the carbon APIs' fakes use."""


class FakeClock:
    """A clock (and timer) that stands still until the test moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_http_ok(url: str, proc: subprocess.Popen[Any], name: str, logs: Callable[[], str],
                 timeout: float) -> None:
    """Poll `url` until it answers 200 while `proc` runs; fails with `logs()` when `proc`
    exits or `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"{name} exited:\n{logs()}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{name} never ready:\n{logs()}"
        time.sleep(0.1)


def stop_process(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM, then SIGKILL if `proc` has not exited within `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_get(url: str) -> tuple[int, str]:
    """GET without any proxy: the status and body, or (0, why) when nothing answered."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


def wait_for_metrics(port: int, seconds: float) -> tuple[int, str]:
    """GET /metrics until it answers 200 (503 until the first tick), at most `seconds`."""
    status, body = 0, ""
    until = time.monotonic() + seconds
    while status != 200 and time.monotonic() < until:
        status, body = http_get(f"http://127.0.0.1:{port}/metrics")
        time.sleep(0.1 if status != 200 else 0)
    return status, body


def pump_lines(stream: Any, into: queue.Queue[str]) -> None:
    """Every line of `stream` into `into` (a reader thread's target)."""
    for line in stream:
        into.put(line)
