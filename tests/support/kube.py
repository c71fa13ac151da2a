"""The fake API server's node and pods, fixture cgroups and the in-process sampler over them
(from tests/test_kube.py), shared by the Kubernetes, GPU, fault, soak and hostile-host tests and
bench/pod_memory.py and bench/label_memory.py."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter import cli
from exporter.sampler import Sampler
from tests.fakes.kube_api import FakeKubeAPI
from tests.support import (
    FIXTURES,
    FakeClock,
    advance,
    node_tree,
    write_atomic,
    write_in_place,
)

NODE = "node-a"
NODE_LABELS = {"topology.kubernetes.io/zone": "europe-west4-a",
               "topology.kubernetes.io/region": "europe-west4",
               "node.kubernetes.io/instance-type": "a2-highgpu-1g"}
CGROUPS = FIXTURES / "cgroup"
VARIANT = "v2-cgroupfs-containerd"


def cid(digit: str) -> str:
    return digit * 64


def pod(name: str, container_id: str, *, namespace: str = "ml", cpu: str = "1",
        labels: dict[str, str] | None = None, args: list[str] | None = None,
        image: str = "busybox:1.36", owner: tuple[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels or {}}
    if owner is not None:
        metadata["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0],
                                        "name": owner[1], "uid": "u-" + owner[1],
                                        "controller": True}]
    return {
        "metadata": metadata,
        "spec": {"nodeName": NODE, "containers": [{
            "name": "main", "image": image, "args": args or [],
            "resources": {"requests": {"cpu": cpu}}}]},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "main", "containerID": f"containerd://{container_id}",
            "state": {"running": {"startedAt": "2026-11-26T10:00:00Z"}}}]},
    }


def four_pods() -> list[dict[str, Any]]:
    return [
        pod("llama-7c9f8d6b5-x2x4z", cid("1"), cpu="4", image="vllm/vllm-openai:v0.6.3",
            args=["vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct", "--port", "8000"],
            owner=("ReplicaSet", "llama-7c9f8d6b5"),
            labels={"app": "llama", "pod-template-hash": "7c9f8d6b5"}),
        pod("sentiment-predictor-00001-deployment-6f7d9c8b4-qwert", cid("2"), cpu="2",
            labels={"serving.kserve.io/inferenceservice": "sentiment",
                    "component": "predictor"}),
        pod("bert-finetune-worker-0", cid("4"), cpu="1",
            labels={"training.kubeflow.org/job-name": "bert-finetune",
                    "training.kubeflow.org/replica-type": "worker"}),
        pod("web-5f8b7c6d9d-abcde", cid("3"), cpu="1",
            labels={"app": "web", "pod-template-hash": "5f8b7c6d9d"},
            owner=("ReplicaSet", "web-5f8b7c6d9d")),
    ]


def node_with_cgroups(tmp_path: Path) -> Path:
    root = node_tree(tmp_path, "intel-2s")
    shutil.copytree(CGROUPS / VARIANT / "sys" / "fs", root / "sys" / "fs")
    return root


_CPU_STAT: dict[tuple[Path, str], Path] = {}


def cpu_stat(root: Path, container_id: str) -> Path:
    path = _CPU_STAT.get((root, container_id))
    if path is None or not path.exists():
        (path,) = [p for p in (root / "sys" / "fs" / "cgroup").rglob("cpu.stat")
                   if p.parent.name == container_id]
        _CPU_STAT[(root, container_id)] = path
    return path


def add_cpu(root: Path, container_id: str, seconds: float) -> None:
    path = cpu_stat(root, container_id)
    lines = path.read_text().splitlines()
    out = []
    for line in lines:
        key, _, number = line.partition(" ")
        if key == "usage_usec":
            line = f"usage_usec {int(number) + round(seconds * 1e6)}"
        out.append(line)
    write_in_place(path, "\n".join(out) + "\n")  # as the kernel updates cpu.stat


def add_busy(root: Path, seconds: float) -> None:
    """Add busy time (user jiffies at 100 Hz) to the aggregate line of /proc/stat."""
    path = root / "proc" / "stat"
    lines = path.read_text().splitlines()
    fields = lines[0].split()
    fields[1] = str(int(fields[1]) + round(seconds * 100))
    lines[0] = "cpu  " + " ".join(fields[1:])
    write_atomic(path, "\n".join(lines) + "\n")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(node_name=NODE, node_labels=NODE_LABELS, allocatable_cpu="16",
                     bookmark_interval=0.5, max_events=2_000) as fake:
        yield fake


def in_process(tmp_path: Path, api: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch,
               grace_seconds: float = 120.0, kubernetes: str = ""
               ) -> tuple[Path, Sampler, FakeClock]:
    """The exporter's sampler on a node tree with cgroups, against the fake API server;
    `kubernetes`: more lines of the config file's kubernetes section."""
    root = node_with_cgroups(tmp_path)
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    path = tmp_path / "footprint.yaml"
    path.write_text(f"kubernetes:\n  kubeconfig: {kubeconfig}\n  backoff_max_seconds: 1\n"
                    f"  grace_period_seconds: {grace_seconds}\n{kubernetes}"
                    "attribution:\n  idle_watts: {cpu: 20, dram: 2}\n")
    monkeypatch.setenv("NODE_NAME", NODE)
    settings = cli.parse_settings(["--path.sysfs", str(root / "sys"), "--path.procfs",
                                   str(root / "proc"), "--config.file", str(path),
                                   "--no-collector.nvml"])
    clock = FakeClock(5000.0)
    sampler = cli.build_sampler(settings, process_metrics=False, clock=clock, timer=clock)
    return root, sampler, clock


def pods_seen(sampler: Sampler) -> set[str]:
    assert sampler._kubernetes is not None
    view = sampler._kubernetes.pods.view()
    return {p["metadata"]["name"] for p in view.pods} if view.synced else set()


def drive(root: Path, clock: FakeClock, *, cpu_j: float, usage: dict[str, float],
          busy: float) -> None:
    """One second: package 0 uses cpu_j joules (dram and psys a fixed amount), containers and
    the node use CPU time."""
    advance(root, "intel-rapl:0", round(cpu_j * 1e6))
    advance(root, "intel-rapl:0:2", 5_000_000)
    advance(root, "intel-rapl:2", 60_000_000)
    for container_id, seconds in usage.items():
        add_cpu(root, container_id, seconds)
    add_busy(root, busy)
    clock.now += 1.0


ENERGY = ("footprint_node_energy_joules_total", "footprint_container_energy_joules_total",
          "footprint_unattributed_energy_joules_total")


EnergySeries = dict[tuple[str, tuple[str, ...]], float]


def energy_series(sampler: Sampler) -> EnergySeries:
    return {(name, labels): joules for name in ENERGY
            for labels, joules in sampler.ledger.counters.get(name, {}).items()}


def tick_increments(before: EnergySeries, after: EnergySeries) -> dict[tuple[str, str], float]:
    """Per component, the node's increment and its parts' over one tick, as Prometheus sees
    them: a series that appeared starts from 0; one retired had no increment left."""
    out: dict[tuple[str, str], float] = {}
    for (name, labels), joules in after.items():
        kind = "node" if name == ENERGY[0] else "parts"
        component = labels[0] if kind == "node" else labels[-2]
        out[(kind, component)] = out.get((kind, component), 0.0) + joules - before.get(
            (name, labels), 0.0)
    return out


def big_pod(i: int) -> dict[str, Any]:
    """About 1.25 MB: within a real API server's limits (etcd refuses over 1.5 MiB)."""
    obj = pod(f"big-{i:03d}", cid("1")[:-3] + f"{i:03d}",
              args=[f"--flag-{j}=" + "x" * 1_000 for j in range(1_000)],
              labels={"footprint.dev/model": f"model-{i % 7}"})
    obj["metadata"]["annotations"] = {f"note-{k}": "y" * 25_000 for k in range(10)}
    obj["spec"]["containers"][0]["env"] = [{"name": "MODEL", "value": f"m{i}"}]
    return obj
