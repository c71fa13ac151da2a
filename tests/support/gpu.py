"""A GPU node in-process (from tests/test_gpu_attribution.py): fake NVML with a whole, a
time-sliced and a MIG GPU, fixture /proc/<pid>/cgroup files, the sampler started against the
fake API server and a pod-resources socket; shared by the GPU, DRA, MPS and fault tests."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from exporter import cli
from exporter.sampler import Sampler
from tests.fakes.fake_nvml import FakeNvml, FakeProcess, a100_mig, h100
from tests.fakes.kube_api import FakeKubeAPI
from tests.support import FakeClock, Series, total, value, write_atomic
from tests.support.kube import NODE, cid, node_with_cgroups

WHOLE = "GPU-00000000-0000-4000-8000-000000000000"
SLICED = "GPU-11111111-1111-4111-8111-111111111111"
PIDS = {4100: cid("1"), 4242: cid("2"), 4243: cid("3"), 4300: cid("4"), 4301: cid("b")}


def gpu_node(tmp_path: Path) -> tuple[Path, FakeNvml]:
    root = node_with_cgroups(tmp_path)
    for pid, container_id in (*PIDS.items(), (1, None)):
        path = root / "proc" / str(pid) / "cgroup"
        path.parent.mkdir(parents=True)
        where = (f"/kubepods/burstable/pod0a1b2c3d/{container_id}" if container_id
                 else "/init.scope")
        write_atomic(path, f"0::{where}\n")
    whole, sliced, mig = h100(WHOLE), h100(SLICED), a100_mig()
    whole.processes = [FakeProcess(4100)]
    sliced.processes = [FakeProcess(4242), FakeProcess(4243), FakeProcess(1)]  # 1: a host pid
    mig.processes = [FakeProcess(4300, gpu_instance_id=2, compute_instance_id=0),
                     FakeProcess(4301, gpu_instance_id=3, compute_instance_id=0)]
    nvml = FakeNvml([whole, sliced, mig])
    for gpu, watts in ((whole, 400.0), (sliced, 300.0), (mig, 250.0)):
        nvml.set_watts(gpu, watts)
    return root, nvml


def start(tmp_path: Path, api: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch, root: Path,
          nvml: FakeNvml, socket: Path) -> tuple[Sampler, FakeClock]:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    config = tmp_path / "footprint.yaml"
    config.write_text(f"kubernetes:\n  kubeconfig: {kubeconfig}\n"
                      f"  pod_resources_socket: {socket}\n"
                      "attribution:\n  idle_watts: {cpu: 20, dram: 2, gpu: 100}\n")
    monkeypatch.setenv("NODE_NAME", NODE)
    settings = cli.parse_settings(["--path.sysfs", str(root / "sys"), "--path.procfs",
                                   str(root / "proc"), "--config.file", str(config)])
    clock = FakeClock(5000.0)
    sampler = cli.build_sampler(settings, process_metrics=False, clock=clock, timer=clock,
                                nvml_module=nvml)
    sampler.start()
    return sampler, clock


def assert_gpu_conserved(series: Series) -> None:
    node = value(series, "footprint_node_energy_joules_total", component="gpu", source="nvml")
    gpus = total(series, "footprint_gpu_energy_joules_total")
    parts = total(series, "footprint_container_energy_joules_total", component="gpu")
    parts += total(series, "footprint_unattributed_energy_joules_total", component="gpu")
    assert math.isclose(parts, node, rel_tol=1e-9)
    assert math.isclose(gpus, node, rel_tol=1e-9)
