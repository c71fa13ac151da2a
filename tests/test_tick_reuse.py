"""What a tick reuses while no pod changed (the same tuple of pods, of containers), and that
each change a tick must see still gets through: a changed pod, a vanished cgroup, an expired
container published again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from exporter.kube.pods import PodView
from exporter.ledger import Ledger
from exporter.metrics import CONTAINER_ALLOCATION, CONTAINER_INFO, Publisher
from exporter.usage.cgroups import CgroupReader
from exporter.workloads import WorkloadSample, WorkloadTracker
from tests.support.kube import add_cpu, cid, cpu_stat, four_pods, node_with_cgroups


def versioned(pods: list[dict[str, Any]], version: int = 1) -> tuple[dict[str, Any], ...]:
    for i, p in enumerate(pods):
        p["metadata"]["uid"] = f"uid-{i}"
        p["metadata"]["resourceVersion"] = str(version)
    return tuple(pods)


def tracker(root: Path, *, cgroupfs: bool = False) -> WorkloadTracker:
    """`cgroupfs`: read the usage files as on cgroupfs (kept open, read in the containers'
    order in C: exporter.usage.cgroups' `cpu_seconds_in_order`), as the fixture's files are
    written in place; else one by one, each checked for a rename."""
    reader = CgroupReader(root / "sys")
    reader.check_links = not cgroupfs
    return WorkloadTracker(procfs=root / "proc", cgroups=reader, rules=())


def used(sample: WorkloadSample) -> dict[str, float]:
    """CPU seconds each container used, by container id."""
    return dict(zip((c.container_id for c in sample.usage.keys), sample.usage.cpu_seconds,
                    strict=True))


@pytest.mark.parametrize("cgroupfs", [False, True])
def test_the_same_pods_give_the_same_containers_and_fresh_cpu_time(
        tmp_path: Path, cgroupfs: bool) -> None:
    root = node_with_cgroups(tmp_path)
    t = tracker(root, cgroupfs=cgroupfs)
    view = PodView(pods=versioned(four_pods()), synced=True, up=True)
    first = t.sample(view)
    add_cpu(root, cid("1"), 0.25)
    add_cpu(root, cid("3"), 1.5)
    second = t.sample(view)
    assert second.containers is first.containers  # reused, not rebuilt
    assert used(second) == {cid("1"): 0.25, cid("2"): 0.0, cid("3"): 1.5, cid("4"): 0.0}
    assert second.usage.cpu_request_cores == [c.cpu_request_cores for c in second.containers]
    ids = tuple(c.container_id for c in first.containers)
    # on cgroupfs every file is now kept: the next ticks read them in order, in C
    assert (t._cgroups.cpu_seconds_in_order(ids) is not None) is cgroupfs
    add_cpu(root, cid("2"), 0.5)
    third = t.sample(view)
    assert third.containers is first.containers
    assert used(third) == {cid("1"): 0.0, cid("2"): 0.5, cid("3"): 0.0, cid("4"): 0.0}
    add_cpu(root, cid("4"), -1.0)  # a counter that went back: nothing used, a new baseline
    add_cpu(root, cid("1"), 2.0)
    assert used(t.sample(view)) == {cid("1"): 2.0, cid("2"): 0.0, cid("3"): 0.0, cid("4"): 0.0}
    add_cpu(root, cid("4"), 0.75)
    assert used(t.sample(view))[cid("4")] == 0.75


def test_a_changed_pod_is_seen_at_the_next_tick(tmp_path: Path) -> None:
    root = node_with_cgroups(tmp_path)
    t = tracker(root)
    pods = four_pods()
    first = t.sample(PodView(pods=versioned(pods), synced=True, up=True))
    pods[3]["metadata"]["labels"]["app"] = "llama-2"  # a relabel: a new resourceVersion
    pods[3]["metadata"]["resourceVersion"] = "2"
    pods[3]["metadata"]["name"] = "web-renamed"
    second = t.sample(PodView(pods=tuple(pods), synced=True, up=True))
    assert second.containers is not first.containers
    assert {c.pod for c in second.containers} == {c.pod for c in first.containers} - {
        "web-5f8b7c6d9d-abcde"} | {"web-renamed"}


@pytest.mark.parametrize("cgroupfs", [False, True])
def test_a_vanished_cgroup_drops_its_container_while_the_pods_stay_the_same(
        tmp_path: Path, cgroupfs: bool) -> None:
    root = node_with_cgroups(tmp_path)
    t = tracker(root, cgroupfs=cgroupfs)
    view = PodView(pods=versioned(four_pods()), synced=True, up=True)
    first = t.sample(view)
    assert len(first.containers) == 4
    stat = cpu_stat(root, cid("2"))
    kept = stat.read_bytes()
    stat.unlink()
    t._cgroups.close()  # as the kernel does when the cgroup goes: the kept file reads ENODEV
    second = t.sample(view)
    assert [c.container_id for c in second.containers] == [
        c.container_id for c in first.containers if c.container_id != cid("2")]
    assert [p.reason for p in second.problems] == ["no_cgroup"]
    assert cid("2") not in used(second)
    stat.write_bytes(kept)
    add_cpu(root, cid("2"), 1.0)
    third = t.sample(view)
    assert third.containers is first.containers  # all of them again: the same tuple
    assert used(third)[cid("2")] == 0.0, "back after a tick unread: a new baseline"
    add_cpu(root, cid("2"), 1.0)
    assert used(t.sample(view))[cid("2")] == 1.0


def test_a_container_expired_then_published_again_gets_its_series_back(
        tmp_path: Path) -> None:
    root = node_with_cgroups(tmp_path)
    containers = tracker(root).sample(
        PodView(pods=versioned(four_pods()), synced=True, up=True)).containers
    publisher = Publisher(Ledger())
    publisher.containers(containers, 8.0)
    info = publisher.ledger.gauges[CONTAINER_INFO.name]
    assert len(info) == 4
    publisher.expire([containers[0].key])
    assert len(info) == 3
    publisher.containers(containers, 8.0)  # the very same tuple: must not be skipped now
    assert len(info) == 4
    ratios = publisher.ledger.gauges[CONTAINER_ALLOCATION.name]
    assert sorted(ratios.values()) == sorted(
        min(c.cpu_request_cores / 8.0, 1.0) for c in containers)
    publisher.containers(containers, 16.0)  # the same tuple, other allocatable cores
    assert sorted(ratios.values()) == sorted(
        min(c.cpu_request_cores / 16.0, 1.0) for c in containers)
