"""The rule pack at fleet scale: what each recording rule and alert costs at the day's end, at
several fleet sizes in one run, and how that cost grows with the fleet.

Goals (issue 23): no rule reads more than 2 M samples per 1,000 containers; the pack's cost
per 1,000 containers at the largest size within 1.25x of the smallest's; the pack extrapolated
linearly from the largest size to 50,000 containers under 10 s per evaluation.

A synthetic fleet of nodes x C containers is written as OpenMetrics with the exporter's real
metric names and labels (exporter/metrics.py, tests/golden/metrics.prom), 24 h at a 30 s
scrape: per container its energy and CO2e counters (cpu dynamic and idle; gpu dynamic for GPU
containers), its cpu (and gpu) allocation ratio and its info series (with the chargeback label
`label_team` of a few teams, some pods without one); per node the component energy and CO2e
counters, the unattributed counters, footprint_pue, footprint_wue_liters_per_kwh,
footprint_grid_water_intensity_liters_per_kwh, footprint_embodied_grams (server and GPUs),
footprint_embodied_lifetime_seconds, footprint_source_up, the grid intensity, and the
chargeback series (footprint_chargeback_*: the containers' counters and ratios summed per
team, as exporter.chargeback publishes them) and the workload sums (footprint_workload_*: the
same per namespace, model and phase); for the serving
pods vLLM's `vllm:generation_tokens_total` and `vllm:request_success_total` with namespace/pod
labels. One node in four is a GPU node.

The fleet is made in chunks of at most 1,000 containers (whole nodes): a size is its first
chunks, so the 2,000-container fleet is the 1,000 one plus 1,000 more containers on other
nodes, and each chunk is written and backfilled once (--cache keeps its blocks for later runs).
A chunk's text is streamed (family by family, each series' samples in time order, O(series)
memory) one block-aligned 6 h window at a time, each window backfilled with `promtool tsdb
create-blocks-from openmetrics` (two promtools at a time, while the next window is written)
and its file deleted. Per size, the chunks' blocks are hard-linked into a fresh data directory
and served by Debian's prometheus; the recording rules of the 5-minute, chargeback and
inference groups are backfilled (tests/backfill.py, in dependency order) at the cadence their
readers need: evaluated every 5 minutes on the grid over the day (what the daily rules'
`[1d:5m]` subqueries read) and every minute over the last 65 minutes (what the instant and
`[1h]` readers see at the day's end); a record that some rule reads over a range is written
every minute over the day too, each evaluation held back to the one before, so that a subquery
decodes as many samples as on a live server at a 1-minute interval (and reads exact values on
its grid); the daily groups over the last 15 minutes. Once the server's
first compaction has merged the records' blocks into the raw ones (the timing would time the
compaction too, on 2 cores), every recording rule and alert expression of the pack is
evaluated at the day's end (off the 5-minute grid): one warm-up pass over the whole pack, then
--runs passes, each rule once per pass in the pack's order, as the rule manager runs it; a
rule's time is its median over the passes, in milliseconds of the engine
(`stats.timings.evalTotalTime` of `stats=all`: preparation, evaluation and sorting, what the
rule manager runs for a rule, not the JSON the API adds; `api_ms` is the wall clock of the
whole API call), with the samples it read (`stats.samples.totalQueryableSamples`) and the
series out. Each pass also times the floor: one scan of every raw container counter over 5
minutes, `sum(rate({__name__=~"footprint_container_(co2e_grams|energy_joules)_total"}[5m]))`,
which no pack that records per container rates can beat.

Several --rules files (candidate packs) are timed on the same servers, their passes
interleaved, so that the machine's load weighs on each alike: the records of all of them are
backfilled, the first file's where two record the same name and labels (so candidates should
agree on what a shared record means).

    .venv/bin/python bench/rules_fleet.py                              # 1,000, 2,000, 4,000
    .venv/bin/python bench/rules_fleet.py --sizes 1000,2000 --runs 3
    .venv/bin/python bench/rules_fleet.py --sizes 1000 --rules rules/footprint.rules.yaml \\
        --rules /tmp/candidate.yaml --cache /tmp/fleet-cache         # compare a candidate

Prints exactly one JSON line to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.backfill import (  # noqa: E402
    BlockPrometheus,
    Span,
    backfill_openmetrics,
    backfill_rule_spans,
    dir_bytes,
)

RULES = ROOT / "rules" / "footprint.rules.yaml"
T0 = 1_699_999_200  # on the 5-minute grid (and the hour)
DAY = 86400
SCRAPE = 30
END = T0 + DAY + 2 * 60 + 30  # the day's end, off the 5-minute grid
BLOCK = 6 * 3600
"""The raw data's block length: promtool maps its whole input file, so the day is written and
backfilled one block-aligned 6 h window at a time (about 1.2 GB of text each per 1,000
containers), not as one 4.7 GB file; Prometheus compacts the blocks before the timing
starts."""
CHUNK = 1000
"""At most this many containers per chunk of the fleet (whole nodes)."""
LAST_HOUR = 65 * 60
"""The records are backfilled every minute over this span before END, every 5 minutes
before."""
TARGET = 50_000
GOALS = {"max_rule_samples_per_1k": 2_000_000, "pack_growth_max": 1.25,
         "pack_extrapolated_50k_ms_max": 10_000}
FLOOR = ("sum(rate(footprint_container_co2e_grams_total[5m]))"
         " + sum(rate(footprint_container_energy_joules_total[5m]))")
GENERATOR = "6"
"""Bumped when the generated fleet changes: --cache keeps blocks per generator version."""
MODELS = [("llama-3-8b", "inference", "serving", True, "llm"),
          ("mistral-7b", "training", "training", True, "research"),
          ("bge-small", "inference", "web", False, "search"),
          ("xgb-ranker", "training", "batch", False, "ranking"),
          ("", "other", "kube-system", False, "")]
"""(model, phase, namespace, holds a GPU on a GPU node, team): containers take them in turn;
kube-system's pods and every other batch pod have no team label."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


Series = tuple[str, float, bool]
"""One series of a family: its label text, and either a constant value (a gauge) or, for a
counter, its mean rate per second (the counter is that rate times PROFILE)."""


def fleet(first: int, last: int, containers: int
          ) -> tuple[dict[str, tuple[str, list[Series]]], int]:
    """Nodes first..last-1 of the fleet: their series by family, {name: (type, series)}, and
    their number of containers: labels and parameters only (O(series) memory); write_fleet
    makes the samples. A node's series depend on its index only (its own random seed), so a
    chunk is the same whichever size it is part of."""
    families: dict[str, tuple[str, list[Series]]] = {}
    n_containers = 0

    def labels(**pairs: str) -> str:
        return ",".join(f'{k}="{v}"' for k, v in pairs.items())

    def add(name: str, kind: str, text: str, value: float) -> None:
        families.setdefault(name, (kind, []))[1].append((text, value, kind == "counter"))

    for node_i in range(first, last):
        rng = random.Random(13_000_003 + node_i)
        node = f"node-{node_i:03d}"
        gpu_node = node_i % 4 == 0
        base = {"node": node, "job": "footprint-exporter", "instance": f"10.0.{node_i}.1:9102"}
        for comp in ("cpu", "dram") + (("gpu",) if gpu_node else ()):
            src = {"cpu": "rapl", "dram": "rapl", "gpu": "nvml"}[comp]
            text = labels(**base, component=comp, source=src)
            add("footprint_node_energy_joules_total", "counter", text, 200)
            add("footprint_node_co2e_grams_total", "counter", text, 200 * 400 / 3.6e6)
            for mode in ("dynamic", "idle"):
                text = labels(**base, component=comp, mode=mode)
                add("footprint_unattributed_energy_joules_total", "counter", text, 20)
                add("footprint_unattributed_co2e_grams_total", "counter", text, 20 * 400 / 3.6e6)
        add("footprint_pue", "gauge", labels(**base), 1.2)
        add("footprint_wue_liters_per_kwh", "gauge", labels(**base), 1.8)
        add("footprint_grid_water_intensity_liters_per_kwh", "gauge",
            labels(**base, grid_zone="FR", source="zone"), 3.1)
        add("footprint_embodied_lifetime_seconds", "gauge", labels(**base), 160833600.0)
        add("footprint_embodied_grams", "gauge", labels(**base, component="server", gpu=""),
            2513025.0)
        for g in range(8 if gpu_node else 0):
            add("footprint_embodied_grams", "gauge", labels(**base, component="gpu", gpu=str(g)),
                157064.0625)
        add("footprint_grid_intensity_grams_per_kwh", "gauge",
            labels(**base, grid_zone="FR", provider="static"), 400.0)
        for source in ("rapl", "kubernetes", "podresources", "intensity") + (
                ("nvml",) if gpu_node else ()):
            add("footprint_source_up", "gauge", labels(**base, source=source), 1.0)
        team_watts: dict[tuple[str, str, str], float] = {}
        team_ratio: dict[tuple[str, str], float] = {}
        work_watts: dict[tuple[str, ...], float] = {}
        work_ratio: dict[tuple[str, ...], float] = {}
        for c in range(containers):
            model, phase, namespace, gpu_model, team = MODELS[c % len(MODELS)]
            if namespace == "batch" and c // len(MODELS) % 2:
                team = ""
            gpu = gpu_node and gpu_model and c < 16
            pod = f"{(model or 'sys').split('-')[0]}-{node_i}-{c}"
            container = "vllm" if phase == "inference" and gpu_model else "main"
            workload = {**base, "namespace": namespace, "pod": pod, "container": container,
                        "model": model, "phase": phase}
            watts = rng.uniform(5, 60) + (300 if gpu else 0)
            comps = [("cpu", "dynamic", 0.7), ("cpu", "idle", 0.3)] + (
                [("gpu", "dynamic", 3.0)] if gpu else [])
            for comp, mode, share in comps:
                text = labels(**workload, component=comp, mode=mode)
                add("footprint_container_energy_joules_total", "counter", text, watts * share)
                add("footprint_container_co2e_grams_total", "counter", text,
                    watts * share * 400 / 3.6e6)
                key = (team, comp, mode)
                team_watts[key] = team_watts.get(key, 0.0) + watts * share
                work = (namespace, model, phase)
                work_watts[work] = work_watts.get(work, 0.0) + watts * share
            add("footprint_container_allocation_ratio", "gauge",
                labels(**workload, resource="cpu"), 0.01)
            if gpu:
                add("footprint_container_allocation_ratio", "gauge",
                    labels(**workload, resource="gpu"), 1 / 8)
            share_of = ("gpu", 1 / 8) if gpu else ("cpu", 0.01)
            team_ratio[(team, share_of[0])] = team_ratio.get((team, share_of[0]), 0.0) + share_of[1]
            work = (namespace, model, phase, share_of[0])
            work_ratio[work] = work_ratio.get(work, 0.0) + share_of[1]
            info = dict(base, namespace=namespace, pod=pod, container=container, model=model,
                        model_source="owner" if model else "none", phase=phase,
                        owner_kind="Deployment", owner_name=pod,
                        container_id=f"{node_i:04x}{c:08x}", uid=f"uid-{node_i}-{c}")
            if team:
                info["label_team"] = team
            add("footprint_container_info", "gauge", labels(**info), 1.0)
            if gpu and phase == "inference":
                vllm = labels(job="vllm", instance=f"10.1.{node_i}.{c}:8000",
                              namespace=namespace, pod=pod)
                add("vllm:generation_tokens_total", "counter", vllm, 500)
                add("vllm:request_success_total", "counter", vllm, 2)
            n_containers += 1
        # The exporter's workload sums (exporter.chargeback): the node's containers summed per
        # namespace, model and phase.
        for (namespace, model, phase), watts in sorted(work_watts.items()):
            text = labels(**base, namespace=namespace, model=model, phase=phase)
            add("footprint_workload_energy_joules_total", "counter", text, watts)
            add("footprint_workload_co2e_grams_total", "counter", text, watts * 400 / 3.6e6)
        for (namespace, model, phase, resource), ratio in sorted(work_ratio.items()):
            add("footprint_workload_allocation_ratio", "gauge",
                labels(**base, namespace=namespace, model=model, phase=phase,
                       resource=resource), ratio)
        # The exporter's chargeback series (exporter.chargeback): the node's containers summed
        # per value of label_team ("" without one).
        for (team, comp, mode), watts in sorted(team_watts.items()):
            text = labels(**base, label="label_team", value=team, component=comp, mode=mode)
            add("footprint_chargeback_energy_joules_total", "counter", text, watts)
            add("footprint_chargeback_co2e_grams_total", "counter", text, watts * 400 / 3.6e6)
        for (team, resource), ratio in sorted(team_ratio.items()):
            add("footprint_chargeback_allocation_ratio", "gauge",
                labels(**base, label="label_team", value=team, resource=resource), ratio)
    return families, n_containers


def day_windows() -> list[tuple[int, int]]:
    """The scrapes' indices [lo, hi) in each BLOCK-aligned window of the day (the TSDB aligns a
    block's range to multiples of its length since the epoch): one OpenMetrics file and one
    promtool block each."""
    n = (DAY + 20 * 60) // SCRAPE
    out: list[tuple[int, int]] = []
    lo = 0
    while lo < n:
        edge = (T0 + SCRAPE * lo + 7) // BLOCK * BLOCK + BLOCK
        hi = min(n, -(-(edge - T0 - 7) // SCRAPE))
        out.append((lo, hi))
        lo = hi
    return out


def write_fleet(path: Path, families: dict[str, tuple[str, list[Series]]], lo: int, hi: int
                ) -> int:
    """Writes scrapes lo..hi-1 of the fleet as OpenMetrics with timestamps, streaming: family by
    family (the format keeps a family's samples together), each series' samples in time order,
    straight to a buffered file. Memory is the label texts and one series' lines, never the
    day's samples. Returns the number of samples."""
    stamps = [str(T0 + SCRAPE * i + 7) for i in range(lo, hi)]
    # A counter is rate x PROFILE[i]: its increase over scrape i is rate x SCRAPE x (1 + 0.3
    # sin(i / 97)), a slow swing around the mean rate.
    profile = [SCRAPE * (i + 1 + 0.3 * _sin_sum(i)) for i in range(lo, hi)]
    pairs = list(zip(profile, stamps, strict=True))
    samples = 0
    with path.open("w", buffering=1 << 22) as out:
        for name, (kind, members) in families.items():
            out.write(f"# TYPE {name.removesuffix('_total') if kind == 'counter' else name} "
                      f"{kind}\n")
            for text, value, is_counter in members:
                head = f"{name}{{{text}}} "
                if is_counter:  # the one per-sample cost: formatting the value
                    out.write("".join([f"{head}{value * p:.9g} {t}\n" for p, t in pairs]))
                else:  # a constant gauge: every line is head value stamp, joined in C
                    lead = f"{head}{value!r} "
                    out.write(lead + f"\n{lead}".join(stamps) + "\n")
                samples += len(stamps)
        out.write("# EOF\n")
    return samples


def _sin_sum(i: int) -> float:
    """sum(sin(j / 97) for j in 0..i), in closed form (so a window starts anywhere)."""
    a = 1 / 97
    return math.sin((i + 1) * a / 2) * math.sin(i * a / 2) / math.sin(a / 2)


def tsdb_metrics(prometheus: BlockPrometheus) -> dict[str, float]:
    """The server's own prometheus_tsdb_* gauges and counters (its /metrics)."""
    with urllib.request.urlopen(prometheus.url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("prometheus_tsdb_") and "{" not in line:
            name, value = line.split()
            out[name] = float(value)
    return out


def block_ranges(data: Path) -> list[tuple[int, int]]:
    """(minTime, maxTime) of every block in the data directory (its meta.json)."""
    out = []
    for meta in data.glob("*/meta.json"):
        if meta.parent.name.startswith(("wal", "chunks_head")) or ".tmp" in meta.parent.name:
            continue
        body = json.loads(meta.read_text())
        out.append((body["minTime"], body["maxTime"]))
    return sorted(out)


def wait_compacted(prometheus: BlockPrometheus, timeout: float = 1800) -> int:
    """Waits until the server's first compaction has merged every overlapping block (the
    records' blocks overlap the raw ones, and each chunk's the other chunks'): the TSDB
    triggers it a minute after it opens and compacts until nothing is left to plan; done when
    it has been triggered, no two blocks on disk overlap, none is being written, and the
    server has loaded exactly those (then the planner finds nothing: the newest block is never
    compacted by level, and what is older was merged into one). The number of blocks then.
    Timing during a compaction would time the compaction too (2 cores)."""
    deadline = time.monotonic() + timeout
    data = prometheus.data_dir
    while True:
        metrics = tsdb_metrics(prometheus)
        if metrics.get("prometheus_tsdb_compactions_triggered_total", 0) >= 1:
            ranges = block_ranges(data)
            overlap = any(b[0] < a[1] for a, b in itertools.pairwise(ranges))
            writing = any(".tmp" in p.name for p in data.iterdir())
            if (not overlap and not writing
                    and metrics.get("prometheus_tsdb_blocks_loaded", -1) == len(ranges)):
                time.sleep(3)  # the loaded blocks are the ones on disk: settled?
                if (block_ranges(data) == ranges and tsdb_metrics(prometheus).get(
                        "prometheus_tsdb_blocks_loaded", -1) == len(ranges)):
                    return len(ranges)
        assert time.monotonic() < deadline, f"no compaction in {timeout} s: {metrics}"
        time.sleep(2)


Rule = tuple[str, str, dict[str, Any]]


def pack(path: Path = RULES) -> list[Rule]:
    """(group, name, rule) of every rule of the pack, in order."""
    data = yaml.safe_load(path.read_text())
    out = []
    for group in data["groups"]:
        for rule in group["rules"]:
            name = rule.get("record") or rule["alert"]
            scope = rule.get("labels", {}).get("scope")
            out.append((group["name"], f"{name}{{scope={scope}}}" if scope else name, rule))
    return out


def chunks(sizes: list[int], containers: int) -> list[tuple[int, int]]:
    """The fleet's chunks, (first node, last node + 1): every size's nodes are a whole number
    of them, none holds more than CHUNK containers (or one node)."""
    edges = sorted({s // containers for s in sizes})
    step = max(1, CHUNK // containers)
    out, lo = [], 0
    for edge in edges:
        while lo < edge:
            hi = min(edge, lo + step)
            out.append((lo, hi))
            lo = hi
    return out


class Chunks:
    """Each chunk's raw blocks, written and backfilled once (in `cache` when given, kept
    across runs; keyed by nodes, containers per node and GENERATOR)."""

    def __init__(self, root: Path, containers: int) -> None:
        self.root = root
        self.containers = containers
        self.phases = {"generate_s": 0.0, "backfill_s": 0.0}
        self.counts: dict[tuple[int, int], dict[str, int]] = {}

    def path(self, chunk: tuple[int, int]) -> Path:
        return self.root / f"v{GENERATOR}-c{self.containers}-nodes{chunk[0]}-{chunk[1]}"

    def ensure(self, chunk: tuple[int, int]) -> Path:
        """The chunk's block directory, made unless it is there."""
        out = self.path(chunk)
        done = out / "done.json"
        if done.is_file():
            self.counts[chunk] = json.loads(done.read_text())
            return out
        shutil.rmtree(out, ignore_errors=True)
        blocks = out / "blocks"
        families, n = fleet(*chunk, self.containers)
        count = {"containers": n, "series": sum(len(m) for _, m in families.values()),
                 "samples": 0, "bytes": 0}
        log(f"  chunk nodes {chunk[0]}..{chunk[1] - 1}: {n:,} containers, "
            f"{count['series']:,} series, 24 h at {SCRAPE} s: writing and backfilling "
            f"{BLOCK // 3600} h at a time")
        # promtool (one core each) on one window while the next is written: at most two
        # running and one written ahead, so at most three windows' text on disk.
        pending: list[Future[None]] = []
        busy = [0.0]
        lock = threading.Lock()

        def promtool(source: Path) -> None:
            t = time.monotonic()
            backfill_openmetrics(source, blocks, max_block_duration=f"{BLOCK}s")
            source.unlink()
            with lock:
                busy[0] += time.monotonic() - t

        t_all = time.monotonic()
        with ThreadPoolExecutor(max_workers=2) as pool:
            for lo, hi in day_windows():
                while len([f for f in pending if not f.done()]) >= 2:
                    time.sleep(0.05)
                source = out / f"fleet-{lo}.om"
                out.mkdir(parents=True, exist_ok=True)
                t = time.monotonic()
                count["samples"] += write_fleet(source, families, lo, hi)
                self.phases["generate_s"] += time.monotonic() - t
                pending.append(pool.submit(promtool, source))
            for future in pending:
                future.result()
        self.phases["backfill_s"] += time.monotonic() - t_all
        count["bytes"] = dir_bytes(blocks)
        done.write_text(json.dumps(count))
        self.counts[chunk] = count
        log(f"  {count['samples']:,} samples, {count['bytes']:,} bytes of blocks in "
            f"{time.monotonic() - t_all:.0f} s (promtool busy {busy[0]:.0f} s)")
        return out


def link_blocks(source: Path, data: Path) -> None:
    """Hard links of the chunk's blocks in `data` (blocks are never written once made; the
    server deletes the directories it compacted, not the files of other links)."""
    for block in (source / "blocks").iterdir():
        if not block.is_dir():
            continue
        target = data / block.name
        assert not target.exists(), target
        try:
            shutil.copytree(block, target, copy_function=os.link)
        except OSError:  # another file system
            shutil.copytree(block, target)


def unique_records(packs: list[list[Rule]], groups: tuple[str, ...]) -> list[dict[str, Any]]:
    """The recording rules of `groups` over every candidate pack, each record (name and
    labels) once: the first pack's where several define it."""
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    out = []
    for rules in packs:
        for group, _, rule in rules:
            if "record" not in rule or group not in groups:
                continue
            key = (rule["record"], tuple(sorted(rule.get("labels", {}).items())))
            if key not in seen:
                seen.add(key)
                out.append(rule)
    return out


def range_read(packs: list[list[Rule]]) -> set[str]:
    """The records that some rule of the packs reads over a range: `name[...]` or
    `name{...}[...]` (a range selector, or a subquery of that selector)."""
    names = {rule["record"] for rules in packs for _, _, rule in rules if "record" in rule}
    exprs = "\n".join(rule["expr"] for rules in packs for _, _, rule in rules)
    return {n for n in names
            if re.search(rf"(?<![\w:]){re.escape(n)}(\{{[^}}]*\}})?\[", exprs)}


def measure(prometheus: BlockPrometheus, packs: list[list[Rule]], runs: int
            ) -> tuple[list[dict[str, dict[str, Any]]], dict[str, float]]:
    """Each pack's rules timed at END: a warm-up pass, then `runs` passes (each: the floor,
    then every pack's rules in order); per rule its median engine and API milliseconds,
    samples read and series out; and the floor's."""
    times: list[dict[str, list[tuple[float, float]]]] = [{} for _ in packs]
    last: list[dict[str, tuple[int, int]]] = [{} for _ in packs]
    floor: list[tuple[float, float]] = []

    def timed(expr: str) -> tuple[float, float, int, int]:
        t = time.perf_counter()
        result = prometheus.query(expr, END, stats=True)
        api = (time.perf_counter() - t) * 1000
        engine = float(result["stats"]["timings"]["evalTotalTime"]) * 1000
        return (engine, api, int(result["stats"]["samples"]["totalQueryableSamples"]),
                len(result["result"]))

    for n in range(runs + 1):
        engine, api, _, _ = timed(FLOOR)
        if n:
            floor.append((engine, api))
        for i, rules in enumerate(packs):
            for _, name, rule in rules:
                engine, api, samples, series = timed(rule["expr"])
                if n:
                    times[i].setdefault(name, []).append((engine, api))
                    last[i][name] = (samples, series)
    out = []
    for i, rules in enumerate(packs):
        per_rule = {}
        for group, name, _ in rules:
            per_rule[name] = {
                "group": group, "ms": round(statistics.median(e for e, _ in times[i][name]), 2),
                "api_ms": round(statistics.median(a for _, a in times[i][name]), 2),
                "samples": last[i][name][0], "series": last[i][name][1]}
        out.append(per_rule)
    floor_ms = {"ms": round(statistics.median(e for e, _ in floor), 2),
                "api_ms": round(statistics.median(a for _, a in floor), 2)}
    return out, floor_ms


def exponent(sizes: list[int], values: list[float]) -> float | None:
    """The growth exponent b of value ~ size^b, least squares on the logarithms (1: linear)."""
    points = [(math.log(s), math.log(v)) for s, v in zip(sizes, values, strict=True) if v > 0]
    if len(points) < 2:
        return None
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return round(sum((x - mx) * (y - my) for x, y in points) / sxx, 3) if sxx else None


def summarize(label: str, sizes: list[int], per_size: list[dict[str, dict[str, Any]]],
              floors: list[float]) -> dict[str, Any]:
    """One pack's figures over the sizes: per rule and for the pack, milliseconds and
    milliseconds per 1,000 containers at each size and the growth exponent."""
    names = list(per_size[0])
    rules = {}
    for name in names:
        ms = [r[name]["ms"] for r in per_size]
        rules[name] = {
            "group": per_size[0][name]["group"], "ms": ms,
            "ms_per_1k": [round(m * 1000 / s, 2) for m, s in zip(ms, sizes, strict=True)],
            "exponent": exponent(sizes, ms),
            "samples_per_1k": [round(r[name]["samples"] * 1000 / s)
                               for r, s in zip(per_size, sizes, strict=True)],
            "series": [r[name]["series"] for r in per_size]}
    pack_ms = [round(sum(r[n]["ms"] for n in names), 2) for r in per_size]
    pack_api = [round(sum(r[n]["api_ms"] for n in names), 2) for r in per_size]
    per_1k = [round(m * 1000 / s, 2) for m, s in zip(pack_ms, sizes, strict=True)]
    groups: list[dict[str, float]] = []
    for r in per_size:
        g: dict[str, float] = {}
        for n in names:
            g[r[n]["group"]] = round(g.get(r[n]["group"], 0) + r[n]["ms"], 2)
        groups.append(g)
    worst = max(names, key=lambda n: max(rules[n]["samples_per_1k"]))
    slowest = max(names, key=lambda n: per_size[-1][n]["ms"])
    fastest_growing = max((n for n in names if rules[n]["ms"][-1] >= 1),
                          key=lambda n: rules[n]["exponent"] or 0, default=None)
    extrapolated = pack_ms[-1] * TARGET / sizes[-1]
    growth = per_1k[-1] / per_1k[0]
    max_samples = max(rules[worst]["samples_per_1k"])
    met = {"max_rule_samples_per_1k": max_samples <= GOALS["max_rule_samples_per_1k"],
           "pack_growth": growth <= GOALS["pack_growth_max"],
           "pack_extrapolated_50k_ms": extrapolated < GOALS["pack_extrapolated_50k_ms_max"]}
    return {
        "rules_file": label, "pack_ms": pack_ms, "pack_api_ms": pack_api,
        "pack_ms_per_1k": per_1k, "pack_exponent": exponent(sizes, pack_ms),
        "pack_growth": round(growth, 3),
        "pack_vs_floor": [round(m / f, 2) for m, f in zip(pack_ms, floors, strict=True)],
        "extrapolated_50k_ms": round(extrapolated),
        "pack_samples_per_1k": [round(sum(r[n]["samples"] for n in names) * 1000 / s)
                                for r, s in zip(per_size, sizes, strict=True)],
        "max_rule": worst, "max_rule_samples_per_1k": max_samples,
        "slowest_rule": slowest, "fastest_growing_rule": fastest_growing,
        "groups_ms": groups, "rules": rules, "met": met, "goal_met": all(met.values())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,2000,4000",
                        help="containers, comma-separated (multiples of --containers)")
    parser.add_argument("--nodes", type=int, default=None,
                        help="one size of this many nodes instead of --sizes")
    parser.add_argument("--containers", type=int, default=50, help="per node")
    parser.add_argument("--runs", type=int, default=5, help="timed passes over the pack")
    parser.add_argument("--rules", type=Path, action="append", default=None,
                        help="a rule file to time (repeat to compare candidates in one run; "
                             "default rules/footprint.rules.yaml)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep each chunk's raw blocks here and reuse them in later runs")
    args = parser.parse_args()
    started = time.monotonic()
    files = args.rules or [RULES]
    packs = [pack(f) for f in files]
    sizes = ([args.nodes * args.containers] if args.nodes else
             sorted({int(s) for s in args.sizes.split(",")}))
    assert all(s % args.containers == 0 and s > 0 for s in sizes), (sizes, args.containers)
    day_groups = ("footprint.rate5m", "footprint.chargeback", "footprint.inference")
    daily_groups = ("footprint.increase1d", "footprint.chargeback1d", "footprint.savings")
    day_rules = unique_records(packs, day_groups)
    daily = unique_records(packs, daily_groups)
    # Evaluated on the 5-minute grid over the day (what [1d:5m] reads), then every minute up
    # to END; a record that a rule reads over a range (a subquery or a range selector) is
    # also written every minute back to the evaluation before (a live group's density at a
    # 1-minute interval: what a subquery decodes), the others every 5 minutes (what the
    # next level reads) until the last 65 minutes.
    minute_from = END - LAST_HOUR
    grid_end = (minute_from - 1) // 300 * 300
    last: Span = (float(minute_from), float(END), 60.0)
    ranged = range_read(packs)

    def spans(rule: dict[str, Any]) -> list[Span]:
        if rule["record"] in ranged:
            return [(T0 + 300, grid_end, 300.0, 60.0), last]
        return [(T0 + 300, grid_end, 300.0), last]

    per_pack: list[list[dict[str, dict[str, Any]]]] = [[] for _ in packs]
    floors: list[float] = []
    measured: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rules-fleet-") as tmp:
        work = Path(tmp)
        cache = args.cache or work / "chunks"
        cache.mkdir(parents=True, exist_ok=True)
        made = Chunks(cache, args.containers)
        parts = chunks(sizes, args.containers)
        for k, size in enumerate(sizes):
            nodes = size // args.containers
            mine = [c for c in parts if c[1] <= nodes]
            log(f"{size:,} containers ({nodes} nodes x {args.containers})")
            for chunk in mine:
                made.ensure(chunk)
            phases: dict[str, float] = {}
            data = work / f"size{size}" / "data"
            data.mkdir(parents=True)
            for chunk in mine:
                link_blocks(made.path(chunk), data)
            count = {key: sum(made.counts[c][key] for c in mine)
                     for key in ("containers", "series", "samples", "bytes")}
            with BlockPrometheus(data, lookback="59s") as prometheus:
                prometheus.start()
                log(f"  backfilling {len(day_rules)} 5-minute, chargeback and inference records "
                    f"(5 min steps over the day, 1 min over the last {LAST_HOUR // 60})")
                t = time.monotonic()
                rwork = work / f"size{size}" / "records"
                rwork.mkdir()
                backfill_rule_spans(prometheus, day_rules, spans, rwork,
                                    max_block_duration="24h")
                backfill_rule_spans(prometheus, daily, [(END - 15 * 60, END, 60.0)], rwork)
                phases["rules_backfill_s"] = time.monotonic() - t
                log(f"  records backfilled in {phases['rules_backfill_s']:.0f} s; waiting for "
                    "the server's compaction")
                prometheus.lookback = None  # a live server's default 5 m lookback from here on
                prometheus.restart()
                t = time.monotonic()
                if k + 1 < len(sizes):  # the next size's new chunks meanwhile (idle wait)
                    for chunk in parts:
                        if chunk[1] <= sizes[k + 1] // args.containers:
                            made.ensure(chunk)
                    phases["next_chunks_s"] = time.monotonic() - t
                blocks = wait_compacted(prometheus)
                phases["compact_s"] = time.monotonic() - t
                total_bytes = dir_bytes(data)
                log(f"  compacted into {blocks} blocks in {phases['compact_s']:.0f} s; timing "
                    f"{len(packs)} pack(s) at the day's end, {args.runs} passes")
                load_before = os.getloadavg()
                t = time.monotonic()
                results, floor = measure(prometheus, packs, args.runs)
                phases["measure_s"] = time.monotonic() - t
                load_after = os.getloadavg()
            shutil.rmtree(data.parent)
            for i, per_rule in enumerate(results):
                per_pack[i].append(per_rule)
            floors.append(floor["ms"])
            pack_ms = sum(r["ms"] for r in results[0].values())
            log(f"  pack {pack_ms:.0f} ms ({pack_ms * 1000 / size:.0f} per 1,000 containers), "
                f"floor {floor['ms']:.1f} ms, load {load_before[0]:.2f}")
            measured.append({
                "containers": count["containers"], "nodes": nodes, "series": count["series"],
                "raw_samples": count["samples"], "tsdb_bytes_raw_day": count["bytes"],
                "tsdb_bytes_per_1k_containers_day": round(count["bytes"] * 1000 / size),
                "tsdb_bytes_measured": total_bytes, "tsdb_blocks_measured": blocks,
                "floor_ms": floor["ms"], "floor_api_ms": floor["api_ms"],
                "loadavg_1_5_15": {"before": [round(x, 2) for x in load_before],
                                   "after": [round(x, 2) for x in load_after]},
                "phases_s": {key: round(v, 1) for key, v in phases.items()}})
        chunk_phases = {key: round(v, 1) for key, v in made.phases.items()}
    summaries = [summarize(str(f.resolve().relative_to(ROOT))
                           if f.resolve().is_relative_to(ROOT) else str(f),
                           sizes, per_pack[i], floors) for i, f in enumerate(files)]
    main_pack = summaries[0]
    result = {
        "benchmark": "rules_fleet", "sizes": sizes, "containers_per_node": args.containers,
        "runs": args.runs, "end": END, "cpus": os.cpu_count(),
        "pack_ms_per_1k": main_pack["pack_ms_per_1k"], "pack_growth": main_pack["pack_growth"],
        "pack_exponent": main_pack["pack_exponent"], "floor_ms": floors,
        "pack_vs_floor": main_pack["pack_vs_floor"],
        "extrapolated_50k_ms": main_pack["extrapolated_50k_ms"],
        "max_rule_samples_per_1k": main_pack["max_rule_samples_per_1k"],
        "goals": GOALS, "met": main_pack["met"], "goal_met": main_pack["goal_met"],
        "measured": measured, "chunks_s": chunk_phases,
        "packs": summaries, "wall_s": round(time.monotonic() - started, 1)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
