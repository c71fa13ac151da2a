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

Run from the repository root; the project need not be pip-installed:
    python3 bench/gpu_smoke.py --seconds 30

Output: one JSON object on stdout, also written to ``$OUT/gpu_smoke.json`` when ``OUT`` is
set; progress goes to stderr. Exit codes: 0 done; 2 pynvml (nvidia-ml-py) not importable;
3 no NVIDIA driver; 4 the source did not start otherwise.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.sources.nvml import NO_DRIVER, NvmlSource

TICK_S = 0.5
SAMPLE_S = 0.1
FIELD_POWER_INSTANT = 186  # NVML_FI_DEV_POWER_INSTANT
MATMUL_N = 8192


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
    args = parser.parse_args()

    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError as exc:
        print(f"pynvml (package nvidia-ml-py) is not importable: {exc}", file=sys.stderr)
        return 2
    started_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    source = NvmlSource(nvml=pynvml)
    t_probe = time.perf_counter()
    status = source.probe()
    probe_s = time.perf_counter() - t_probe
    if not status.enabled:
        print(status.detail, file=sys.stderr)
        return 3 if status.detail == NO_DRIVER else 4
    log(f"source: {status.detail}")
    sampler = PowerSampler(pynvml)
    report: dict[str, Any] = {
        "started_utc": started_utc,
        "host": {"python": platform.python_version(), "platform": platform.platform(),
                 "pid": os.getpid()},
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
    clock = time.monotonic

    def tick(phase: str) -> None:
        now = clock()
        sampler.sample(now)
        t0 = time.perf_counter()
        reading = source.read(now)
        read_s.append(time.perf_counter() - t0)
        ticks.append({"t": now, "phase": phase, "up": reading.up,
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
                sampler.sample(clock())
            if clock() - start >= length and n % round(TICK_S / SAMPLE_S) == 0:
                break
        boundaries[phase] = (start, ticks[-1]["t"])
    load.stop()
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
            processes[phase] = {"reads": len(phase_ticks), "processes": list(seen.values())}
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
