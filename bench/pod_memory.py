"""The exporter's memory against the pods of its node: peak and final RSS of the real process
watching the fake API server (tests/fakes/kube_api.py) with N pods, ordinary or near etcd's
1.5 MiB object limit (1,000 one-KB args and 250 KB of annotations each).

    .venv/bin/python bench/pod_memory.py [--pods 0 110 1000] [--big-pods 110]

Prints one JSON line per case: pods, kind, peak_rss_mb (VmHWM), rss_mb (VmRSS after five ticks),
list requests and continue requests (a paged list counts once in `lists`).
docs/performance.md#pods records the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fakes.kube_api import FakeKubeAPI  # noqa: E402
from tests.support import Exporter, node_tree  # noqa: E402
from tests.support.kube import NODE, big_pod, cid, pod  # noqa: E402


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def measure(pods: int, big: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp, FakeKubeAPI(node_name=NODE) as api:
        where = Path(tmp)
        for i in range(pods):
            api.add_pod(big_pod(i) if big else pod(f"p-{i:04d}", cid("1")[:-4] + f"{i:04d}"))
        root = node_tree(where, None)
        config = where / "footprint.yaml"
        config.write_text(f"kubernetes:\n  kubeconfig: {api.write_kubeconfig(where / 'kc')}\n")
        with Exporter(["--path.sysfs", str(root / "sys"), "--config.file", str(config),
                       "--collector.interval", "0.2"], env={"NODE_NAME": NODE}) as exp:
            deadline = time.monotonic() + 120
            while api.stats["watch"] < 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("the exporter never listed the pods")
                time.sleep(0.1)
            exp.wait_ticks(5, timeout=60)
            result = {"pods": pods, "kind": "big" if big else "ordinary",
                      "peak_rss_mb": round(status_kb(exp.proc.pid, "VmHWM") / 1024, 1),
                      "rss_mb": round(status_kb(exp.proc.pid, "VmRSS") / 1024, 1),
                      "lists": api.stats["list"], "continues": api.stats["continue"]}
            exp.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, nargs="*", default=[0, 110, 1000])
    parser.add_argument("--big-pods", type=int, nargs="*", default=[110])
    args = parser.parse_args()
    for count in args.pods:
        print(json.dumps(measure(count, big=False)), flush=True)
    for count in args.big_pods:
        print(json.dumps(measure(count, big=True)), flush=True)


if __name__ == "__main__":
    main()
