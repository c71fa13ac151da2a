"""What the exporter's imports cost in RSS: the measured per-package floor.

Each case runs in a fresh interpreter (`sys.executable -c ...`, this virtualenv, the locked
packages) that imports its modules, runs `gc.collect()`, and reports its own VmRSS from
/proc/self/status; each case runs `--runs` times (3) and the median is kept. The cases:

- ``python``: `pass`, the interpreter alone;
- one per third-party package the exporter imports, alone, as the exporter imports it:
  ``prometheus_client`` (with its OpenMetrics exposition), ``yaml``, ``pynvml``, ``aiohttp``
  (with `aiohttp.web`, the server), ``grpc`` (with protobuf's runtime, as
  exporter/kube/podresources.py and its generated modules load them), ``kubernetes``
  (`kubernetes.client` and `kubernetes.config`, all exporter/kube/client.py imports; the
  package's `__init__` loads its watch, stream, dynamic and utils modules too);
- ``third_party``: all of those at once (shared dependencies, asyncio and ssl above all, are
  counted once there, so it is less than the sum), and ``third_party-<package>``: all but one,
  so that ``marginal_mb`` (``third_party`` over ``third_party-<package>``) is what dropping that
  one package would save;
- ``ssl`` and ``asyncio`` (which imports ssl): the standard library's heavy shared modules, for
  reference;
- ``exporter_cli``: `import exporter.cli`, what every start pays (kubernetes, grpc and pynvml are
  imported later, only when used);
- ``exporter_cluster``: exporter.cli and every module a start inside a cluster with GPUs and the
  pod-resources socket imports (kubernetes, grpc, pynvml included);
- ``exporter_started``: exporter.cli, then `cli.build_sampler` and one tick on the
  ``tests/fixtures/intel-2s`` tree outside a cluster (RAPL and the estimate only, no NVML).

``per_package_mb`` is each package's VmRSS over ``python``'s; ``sum_of_packages_mb`` their sum;
``exporter_own_mb`` is ``exporter_cluster`` over ``third_party``: the project's own modules and
the standard library modules only it imports. Run from the repository root::

    .venv/bin/python bench/import_cost.py
    .venv/bin/python bench/import_cost.py --runs 5

Prints exactly one JSON line to stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PACKAGES = {
    "prometheus_client": "import prometheus_client, prometheus_client.openmetrics.exposition",
    "yaml": "import yaml",
    "pynvml": "import pynvml",
    "aiohttp": "import aiohttp, aiohttp.web",
    "grpc": "import grpc, google.protobuf.descriptor_pool, google.protobuf.internal.builder",
    "kubernetes": "import kubernetes.client, kubernetes.config",
}
CLUSTER = ("import exporter.cli, exporter.kube.client, exporter.kube.pods, exporter.kube.slices,"
           " exporter.kube.podresources, exporter.workloads, exporter.usage.cgroups,"
           " exporter.intensity.live, exporter.sources.nvml, exporter.podlabels;"
           " import kubernetes.client, kubernetes.config, pynvml")
STARTED = f"""
import os
from exporter import cli
fixtures = {str(REPO / "tests" / "fixtures")!r}
settings = cli.parse_settings(["--path.sysfs", fixtures + "/intel-2s/sys",
                               "--path.procfs", fixtures + "/proc", "--no-collector.nvml"])
sampler = cli.build_sampler(settings)
sampler.tick().text
"""
REPORT = """
import gc
gc.collect()
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        print(int(line.split()[1]))
"""


def cases() -> dict[str, str]:
    out = {"python": "pass", "ssl": "import ssl", "asyncio": "import asyncio", **PACKAGES}
    out["third_party"] = "; ".join(PACKAGES.values())
    for name in PACKAGES:
        out[f"third_party-{name}"] = "; ".join(v for k, v in PACKAGES.items() if k != name)
    out["exporter_cli"] = "import exporter.cli"
    out["exporter_cluster"] = CLUSTER
    out["exporter_started"] = STARTED
    return out


def rss_kb(code: str) -> int:
    result = subprocess.run([sys.executable, "-c", f"{code}\n{REPORT}"], cwd=REPO,
                            capture_output=True, text=True, check=False,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                                 "NODE_NAME": "bench"})
    if result.returncode != 0:
        raise RuntimeError(f"{code!r} failed: {result.stderr.strip()[-2000:]}")
    return int(result.stdout.split()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="runs of each case (median kept)")
    args = parser.parse_args(argv)
    mb: dict[str, float] = {}
    for name, code in cases().items():
        runs = [rss_kb(code) for _ in range(args.runs)]
        mb[name] = round(statistics.median(runs) / 1024, 1)
        print(f"[import_cost] {name}: {mb[name]} MB ({runs} kB)", file=sys.stderr, flush=True)
    base = mb["python"]
    per_package = {name: round(mb[name] - base, 1) for name in PACKAGES}
    result = {
        "benchmark": "import_cost", "runs": args.runs, "python": sys.version.split()[0],
        "rss_mb": mb, "per_package_mb": per_package,
        "sum_of_packages_mb": round(sum(per_package.values()), 1),
        "third_party_together_mb": round(mb["third_party"] - base, 1),
        "marginal_mb": {name: round(mb["third_party"] - mb[f"third_party-{name}"], 1)
                        for name in PACKAGES},
        "stdlib_mb": {name: round(mb[name] - base, 1) for name in ("ssl", "asyncio")},
        "exporter_own_mb": round(mb["exporter_cluster"] - mb["third_party"], 1),
    }
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
