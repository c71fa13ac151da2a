"""Pods, models and attribution against the fake API server (real `kubernetes` client) and
fixture cgroups: in-process with a fake clock where exact figures are checked, and as a real
process for the live invariant."""

from __future__ import annotations

import gc
import math
import shutil
import subprocess
import time
import tracemalloc
from pathlib import Path

import pytest

from exporter.sampler import Sampler
from tests.fakes.kube_api import FakeKubeAPI
from tests.support import (
    Exporter,
    Series,
    advance,
    parse,
    require_binary,
    total,
    value,
)
from tests.support.kube import (
    NODE,
    add_busy,
    add_cpu,
    api,
    cid,
    cpu_stat,
    drive,
    energy_series,
    four_pods,
    in_process,
    node_with_cgroups,
    pod,
    pods_seen,
    tick_increments,
    wait_for,
)

__all__ = ["api"]  # the fixture, from tests/support/kube.py

CHURN_CYCLES = 10_000
OUTAGE_SECONDS = 5.0
"""A real API outage: the watcher backs off on the wall clock, at most 1 s here
(in_process's backoff_max_seconds), so a few seconds see it fail and retry several times."""


def metrics(sampler: Sampler) -> Series:
    return parse(sampler.tick().text.decode())


def test_models_phases_and_shares(tmp_path: Path, api: FakeKubeAPI,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for p in four_pods():
        api.add_pod(p)
    api.add_pod({**pod("elsewhere", cid("a")), "spec": {"nodeName": "node-b", "containers": []}})
    root, sampler, clock = in_process(tmp_path, api, monkeypatch)
    sampler.start()
    try:
        wait_for(lambda: len(pods_seen(sampler)) == 4, "the four pods of node-a")
        metrics(sampler)  # baselines
        drive(root, clock, cpu_j=100.0, busy=10.0,
              usage={cid("1"): 4.0, cid("2"): 2.0, cid("4"): 1.0, cid("3"): 1.0})
        series = metrics(sampler)
    finally:
        sampler.close()

    def info(pod_name: str) -> dict[str, str]:
        (labels,) = [dict(ls) for (n, ls) in series
                     if n == "footprint_container_info" and dict(ls)["pod"] == pod_name]
        return {k: labels[k] for k in ("model", "phase", "model_source", "owner_kind",
                                       "owner_name")}

    assert info("llama-7c9f8d6b5-x2x4z") == {
        "model": "meta-llama/Llama-3.1-8B-Instruct", "phase": "inference",
        "model_source": "vllm", "owner_kind": "Deployment", "owner_name": "llama"}
    assert info("sentiment-predictor-00001-deployment-6f7d9c8b4-qwert") == {
        "model": "sentiment", "phase": "inference", "model_source": "kserve",
        "owner_kind": "", "owner_name": ""}
    assert info("bert-finetune-worker-0") == {
        "model": "bert-finetune", "phase": "training", "model_source": "kubeflow-training",
        "owner_kind": "", "owner_name": ""}
    assert info("web-5f8b7c6d9d-abcde") == {
        "model": "web", "phase": "other", "model_source": "owner",
        "owner_kind": "Deployment", "owner_name": "web"}
    assert not any(dict(ls).get("pod") == "elsewhere" for _, ls in series)

    # cpu: 100 J, idle baseline 20 W -> 20 J idle, 80 J dynamic; 10 busy CPU-seconds
    # the node is in GCP europe-west4: its zone and static intensity come from the zone map
    (grid_labels,) = [dict(ls) for (n, ls) in series
                      if n == "footprint_grid_intensity_grams_per_kwh"]
    assert (grid_labels["grid_zone"], grid_labels["provider"]) == ("NL", "static")
    grid = value(series, "footprint_grid_intensity_grams_per_kwh")
    assert grid != 475.0
    expected = {  # pod: (dynamic by CPU time, idle by requests of 16 allocatable cores)
        "llama-7c9f8d6b5-x2x4z": (80 * 4 / 10, 20 * 4 / 16),
        "sentiment-predictor-00001-deployment-6f7d9c8b4-qwert": (80 * 2 / 10, 20 * 2 / 16),
        "bert-finetune-worker-0": (80 * 1 / 10, 20 * 1 / 16),
        "web-5f8b7c6d9d-abcde": (80 * 1 / 10, 20 * 1 / 16),
    }
    for name, (dynamic, idle) in expected.items():
        got_dynamic = value(series, "footprint_container_energy_joules_total", pod=name,
                            component="cpu", mode="dynamic")
        got_idle = value(series, "footprint_container_energy_joules_total", pod=name,
                         component="cpu", mode="idle")
        assert math.isclose(got_dynamic, dynamic, rel_tol=1e-9), name
        assert math.isclose(got_idle, idle, rel_tol=1e-9), name
        grams = value(series, "footprint_container_co2e_grams_total", pod=name,
                      component="cpu", mode="dynamic")
        assert math.isclose(grams, dynamic / 3.6e6 * grid, rel_tol=1e-9)
    assert value(series, "footprint_unattributed_energy_joules_total", component="cpu",
                 mode="dynamic") == pytest.approx(80 * 2 / 10)  # system processes
    assert value(series, "footprint_unattributed_energy_joules_total", component="cpu",
                 mode="idle") == pytest.approx(20 * 8 / 16)  # unrequested cores
    assert value(series, "footprint_container_allocation_ratio",
                 pod="llama-7c9f8d6b5-x2x4z", resource="cpu") == 0.25
    assert value(series, "footprint_node_info", topology_zone="europe-west4-a",
                 topology_region="europe-west4", instance_type="a2-highgpu-1g") == 1.0
    assert value(series, "footprint_source_up", source="kubernetes") == 1.0
    per_container = [ls for (n, ls) in series if n.startswith("footprint_container_")
                     and dict(ls)["pod"] == "llama-7c9f8d6b5-x2x4z"]
    assert 0 < len(per_container) <= 16
    assert api.stats["list"] == 1 and api.stats["watch"] == 1


def assert_conserved(series: Series) -> None:
    for component in ("cpu", "dram"):
        node = value(series, "footprint_node_energy_joules_total", component=component)
        parts = total(series, "footprint_container_energy_joules_total", component=component)
        parts += total(series, "footprint_unattributed_energy_joules_total",
                       component=component)
        assert math.isclose(parts, node, rel_tol=1e-9, abs_tol=1e-9), component


@pytest.mark.slow(seconds=7)  # a real outage of OUTAGE_SECONDS
def test_410_gone_and_an_outage_lose_nothing(
        tmp_path: Path, api: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    pods = four_pods()
    for p in pods[:3]:
        api.add_pod(p)
    root, sampler, clock = in_process(tmp_path, api, monkeypatch)
    sampler.start()
    usage = {cid("1"): 2.0, cid("2"): 1.0, cid("4"): 1.0, cid("3"): 1.0}
    driven = 0.0
    try:
        wait_for(lambda: len(pods_seen(sampler)) == 3, "three pods")
        metrics(sampler)
        # 410 Gone: the watch is expired mid-stream; one re-list brings the map back.
        api.add_pod(pods[3])
        api.compact()
        wait_for(lambda: api.stats["list"] == 2 and len(pods_seen(sampler)) == 4, "re-list")
        # An outage: pods change meanwhile and the history is compacted.
        api.set_outage(True)
        lists_before = api.stats["list"]
        outage_started = time.monotonic()
        wait_for(lambda: not sampler._kubernetes.pods.view().up,  # type: ignore[union-attr]
                 "the watcher to notice")
        api.delete_pod("ml", "web-5f8b7c6d9d-abcde")
        series = {}
        while time.monotonic() - outage_started < OUTAGE_SECONDS:
            drive(root, clock, cpu_j=50.0, busy=6.0, usage=usage)
            driven += 50.0
            series = metrics(sampler)
            assert value(series, "footprint_source_up", source="kubernetes") == 0.0
            time.sleep(0.5)
        assert pods_seen(sampler) == {p["metadata"]["name"] for p in pods}  # last known map
        assert api.stats["outage_responses"] >= 3, "the watcher retried through the outage"
        api.compact()
        api.set_outage(False)
        wait_for(lambda: sampler._kubernetes.pods.view().up,  # type: ignore[union-attr]
                 "recovery")
        wait_for(lambda: pods_seen(sampler) == {p["metadata"]["name"] for p in pods[:3]},
                 "the deleted pod to be gone")
        assert api.stats["list"] == lists_before + 1, "one re-list after the outage"
        drive(root, clock, cpu_j=50.0, busy=6.0, usage=usage)
        driven += 50.0
        series = metrics(sampler)
    finally:
        sampler.close()
    assert value(series, "footprint_node_energy_joules_total", component="cpu") == (
        pytest.approx(driven, abs=1e-6))
    assert_conserved(series)
    assert value(series, "footprint_exporter_errors_total", source="kubernetes",
                 reason="api") >= 1
    assert value(series, "footprint_source_up", source="kubernetes") == 1.0


@pytest.mark.slow(seconds=75)  # a soak: 10,000 pods through one watch
def test_churn_returns_to_baseline_with_one_list_and_one_watch(
        tmp_path: Path, api: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    for p in four_pods():
        api.add_pod(p)
    root, sampler, clock = in_process(tmp_path, api, monkeypatch, grace_seconds=2)
    # a pool of 50 extra container cgroups the churning pods take turns to use
    base = cpu_stat(root, cid("4")).parent
    pool = [f"{i:064x}" for i in range(1, 51)]
    for container_id in pool:
        shutil.copytree(base, base.parent / container_id)
    sampler.start()
    try:
        wait_for(lambda: len(pods_seen(sampler)) == 4, "the steady pods")
        usage = {cid("1"): 0.5, cid("2"): 0.5, cid("4"): 0.5, cid("3"): 0.5}
        for _ in range(3):
            drive(root, clock, cpu_j=50.0, busy=3.0, usage=usage)
            metrics(sampler)
        baseline_series = sampler.ledger.series_count()
        peak_series: list[int] = []

        def conserved_tick(sampler: Sampler) -> None:
            """Each tick's increments add up, though retired series leave the totals."""
            before = energy_series(sampler)
            sampler.tick()
            increments = tick_increments(before, energy_series(sampler))
            peak_series.append(sampler.ledger.series_count())
            for component in ("cpu", "dram"):
                assert math.isclose(increments[("parts", component)],
                                    increments[("node", component)],
                                    rel_tol=1e-9, abs_tol=1e-9), component

        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        cycles, batch = CHURN_CYCLES, 50
        for start in range(0, cycles, batch):
            names = [f"churn-{i}" for i in range(start, start + batch)]
            for name, container_id in zip(names, pool, strict=True):
                api.add_pod(pod(name, container_id, namespace="churn",
                                labels={"footprint.dev/model": f"m{int(name[6:]) % 7}"}))
            wait_for(lambda: len(pods_seen(sampler)) == 4 + batch, "churn pods added")
            for _ in range(2):  # the first tick is each new container's CPU baseline
                drive(root, clock, cpu_j=50.0, busy=3.0,
                      usage={**usage, **dict.fromkeys(pool, 0.01)})
                conserved_tick(sampler)
            for name in names:
                api.delete_pod("churn", name)
            wait_for(lambda: len(pods_seen(sampler)) == 4, "churn pods deleted")
            drive(root, clock, cpu_j=50.0, busy=3.0, usage=usage)
            conserved_tick(sampler)
        peak = max(peak_series)
        clock.now += 10.0  # past the grace period
        series = metrics(sampler)
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
    finally:
        sampler.close()
    # each churning container had energy and CO2e for cpu and dram x 2 modes, info, ratio
    assert peak >= baseline_series + 50 * 10, "the churning containers did get series"
    assert sampler.ledger.series_count() == baseline_series
    assert not any(dict(ls).get("namespace") == "churn" for _, ls in series)
    exporter_code = [tracemalloc.Filter(True, "*/exporter/*")]
    grown = sum(stat.size_diff for stat in after.filter_traces(exporter_code).compare_to(
        before.filter_traces(exporter_code), "filename"))
    assert grown < 256 * 1024, f"exporter memory grew by {grown} bytes over the churn"
    assert api.stats["list"] == 1 and api.stats["watch"] == 1


@pytest.mark.slow(seconds=4)  # the real process
def test_live_process_conserves_energy_per_component(tmp_path: Path,
                                                     api: FakeKubeAPI) -> None:
    for p in four_pods():
        api.add_pod(p)
    root = node_with_cgroups(tmp_path)
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    with Exporter(["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
                   "--collector.interval", "0.1"],
                  env={"KUBECONFIG": str(kubeconfig), "NODE_NAME": NODE}) as exp:
        exp.wait_ticks(2)
        for _ in range(6):
            advance(root, "intel-rapl:0", 30_000_000)
            advance(root, "intel-rapl:0:2", 3_000_000)
            advance(root, "intel-rapl:2", 40_000_000)
            for digit, seconds in (("1", 0.4), ("2", 0.2), ("4", 0.1), ("3", 0.1)):
                add_cpu(root, cid(digit), seconds)
            add_busy(root, 1.0)
            series = exp.wait_ticks(2)
        assert exp.stop() == 0
    assert_conserved(series)
    assert total(series, "footprint_container_energy_joules_total", component="cpu") > 0
    models = {dict(ls)["model"] for (n, ls) in series if n == "footprint_container_info"}
    assert models == {"meta-llama/Llama-3.1-8B-Instruct", "sentiment", "bert-finetune", "web"}
    assert any("source kubernetes: on" in line for line in exp.lines)


def test_bad_pods_are_counted_once_and_never_crash(tmp_path: Path, api: FakeKubeAPI,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    hostile = 'evil"model\nwith\\newline' + "x" * 10_000
    api.add_pod(pod("hostile", cid("1"), labels={"footprint.dev/model": hostile}))
    pending = pod("pending", cid("2"))
    pending["status"] = {"phase": "Pending"}
    api.add_pod(pending)
    api.add_pod(pod("no-cgroup", cid("9")))
    rkt = pod("rkt", cid("3"))
    rkt["status"]["containerStatuses"][0]["containerID"] = "rkt://" + cid("3")
    api.add_pod(rkt)
    broken = pod("broken", cid("4"))
    broken["status"]["containerStatuses"] = ["not-a-status"]
    api.add_pod(broken)
    root, sampler, clock = in_process(tmp_path, api, monkeypatch)
    sampler.start()
    try:
        wait_for(lambda: len(pods_seen(sampler)) == 5, "the bad pods")
        for _ in range(4):
            drive(root, clock, cpu_j=50.0, busy=4.0, usage={cid(d): 1.0 for d in "1234"})
            snapshot = sampler.tick()
    finally:
        sampler.close()
    series = parse(snapshot.text.decode())
    for source, reason in (("cgroups", "no_cgroup"), ("kubernetes", "unknown_runtime"),
                           ("kubernetes", "malformed_pod")):
        assert value(series, "footprint_exporter_errors_total", source=source,
                     reason=reason) == 1.0, reason  # once, not once per tick
    (model,) = {dict(ls)["model"] for (n, ls) in series if n == "footprint_container_info"}
    assert model == hostile[:256].strip() and len(model) == 256
    # only the hostile pod's container is attributed; the rest stays with unattributed
    assert {dict(ls)["pod"] for (n, ls) in series
            if n == "footprint_container_energy_joules_total"} == {"hostile"}
    assert_conserved(series)
    promtool = require_binary("promtool")
    check = subprocess.run([promtool, "check", "metrics"], input=snapshot.text,
                           capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
