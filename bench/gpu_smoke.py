#!/usr/bin/env python3
"""Smoke check of Footprint's NVML source (exporter.sources.nvml.NvmlSource) on a real GPU.

Runs the project's NvmlSource, not raw pynvml: it probes the source, then reads it every
0.5 s for ``--seconds`` (default 30): the first third idle (with this script's CUDA context
already resident), the rest under a bf16 matmul load on cuda:0 when torch with CUDA is
importable. Beside it, through the same pynvml module the source uses, it samples
``nvmlDeviceGetPowerUsage`` (and field 186, the instant power) every 100 ms and integrates
them with the trapezoid rule over exactly the spans the source's reads cover, so the
source's joules (energy counter, or its own power integration on old GPUs) can be compared
with an independent figure. It also records the processes and SM utilisation the source saw.

It also measures what NVML costs the source (``nvml_cost`` in the output): every pynvml call
the source makes goes through a timing wrapper, so each read's time is split into reads that
only take energy and power and reads that also refresh the processes, utilisation and MIG
layout (median and p99, per read and per GPU), with each function's own time, and the
amortised cost per GPU per read, as run and projected for the exporter's defaults (5 s tick,
``PROCESSES_EVERY_S``). ``--processes-every`` defaults to 2.5 s here (every fifth read) so that
a 30 s run has a dozen refreshing reads to measure.

Run from the repository root; the project need not be pip-installed:
    python3 bench/gpu_smoke.py --seconds 30
    python3 bench/gpu_smoke.py --fake-gpus 8 --seconds 10   # no GPU: the tests' fake NVML

Output: one JSON object on stdout, also written to ``$OUT/gpu_smoke.json`` when ``OUT`` is
set; progress goes to stderr. Exit codes: 0 done; 2 pynvml (nvidia-ml-py) not importable;
3 no NVIDIA driver; 4 the source did not start otherwise.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.sources.nvml import NO_DRIVER, PROCESSES_EVERY_S, NvmlSource

TICK_S = 0.5
SAMPLE_S = 0.1
FIELD_POWER_INSTANT = 186  # NVML_FI_DEV_POWER_INSTANT
MATMUL_N = 8192
SMOKE_PROCESSES_EVERY_S = 2.5
"""This script's default cadence: every fifth read, for enough refreshing reads to measure."""
EXPORTER_TICK_S = 5.0
"""The exporter's default --collector.interval, for the projected amortised cost."""
GOAL_MS_PER_GPU = 1.0
"""Issue 11: NVML at most about 1 ms per GPU per tick, amortised."""
REFRESH_CALL = "nvmlDeviceGetComputeRunningProcesses"
"""A read that made this call refreshed processes (on at least one GPU)."""


def log(msg: str) -> None:
    print(f"[gpu_smoke {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def trapezoid(points: list[tuple[float, float]]) -> float:
    """Joules from (seconds, watts) points."""
    return sum((w0 + w1) / 2.0 * (t1 - t0)
               for (t0, w0), (t1, w1) in itertools.pairwise(points))


class Load:
    """A bf16 matmul loop on cuda:0 in a background thread (torch releases the GIL)."""

    def __init__(self) -> None:
        self.info: dict[str, Any] = {"available": False}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def prepare(self) -> bool:
        """Import torch, make the CUDA context and the matrices, warm up; True if usable."""
        t0 = time.monotonic()
        try:
            import torch  # type: ignore[import-not-found]
        except Exception as exc:
            self.info["error"] = f"{type(exc).__name__}: {exc}"[:200]
            return False
        self.info["version"] = torch.__version__
        try:
            if not torch.cuda.is_available():
                self.info["error"] = "torch.cuda.is_available() is False"
                return False
            n = MATMUL_N
            a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
            b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
            c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
            torch.matmul(a, b, out=c)
            torch.cuda.synchronize()
        except Exception as exc:
            self.info["error"] = f"{type(exc).__name__}: {exc}"[:300]
            return False
        self.info.update({"available": True, "device": torch.cuda.get_device_name(0),
                          "matmul": f"bf16 {n}x{n} @ {n}x{n}, synchronize every 10",
                          "setup_s": round(time.monotonic() - t0, 3)})

        def work() -> None:
            count, start = 0, time.monotonic()
            try:
                torch.cuda.set_device(0)  # make the context current in this thread too
                while not self._stop.is_set():
                    for _ in range(10):
                        torch.matmul(a, b, out=c)
                    torch.cuda.synchronize()
                    count += 10
            except Exception as exc:
                self.info["worker_error"] = f"{type(exc).__name__}: {exc}"[:300]
            elapsed = time.monotonic() - start
            self.info.update({"matmuls": count, "load_s": round(elapsed, 3)})
            if elapsed > 0:
                self.info["tflops"] = round(count * 2 * n**3 / elapsed / 1e12, 1)

        self._thread = threading.Thread(target=work, name="matmul-load", daemon=True)
        return True

    def start(self) -> None:
        if self._thread is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=30)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


class TimedNvml(ModuleType):
    """The pynvml module as the source sees it: each `nvml*` function timed and counted.

    Everything else (the `NVMLError_*` classes, constants) passes through untouched. The
    wrapper adds about a microsecond per call, against the milliseconds measured."""

    def __init__(self, nv: Any) -> None:
        super().__init__("pynvml")
        self._nv = nv
        self.seconds: dict[str, list[float]] = {}
        self.read_calls: Counter[str] = Counter()
        """Calls since `start_read()`."""

    def start_read(self) -> None:
        self.read_calls = Counter()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._nv, name)
        if not (name.startswith("nvml") and callable(value)):
            return value
        spent = self.seconds.setdefault(name, [])
        function: Callable[..., Any] = value

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent.append(time.perf_counter() - t0)
                self.read_calls[name] += 1

        self.__dict__[name] = timed  # found directly from now on
        return timed


def read_stats(seconds: list[float], gpus: int) -> dict[str, Any]:
    if not seconds:
        return {"count": 0}
    ms = [s * 1000.0 for s in seconds]
    return {"count": len(ms), "ms_median": round(statistics.median(ms), 4),
            "ms_p99": round(percentile(ms, 99), 4), "ms_mean": round(statistics.fmean(ms), 4),
            "ms_max": round(max(ms), 4),
            "ms_per_gpu_median": round(statistics.median(ms) / gpus, 4),
            "ms_per_gpu_p99": round(percentile(ms, 99) / gpus, 4)}


def nvml_cost(calls_s: dict[str, list[float]], reads: list[tuple[float, bool]], gpus: int,
              processes_every_s: float) -> dict[str, Any]:
    """Per-read NVML cost, energy-only reads apart from refreshing ones, and amortised;
    `calls_s`: each function's call times during the reads (the probe's left out)."""
    gpus = max(gpus, 1)
    energy = [s for s, refreshed in reads if not refreshed]
    refresh = [s for s, refreshed in reads if refreshed]
    every = [s for s, _ in reads]
    out: dict[str, Any] = {
        "gpus": gpus, "tick_s": TICK_S, "processes_every_s": processes_every_s,
        "reads": {"energy_only": read_stats(energy, gpus),
                  "with_refresh": read_stats(refresh, gpus), "all": read_stats(every, gpus)},
    }
    if every:
        out["amortised_ms_per_read"] = round(statistics.fmean(every) * 1000.0, 4)
        out["amortised_ms_per_gpu"] = round(statistics.fmean(every) * 1000.0 / gpus, 4)
    if energy and refresh:
        # the exporter's defaults: one read in (PROCESSES_EVERY_S / 5 s) refreshes
        share = min(1.0, EXPORTER_TICK_S / PROCESSES_EVERY_S) if PROCESSES_EVERY_S else 1.0
        e, r = statistics.fmean(energy), statistics.fmean(refresh)
        projected = (e + (r - e) * share) * 1000.0 / gpus
        out["projected_at_exporter_defaults"] = {
            "tick_s": EXPORTER_TICK_S, "processes_every_s": PROCESSES_EVERY_S,
            "refreshing_share": round(share, 4), "ms_per_gpu": round(projected, 4),
            "goal_ms_per_gpu": GOAL_MS_PER_GPU, "goal_met": projected <= GOAL_MS_PER_GPU}
    n_reads = max(len(reads), 1)
    functions = {}
    for name, spent in sorted(calls_s.items()):
        ms = [s * 1000.0 for s in spent]
        if not ms:
            continue  # called at the probe only (nvmlInit, nvmlDeviceGetName, ...)
        functions[name] = {"calls": len(ms), "calls_per_read": round(len(ms) / n_reads, 3),
                           "ms_median": round(statistics.median(ms), 4),
                           "ms_p99": round(percentile(ms, 99), 4),
                           "ms_total": round(sum(ms), 3)}
    out["per_function"] = functions
    return out


def fake_pynvml(gpus: int) -> Any:
    """The tests' fake NVML (tests/fakes/fake_nvml.py): `gpus` H100s with one process each."""
    from tests.fakes.fake_nvml import FakeNvml, FakeProcess, h100

    boards = [h100(f"GPU-00000000-0000-4000-8000-{i:012x}") for i in range(gpus)]
    for i, board in enumerate(boards):
        board.processes = [FakeProcess(4000 + i)]
    return FakeNvml(boards)


def drive_fake(nv: Any, now: float) -> None:
    """Fake time follows the clock; each process gets a utilisation sample per call."""
    if nv.time == 0.0:
        nv.time = now
    if now > nv.time:
        nv.advance(now - nv.time)
        for i, board in enumerate(nv.gpus):
            for process in board.processes:
                nv.add_sample(board, process.pid, 40 + (i * 7) % 60)
            del board.samples[:-8]  # the fake filters its whole list at each call


class PowerSampler:
    """PowerUsage and field 186 of every GPU, through the source's own pynvml module."""

    def __init__(self, nv: Any) -> None:
        self.nv = nv
        self.handles: dict[str, Any] = {}
        for i in range(nv.nvmlDeviceGetCount()):
            handle = nv.nvmlDeviceGetHandleByIndex(i)
            uuid = nv.nvmlDeviceGetUUID(handle)
            self.handles[uuid.decode() if isinstance(uuid, bytes) else str(uuid)] = handle
        self.usage: dict[str, list[tuple[float, float]]] = {u: [] for u in self.handles}
        self.instant: dict[str, list[tuple[float, float]]] = {u: [] for u in self.handles}
        self.errors: dict[str, int] = {}
        self.call_s: list[float] = []

    def sample(self, now: float) -> None:
        nv = self.nv
        for uuid, handle in self.handles.items():
            t0 = time.perf_counter()
            try:
                self.usage[uuid].append((now, nv.nvmlDeviceGetPowerUsage(handle) / 1000.0))
                (field,) = nv.nvmlDeviceGetFieldValues(handle, [FIELD_POWER_INSTANT])
                if field.nvmlReturn == 0:
                    self.instant[uuid].append((now, field.value.uiVal / 1000.0))
            except nv.NVMLError as exc:
                name = type(exc).__name__
                self.errors[name] = self.errors.get(name, 0) + 1
            self.call_s.append(time.perf_counter() - t0)

    @staticmethod
    def between(points: list[tuple[float, float]], t0: float, t1: float) -> float | None:
        inside = [p for p in points if t0 <= p[0] <= t1]
        if len(inside) < 2 or inside[0][0] != t0 or inside[-1][0] != t1:
            return None  # the span's ends were not sampled: no fair comparison
        return trapezoid(inside)


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def ratio(x: float | None, y: float) -> float | None:
    return round(x / y, 4) if x is not None and y > 0 else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="idle for a third of it, then load (default 30)")
    parser.add_argument("--no-load", action="store_true", help="never start the matmul load")
    parser.add_argument("--processes-every", type=float, default=SMOKE_PROCESSES_EVERY_S,
                        metavar="SECONDS",
                        help="the source's processes_every_s: seconds between process "
                             f"refreshes (default {SMOKE_PROCESSES_EVERY_S:g}; the exporter's "
                             f"is {PROCESSES_EVERY_S:g}; 0: every read)")
    parser.add_argument("--fake-gpus", type=int, default=0, metavar="N",
                        help="no GPU needed: N fake H100s (tests/fakes/fake_nvml.py), no load")
    args = parser.parse_args()

    fake = args.fake_gpus > 0
    if fake:
        pynvml: Any = fake_pynvml(args.fake_gpus)
        args.no_load = True
    else:
        try:
            import pynvml  # type: ignore[import-not-found, no-redef, unused-ignore]
        except ImportError as exc:
            print(f"pynvml (package nvidia-ml-py) is not importable: {exc}", file=sys.stderr)
            return 2
    started_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    timed = TimedNvml(pynvml)
    source = NvmlSource(nvml=timed, processes_every_s=args.processes_every)
    t_probe = time.perf_counter()
    status = source.probe()
    probe_s = time.perf_counter() - t_probe
    probe_calls = {name: len(spent) for name, spent in timed.seconds.items()}
    if not status.enabled:
        print(status.detail, file=sys.stderr)
        return 3 if status.detail == NO_DRIVER else 4
    log(f"source: {status.detail}")
    sampler = PowerSampler(pynvml)
    report: dict[str, Any] = {
        "started_utc": started_utc,
        "host": {"python": platform.python_version(), "platform": platform.platform(),
                 "pid": os.getpid()},
        "nvml": "fake (tests/fakes/fake_nvml.py)" if fake else "pynvml",
        "nvidia_ml_py_version": package_version("nvidia-ml-py"),
        "driver_version": str(pynvml.nvmlSystemGetDriverVersion()),
        "source_status": {"enabled": status.enabled, "detail": status.detail,
                          "components": sorted(status.components)},
        "probe_s": round(probe_s, 4),
        "gpus_at_probe": [{"uuid": g.uuid, "index": g.index, "product": g.product,
                           "source": g.source, "mig": [s.uuid for s in g.mig]}
                          for g in source.gpus],
    }

    load = Load()
    if not args.no_load:
        log("initialising torch/CUDA (the context stays resident through the idle phase)")
        load.prepare()
    idle_s = args.seconds / 3.0 if load.info["available"] else args.seconds
    phases = [("idle", idle_s)] + ([("load", args.seconds - idle_s)]
                                   if load.info["available"] else [])

    ticks: list[dict[str, Any]] = []
    read_s: list[float] = []
    reads: list[tuple[float, bool]] = []
    clock = time.monotonic

    def sample(now: float) -> None:
        if fake:
            drive_fake(pynvml, now)
        sampler.sample(now)

    def tick(phase: str) -> None:
        now = clock()
        sample(now)
        timed.start_read()
        t0 = time.perf_counter()
        reading = source.read(now)
        spent = time.perf_counter() - t0
        refreshed = timed.read_calls[REFRESH_CALL] > 0
        read_s.append(spent)
        reads.append((spent, refreshed))
        ticks.append({"t": now, "phase": phase, "up": reading.up, "refreshed": refreshed,
                      "joules": dict(reading.joules),
                      "gpus": {g.uuid: g for g in source.gpus}})

    boundaries: dict[str, tuple[float, float]] = {}
    for phase, length in phases:
        if phase == "load":
            load.start()
        log(f"{phase} phase, {length:.1f} s")
        tick(phase)  # the phase's first read closes the previous span: not counted in it
        start = ticks[-1]["t"]
        n = 0
        while True:
            n += 1
            target = start + n * SAMPLE_S
            delay = target - clock()
            if delay > 0:
                time.sleep(delay)
            if n % round(TICK_S / SAMPLE_S) == 0:
                tick(phase)
            else:
                sample(clock())
            if clock() - start >= length and n % round(TICK_S / SAMPLE_S) == 0:
                break
        boundaries[phase] = (start, ticks[-1]["t"])
    load.stop()
    calls_s = {name: spent[probe_calls.get(name, 0):] for name, spent in timed.seconds.items()}
    source.close()

    per_gpu: list[dict[str, Any]] = []
    for uuid in sampler.handles:
        first = ticks[0]["gpus"].get(uuid)
        entry: dict[str, Any] = {"uuid": uuid, "product": first.product if first else None,
                                 "source": first.source if first else None, "phases": {}}
        for phase, (t0, t1) in boundaries.items():
            counted = [t for t in ticks if t0 < t["t"] <= t1 and uuid in t["gpus"]]
            joules = sum(t["gpus"][uuid].joules for t in counted)
            span = t1 - t0
            usage = sampler.between(sampler.usage[uuid], t0, t1)
            instant = sampler.between(sampler.instant[uuid], t0, t1)
            watts = [t["gpus"][uuid].power_watts for t in counted
                     if t["gpus"][uuid].power_watts is not None]
            entry["phases"][phase] = {
                "span_s": round(span, 3), "reads": len(counted),
                "reads_up": sum(t["gpus"][uuid].up for t in counted),
                "source_J": round(joules, 3),
                "source_mean_W": round(joules / span, 2) if span > 0 else None,
                "power_usage_integrated_J": None if usage is None else round(usage, 3),
                "ratio_power_usage_over_source": ratio(usage, joules),
                "instant_f186_integrated_J": None if instant is None else round(instant, 3),
                "ratio_instant_over_source": ratio(instant, joules),
                "source_power_watts_min_max": [min(watts), max(watts)] if watts else None,
            }
        processes: dict[str, Any] = {}
        for phase in boundaries:
            seen: dict[int, dict[str, Any]] = {}
            phase_ticks = [t for t in ticks if t["phase"] == phase and uuid in t["gpus"]]
            for t in phase_ticks:
                for p in t["gpus"][uuid].processes:
                    row = seen.setdefault(p.pid, {"pid": p.pid, "reads_listed": 0,
                                                  "sm_util_values": [], "memory_bytes_max": None,
                                                  "mig_uuid": p.mig_uuid})
                    row["reads_listed"] += 1
                    if p.sm_util is not None:
                        row["sm_util_values"].append(p.sm_util)
                    if p.used_memory_bytes is not None:
                        row["memory_bytes_max"] = max(row["memory_bytes_max"] or 0,
                                                      p.used_memory_bytes)
            for row in seen.values():
                values = row.pop("sm_util_values")
                row["reads_with_sm_util"] = len(values)
                row["sm_util_mean"] = round(statistics.fmean(values), 1) if values else None
                row["sm_util_min_max"] = [min(values), max(values)] if values else None
                row["is_this_script"] = row["pid"] == os.getpid()
            processes[phase] = {"reads": len(phase_ticks),
                                "refreshing_reads": sum(t["refreshed"] for t in phase_ticks),
                                "processes": list(seen.values())}
        entry["processes"] = processes
        per_gpu.append(entry)

    report.update({
        "tick_s": TICK_S, "power_sample_s": SAMPLE_S,
        "reads": len(ticks), "reads_up": sum(t["up"] for t in ticks),
        "read_call_s": {"median": round(statistics.median(read_s), 5),
                        "max": round(max(read_s), 5)} if read_s else None,
        "power_sample_call_s": {"median": round(statistics.median(sampler.call_s), 5),
                                "max": round(max(sampler.call_s), 5)} if sampler.call_s else None,
        "power_sample_errors": sampler.errors,
        "nvml_cost": nvml_cost(calls_s, reads, len(sampler.handles),
                               source.processes_every_s),
        "per_gpu": per_gpu,
        "torch": load.info,
        "elapsed_s": round(clock() - ticks[0]["t"], 2) if ticks else 0.0,
    })
    text = json.dumps(report, indent=1)
    print(text)
    out_dir = os.environ.get("OUT")
    if out_dir:
        try:
            Path(out_dir, "gpu_smoke.json").write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            log(f"could not write to $OUT: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
