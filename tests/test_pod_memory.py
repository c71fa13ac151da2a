"""Memory bounded by what a real API server may send: pods near etcd's 1.5 MiB object limit
(1,000 one-KB args and 250 KB of annotations each) are listed page by page and kept slim."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.kube.pods import SlimPod, slim_pod
from exporter.kube.reflector import MAX_OBJECT_BYTES, ApiError, _lines
from exporter.models import ModelRule
from tests.fakes.kube_api import FakeKubeAPI
from tests.support import Exporter, node_tree, value
from tests.support.kube import NODE, big_pod

PODS = 110
PEAK_LIMIT_MB = 150


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(node_name=NODE, bookmark_interval=0.5) as fake:
        yield fake


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow(seconds=6)  # the real process's peak RSS
def test_110_pods_of_1_25_mb_stay_under_150_mb(tmp_path: Path, api: FakeKubeAPI) -> None:
    for i in range(PODS):
        api.add_pod(big_pod(i))
    root = node_tree(tmp_path, None)
    config = tmp_path / "footprint.yaml"
    config.write_text(f"kubernetes:\n  kubeconfig: {api.write_kubeconfig(tmp_path / 'kc')}\n")
    with Exporter(["--path.sysfs", str(root / "sys"), "--config.file", str(config),
                   "--collector.interval", "0.2"], env={"NODE_NAME": NODE}) as exp:
        deadline = time.monotonic() + 60
        while value(exp.wait_ticks(1, timeout=60), "footprint_source_up",
                    source="kubernetes") != 1.0 or api.stats["watch"] < 1:
            assert time.monotonic() < deadline, "never listed"
        for i in range(0, PODS, 10):  # big MODIFIED events through the watch too
            api.modify_pod("ml", f"big-{i:03d}", big_pod(i) | {"status": {"phase": "Running"}})
        exp.wait_ticks(3)
        peak = peak_rss_mb(exp.proc.pid)
        assert exp.stop() == 0
    assert api.stats["list"] == 1  # one list ...
    assert api.stats["continue"] >= PODS // 10  # ... read in pages of a few pods each
    print(f"peak RSS {peak:.1f} MB with {PODS} pods of 1.25 MB")
    assert peak < PEAK_LIMIT_MB, f"peak RSS {peak:.0f} MB"


def test_a_slim_pod_keeps_only_what_attribution_reads_and_its_model() -> None:
    rules = (ModelRule("arg", "arg", "--model", "inference"),)
    raw = big_pod(3)
    raw["spec"]["containers"][0]["args"].append("--model=llama-70b")
    slim = slim_pod(raw, rules)
    assert isinstance(slim, SlimPod) and slim.match.model == "llama-70b"
    assert len(repr(dict(slim))) < 1_000  # of about 1.25 MB
    assert slim["metadata"]["name"] == "big-003"
    assert slim["spec"]["containers"] == [{"name": "main", "resources": {"requests": {"cpu": "1"}}}]
    assert slim["status"]["containerStatuses"][0]["state"] == {"running": {}}
    assert slim_pod({"metadata": "garbage", "spec": 7})["spec"] is None  # stays malformed


class Chunks:
    """A urllib3 response's stream() of given pieces."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def stream(self, amt: int, decode_content: bool = True) -> Iterator[bytes]:
        for piece in self.pieces:
            for start in range(0, len(piece), amt):
                yield piece[start:start + amt]


def test_a_watch_line_longer_than_any_object_ends_the_watch_unread() -> None:
    lines = _lines(Chunks([b'{"a":1}\n{"b"', b':2}\n\n', b"x" * (10 * MAX_OBJECT_BYTES)]),
                   MAX_OBJECT_BYTES, "pod watch")
    assert next(lines) == b'{"a":1}' and next(lines) == b'{"b":2}'
    with pytest.raises(ApiError, match="over 2097152 bytes"):
        next(lines)
