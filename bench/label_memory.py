"""What pod labels on footprint_container_info cost the exporter's memory: 10,000 containers,
each in its own pod with its own `team` value (10,000 distinct values), ticked and rendered
with `kubernetes.pod_label_allowlist: [team]` and without (issue 22: "10,000 distinct label
values cost the exporter less than 20 MB").

    .venv/bin/python bench/label_memory.py [--containers 10000] [--value-bytes 63]

Each case runs in fresh child processes, the same pods in both: the real pipeline from the pod
watch's `slim_pod` (what exporter.kube.pods keeps of each pod) through `WorkloadTracker`,
`Sampler.assemble`'s reader, accounting, publisher and renderer, with the watch's view and the
cgroup reads stubbed (a PodView of the slim pods; every container's CPU time found), three
ticks, and one scrape's text, OpenMetrics and gzipped bodies, everything held as the exporter
holds it between ticks. Measured after `gc.collect()`: `traced_mb`, the Python heap allocated
since the pods arrived and still live (tracemalloc; `traced_peak_mb` its high-water mark), and
`rss_mb`, VmRSS growth over the same span in a second child without tracemalloc. `delta` is
the allow-list case minus the other: what the labels cost. Values are `--value-bytes` long
(63: the longest Kubernetes accepts, so the worst real case; 128 is the exporter's cap, which
only a hostile server reaches).

Prints one JSON line; docs/chargeback.md records the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GOAL_MB = 20.0


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class _Cgroups:
    """Every container's cgroup found, its CPU time growing a second per read."""

    def __init__(self) -> None:
        self.reads = 0

    def describe(self) -> str:
        return "stub cgroups"

    def cpu_seconds(self, container_ids: Any) -> dict[str, float]:
        self.reads += 1
        return dict.fromkeys(container_ids, float(self.reads))


class _Pods:
    """The pod watch's view, as `PodWatcher.view()` gives it."""

    def __init__(self, view: Any) -> None:
        self._view = view

    def view(self) -> Any:
        return self._view

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 5.0) -> None:
        pass


def child(containers: int, value_bytes: int, allow: bool, trace: bool) -> dict[str, Any]:
    from exporter import cli
    from exporter.config import AttributionSettings, CarbonSettings, ModelSettings
    from exporter.kube.pods import PodView, slim_pod
    from exporter.podlabels import PodLabelAllowlist
    from exporter.reading import Kubernetes
    from exporter.sampler import Sampler
    from exporter.workloads import WorkloadTracker
    from tests.support.kube import pod

    rules = ModelSettings().effective_rules
    labels = PodLabelAllowlist(["team"] if allow else [])

    def raw(i: int) -> dict[str, Any]:
        team = f"team-{i:05d}-".ljust(value_bytes, "x")[:value_bytes]
        return pod(f"svc-{i:05d}-7c9f8d6b5-{i:05x}", f"{i:064x}", namespace="apps",
                   labels={"app": f"svc-{i:05d}", "pod-template-hash": "7c9f8d6b5",
                           "team": team}, owner=("ReplicaSet", f"svc-{i:05d}-7c9f8d6b5"))

    with tempfile.TemporaryDirectory() as tmp:
        procfs = Path(tmp)  # no /proc/stat: node CPU time unknown, as the tick allows
        gc.collect()
        rss_before = rss_kb()
        if trace:
            tracemalloc.start()
        started = time.perf_counter()
        slim = []
        for i in range(containers):  # as the watch keeps them: the raw pod is dropped
            obj = raw(i)
            obj["metadata"] |= {"uid": f"uid-{i:05d}", "resourceVersion": "1"}
            slim.append(slim_pod(obj, rules, labels=labels))
        tracker = WorkloadTracker(procfs=procfs, cgroups=_Cgroups(),  # type: ignore[arg-type]
                                  rules=rules, labels=labels)
        view = PodView(pods=tuple(slim), up=True, synced=True)
        del slim
        sampler = Sampler.assemble(
            sources=[], intensity=cli.build_intensity(CarbonSettings()),
            attribution=AttributionSettings(), node="node-a", cpu_model="bench",
            kubernetes=Kubernetes(pods=_Pods(view), tracker=tracker, grace_seconds=120.0),
            process_metrics=False)
        for _ in range(3):
            snapshot = sampler.tick()
        bodies = [snapshot.text, snapshot.openmetrics,
                  snapshot.body(openmetrics=False, gzipped=True)]
        seconds = time.perf_counter() - started
        gc.collect()
        traced, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss_after = rss_kb()
        measured = ({"traced_mb": round(traced / 2**20, 2),
                     "traced_peak_mb": round(peak / 2**20, 2)} if trace else
                    {"rss_mb": round((rss_after - rss_before) / 1024, 2)})
        info = sum(1 for line in bodies[0].split(b"\n")
                   if line.startswith(b"footprint_container_info{"))
        labelled = bodies[0].count(b"label_team=")
        return {"allowlist": ["team"] if allow else [], "containers": containers,
                "info_series": info, "labelled_series": labelled,
                "text_bytes": len(bodies[0]), **measured, "seconds": round(seconds, 1)}


def run_child(containers: int, value_bytes: int, allow: bool) -> dict[str, Any]:
    """One case, twice: with tracemalloc (the heap) and without it (RSS: tracemalloc's own
    bookkeeping, a traceback per live allocation, would count as the exporter's)."""
    result: dict[str, Any] = {}
    for trace in (False, True):
        command = [sys.executable, __file__, "--child", "allow" if allow else "none",
                   "--containers", str(containers), "--value-bytes", str(value_bytes),
                   *(["--trace"] if trace else [])]
        out = subprocess.run(command, capture_output=True, text=True, check=True,
                             timeout=1800)
        result |= json.loads(out.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=10_000)
    parser.add_argument("--value-bytes", type=int, default=63)
    parser.add_argument("--child", choices=("none", "allow"), help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.containers, args.value_bytes, args.child == "allow",
                               args.trace)))
        return
    print(f"label_memory: {args.containers} containers, values of {args.value_bytes} bytes",
          file=sys.stderr)
    none = run_child(args.containers, args.value_bytes, allow=False)
    print(f"label_memory: without the allow-list: {none}", file=sys.stderr)
    allow = run_child(args.containers, args.value_bytes, allow=True)
    print(f"label_memory: with [team]: {allow}", file=sys.stderr)
    delta = {key: round(allow[key] - none[key], 2)
             for key in ("traced_mb", "traced_peak_mb", "rss_mb", "text_bytes")}
    worst = max(delta["traced_mb"], delta["rss_mb"])
    print(json.dumps({"benchmark": "label_memory", "containers": args.containers,
                      "distinct_values": allow["labelled_series"],
                      "value_bytes": args.value_bytes, "without": none, "with": allow,
                      "delta": delta, "goal": {"delta_mb_max": GOAL_MB},
                      "goal_met": worst < GOAL_MB}))


if __name__ == "__main__":
    main()
