"""Shutdown with the pod watch open and the API server silent (issue 10, item 6).

A watch on a quiet node can go minutes without a byte. stop() used to close the response while
the watch thread was blocked reading it, and closing waits for the reader's lock, which that
thread holds until the next byte: SIGTERM waited out the pod's grace period. Here the fake API
server never sends a byte once the watch is open (no pod changes, bookmarks an hour apart),
over plain HTTP and over HTTPS as a real apiserver serves it."""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
import pytest

from exporter.kube.pods import PodWatcher
from tests.fakes.kube_api import FakeKubeAPI
from tests.support import Exporter, node_tree, require_binary

NODE = "node-a"
QUIET = 3600.0  # bookmark interval: no bookmark while a test runs


def a_pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ml"},
            "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "busybox"}]},
            "status": {"phase": "Running"}}


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require_binary("openssl"), *args], cwd=cwd, check=True,
                   capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a server certificate for 127.0.0.1 signed by it: ca.pem, server.pem/.key."""
    d = tmp_path_factory.mktemp("kube-pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=fake kube CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=kube-apiserver", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                  "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-set_serial", "1", "-days", "2", "-out", "server.pem", "-extfile", "server.ext",
             cwd=d)
    return d


@pytest.fixture(params=["http", "https"])
def api(request: pytest.FixtureRequest, pki: Path) -> Iterator[FakeKubeAPI]:
    https = request.param == "https"
    with FakeKubeAPI(node_name=NODE, bookmark_interval=QUIET,
                     tls_cert=pki / "server.pem" if https else None,
                     tls_key=pki / "server.key" if https else None,
                     tls_ca=pki / "ca.pem" if https else None) as fake:
        assert fake.url.startswith(f"{request.param}://")
        fake.add_pod(a_pod("quiet"))
        yield fake


def client(api: FakeKubeAPI, tmp_path: Path) -> Any:
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(api.write_kubeconfig(tmp_path / "kubeconfig")),
        client_configuration=configuration)
    return kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))


class Faults(logging.Handler):
    """Warnings and errors of the pod watch's logger, and exceptions that end any thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.uncaught: list[str] = []
        self._logger = logging.getLogger("footprint.kubernetes")
        self._logger.addHandler(self)
        monkeypatch.setattr(threading, "excepthook", self._uncaught)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def _uncaught(self, args: Any) -> None:
        self.uncaught.append(f"{args.thread.name if args.thread else '?'}: "
                             f"{args.exc_type.__name__}: {args.exc_value}")

    def close(self) -> None:
        self._logger.removeHandler(self)
        super().close()

    def __str__(self) -> str:
        return "\n".join([r.getMessage() for r in self.records] + self.uncaught)


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Iterator[Faults]:
    found = Faults(monkeypatch)
    yield found
    found.close()


def blocked_in_read(thread: threading.Thread) -> bool:
    """Whether `thread` is inside a socket read (plain or TLS), holding the reader's lock."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        code = frame.f_code
        if code.co_name in ("readinto", "recv_into", "read") and code.co_filename.endswith(
                ("socket.py", "ssl.py")):
            return True
        frame = frame.f_back
    return False


def watch_thread(watcher: PodWatcher) -> threading.Thread:
    return watcher._thread


def stop(watcher: PodWatcher) -> None:
    """watcher.stop(timeout=5), called from another thread so that a stop() blocked for good
    (the bug: closing the response waits for the reader's lock) fails the test instead of
    hanging the suite. 30 s only guards against that hang; stop()'s own join is the bar."""
    caller = threading.Thread(target=watcher.stop, kwargs={"timeout": 5}, daemon=True)
    caller.start()
    caller.join(30)
    assert not caller.is_alive(), "stop() is blocked (waiting for the watch reader's lock?)"


def assert_stopped_quietly(watcher: PodWatcher, api: FakeKubeAPI, faults: Faults) -> None:
    assert not watch_thread(watcher).is_alive(), "the watch thread outlived stop()"
    wait_for(lambda: api.stats["open_watches"] == 0, "the server to see the watch closed")
    assert watcher.view().api_errors == 0, "the shutdown was counted as an API error"
    assert not faults.records and not faults.uncaught, str(faults)
    assert api.stats["watch"] == 1, "a watch was opened after stop()"


def test_stop_interrupts_a_silent_watch(api: FakeKubeAPI, tmp_path: Path,
                                        faults: Faults) -> None:
    watcher = PodWatcher(client(api, tmp_path), NODE)
    watcher.start()
    try:
        wait_for(lambda: watcher.view().synced and api.stats["open_watches"] == 1,
                 "the list and an open watch")
        wait_for(lambda: blocked_in_read(watch_thread(watcher)),
                 "the watch thread to block reading the silent watch")
        assert {p["metadata"]["name"] for p in watcher.view().pods} == {"quiet"}
    finally:
        stop(watcher)
    assert_stopped_quietly(watcher, api, faults)


class StopWhileConnecting:
    """A CoreV1Api whose watch call, once the response has come, has stop() called (from
    another thread, as a signal handler's shutdown would) before returning it: the watch
    starts after stop() looked for a response to interrupt and found none."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.watcher: PodWatcher | None = None
        self.stopper: threading.Thread | None = None

    def read_node(self, *args: Any, **kwargs: Any) -> Any:
        return self.real.read_node(*args, **kwargs)

    def list_pod_for_all_namespaces(self, *args: Any, **kwargs: Any) -> Any:
        response = self.real.list_pod_for_all_namespaces(*args, **kwargs)
        if kwargs.get("watch") and self.watcher is not None:
            watcher = self.watcher
            stopper = threading.Thread(target=watcher.stop, kwargs={"timeout": 5}, daemon=True)
            stopper.start()
            self.stopper = stopper
            wait_for(watcher._stopping.is_set, "stop() to begin", timeout=5)
            time.sleep(0.1)  # stop() has read the (still empty) response and is joining
        return response


def test_a_watch_that_starts_after_stop_ends_at_once(api: FakeKubeAPI, tmp_path: Path,
                                                     faults: Faults) -> None:
    proxy = StopWhileConnecting(client(api, tmp_path))
    watcher = PodWatcher(proxy, NODE)
    proxy.watcher = watcher
    watcher.start()
    try:
        wait_for(lambda: proxy.stopper is not None, "the watch request")
        assert proxy.stopper is not None
        proxy.stopper.join(10)
        assert not proxy.stopper.is_alive(), "stop() did not return"
        assert not watch_thread(watcher).is_alive(), "the watch started after stop() lives on"
    finally:
        stop(watcher)
    assert_stopped_quietly(watcher, api, faults)


@pytest.mark.slow(seconds=3)  # the real process and its watch, SIGTERM timed
@pytest.mark.parametrize("attempt", range(3))
def test_sigterm_with_a_silent_watch_exits_zero_within_5_seconds(
        api: FakeKubeAPI, tmp_path: Path, attempt: int) -> None:
    """The bar of the issue: the exporter as a real process, its pod watch open and silent,
    exits 0 within 5 s of SIGTERM with its normal stop line and no traceback."""
    rng = random.Random(attempt)
    root = node_tree(tmp_path, "intel-2s")
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    with Exporter(["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
                   "--collector.interval", "0.1", "--no-collector.nvml"],
                  env={"KUBECONFIG": str(kubeconfig), "NODE_NAME": NODE}) as exp:
        wait_for(lambda: api.stats["open_watches"] == 1, "the exporter's watch")
        exp.wait_ticks(2)
        time.sleep(rng.uniform(0.0, 0.5))
        assert api.stats["open_watches"] == 1 and api.stats["watch"] == 1
        started = time.monotonic()
        code = exp.stop(signal.SIGTERM, timeout=5)  # TimeoutExpired past 5 s
        assert time.monotonic() - started < 5
    assert code == 0, exp.lines
    assert any("stopping: the last tick finished" in line for line in exp.lines), exp.lines
    assert any("source kubernetes: on" in line for line in exp.lines)
    assert not any("Traceback" in line for line in exp.lines), exp.lines
    assert not any("logger=kubernetes" in line and ("level=warn" in line or "level=error" in line)
                   for line in exp.lines), exp.lines
    assert all(line.startswith("time=") for line in exp.lines), exp.lines  # nothing stray


@pytest.mark.slow(seconds=8)  # the real process waits out stop()'s 5 s for the list
def test_sigterm_with_the_pod_list_in_flight_exits_zero(api: FakeKubeAPI,
                                                        tmp_path: Path) -> None:
    """A request still waiting for its response headers cannot be interrupted: stop() gives
    the (daemon) thread its 5 s and returns; the process still exits 0, without a traceback."""
    root = node_tree(tmp_path, "intel-2s")
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    api.set_delay(60.0)  # every answer waits a minute: the list's read timeout is 60 s
    with Exporter(["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
                   "--collector.interval", "0.1", "--no-collector.nvml"],
                  env={"KUBECONFIG": str(kubeconfig), "NODE_NAME": NODE}) as exp:
        wait_for(lambda: api.stats["list"] == 1, "the exporter's pod list")
        exp.wait_ticks(2)
        code = exp.stop(signal.SIGTERM, timeout=10)
    assert code == 0, exp.lines
    assert api.stats["watch"] == 0
    assert any("stopping: the last tick finished" in line for line in exp.lines), exp.lines
    assert not any("Traceback" in line for line in exp.lines), exp.lines
    assert all(line.startswith("time=") for line in exp.lines), exp.lines
