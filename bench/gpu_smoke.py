#!/usr/bin/env python3
"""Standalone NVML smoke test: read what a real NVIDIA GPU reports.

Used once on a lent GPU machine to learn how NVML behaves (energy counter vs
power readings, field values 185/186, process lists, per-process utilisation,
error classes), so that Footprint's future NVML source and its fake can be
designed faithfully. Not part of the exporter; needs only the standard library,
``pynvml`` (package ``nvidia-ml-py``) and, optionally, ``torch`` with CUDA to
put a load on the GPU.

Phases (``--seconds``, default 30): the first third idle, the rest under a bf16
matmul load (when torch with CUDA is importable). Before the idle phase, about
one second is sampled with no CUDA context of ours (``pre_context``); torch is
then initialised, so the idle phase has our CUDA context resident.

Output: one JSON object on stdout, also written to ``$OUT/gpu_smoke.json`` when
``OUT`` is set; the raw 100 ms samples go to ``$OUT/gpu_smoke_samples.json``
(or to stdout's object with ``--inline-samples``).

Exit codes: 0 done; 2 pynvml not importable; 3 no NVIDIA driver (NVML library
not found); 4 nvmlInit failed otherwise.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

FIELD_POWER_AVERAGE = 185  # NVML_FI_DEV_POWER_AVERAGE
FIELD_POWER_INSTANT = 186  # NVML_FI_DEV_POWER_INSTANT
FIELD_IDS = [FIELD_POWER_AVERAGE, FIELD_POWER_INSTANT]
VALUE_TYPE_ATTR = {
    0: "dVal",
    1: "uiVal",
    2: "ulVal",
    3: "ullVal",
    4: "sllVal",
    5: "siVal",
    6: "usVal",
}


def log(msg: str) -> None:
    print(f"[gpu_smoke {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def to_str(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


class Errors:
    """Records every exception class raised by a wrapped call, with where."""

    def __init__(self) -> None:
        self.by_class: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def note(self, label: str, exc: BaseException) -> str:
        name = type(exc).__name__
        with self.lock:
            entry = self.by_class.setdefault(
                name,
                {
                    "count": 0,
                    "nvml_value": getattr(exc, "value", None),
                    "message": str(exc)[:200],
                    "calls": [],
                },
            )
            entry["count"] += 1
            if label not in entry["calls"]:
                entry["calls"].append(label)
        return name

    def call(self, label: str, fn: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
        """(True, result) or (False, exception class name)."""
        try:
            return True, fn(*args)
        except Exception as exc:
            return False, self.note(label, exc)


def trapezoid_joules(ts: list[float], mw: list[float]) -> float | None:
    """Integrate milliwatts over seconds, returning joules."""
    if len(ts) < 2:
        return None
    total = 0.0
    for i in range(1, len(ts)):
        total += (mw[i] + mw[i - 1]) / 2.0 * (ts[i] - ts[i - 1])
    return total / 1000.0


def change_stats(ts: list[float], values: list[Any]) -> dict[str, Any]:
    """How often a reading changes: distinct values and the gaps between changes."""
    if not values:
        return {"n": 0}
    change_times = [ts[i] for i in range(1, len(values)) if values[i] != values[i - 1]]
    gaps = sorted(b - a for a, b in itertools.pairwise(change_times))
    out: dict[str, Any] = {
        "n": len(values),
        "distinct": len(set(values)),
        "changes": len(change_times),
    }
    if gaps:
        out["median_gap_between_changes_s"] = round(gaps[len(gaps) // 2], 4)
        out["min_gap_between_changes_s"] = round(gaps[0], 4)
    return out


def field_value(fv: Any) -> dict[str, Any]:
    ret = int(fv.nvmlReturn)
    out: dict[str, Any] = {
        "fieldId": int(fv.fieldId),
        "nvmlReturn": ret,
        "valueType": int(fv.valueType),
        "timestamp_us": int(fv.timestamp),
        "latencyUsec": int(fv.latencyUsec),
    }
    if ret == 0:
        attr = VALUE_TYPE_ATTR.get(int(fv.valueType))
        out["value"] = getattr(fv.value, attr) if attr else None
    return out


def device_info(nv: Any, errs: Errors, idx: int, h: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"index": idx}

    def get(key: str, fn_name: str, *extra: Any) -> None:
        fn = getattr(nv, fn_name, None)
        if fn is None:
            info[key] = {"error": "missing in pynvml"}
            return
        ok, val = errs.call(fn_name, fn, h, *extra)
        info[key] = to_str(val) if ok else {"error": val}

    get("name", "nvmlDeviceGetName")
    get("uuid", "nvmlDeviceGetUUID")
    get("power_management_limit_mW", "nvmlDeviceGetPowerManagementLimit")
    get("enforced_power_limit_mW", "nvmlDeviceGetEnforcedPowerLimit")
    get("power_limit_constraints_mW", "nvmlDeviceGetPowerManagementLimitConstraints")
    ok, val = errs.call("nvmlDeviceGetMigMode", nv.nvmlDeviceGetMigMode, h)
    info["mig_mode"] = {"current": val[0], "pending": val[1]} if ok else {"error": val}
    ok, val = errs.call("nvmlDeviceGetPciInfo", nv.nvmlDeviceGetPciInfo, h)
    info["pci_bus_id"] = to_str(val.busId) if ok else {"error": val}
    ok, val = errs.call(
        "nvmlDeviceGetTotalEnergyConsumption", nv.nvmlDeviceGetTotalEnergyConsumption, h
    )
    info["total_energy_supported"] = ok
    info["total_energy_first_mJ" if ok else "total_energy_error"] = val
    return info


def proc_list(nv: Any, errs: Errors, h: Any, label: str) -> dict[str, Any]:
    t = time.monotonic()
    ok, val = errs.call(label, nv.nvmlDeviceGetComputeRunningProcesses, h)
    if not ok:
        return {"error": val}
    procs = []
    for p in val:
        entry: dict[str, Any] = {}
        for attr in ("pid", "usedGpuMemory", "gpuInstanceId", "computeInstanceId"):
            if hasattr(p, attr):
                v = getattr(p, attr)
                entry[attr] = v if v is None else int(v)
        procs.append(entry)
    return {"processes": procs, "call_s": round(time.monotonic() - t, 6)}


class ProcUtil:
    """nvmlDeviceGetProcessUtilization with lastSeen tracking."""

    def __init__(self, nv: Any, errs: Errors, h: Any) -> None:
        self.nv, self.errs, self.h = nv, errs, h
        self.last_seen = 0
        self.calls: list[dict[str, Any]] = []

    def poll(self, note: str) -> None:
        asked = self.last_seen
        wall_us = int(time.time() * 1e6)
        t0 = time.monotonic()
        try:
            samples = self.nv.nvmlDeviceGetProcessUtilization(self.h, asked)
        except Exception as exc:
            name = self.errs.note("nvmlDeviceGetProcessUtilization", exc)
            self.calls.append(
                {
                    "note": note,
                    "lastSeen_asked": asked,
                    "wall_us_at_call": wall_us,
                    "error": name,
                    "nvml_value": getattr(exc, "value", None),
                    "call_s": round(time.monotonic() - t0, 6),
                }
            )
            return
        rows = []
        for s in samples:
            rows.append(
                {
                    "pid": int(s.pid),
                    "timeStamp": int(s.timeStamp),
                    "smUtil": int(s.smUtil),
                    "memUtil": int(s.memUtil),
                    "encUtil": int(s.encUtil),
                    "decUtil": int(s.decUtil),
                }
            )
            self.last_seen = max(self.last_seen, int(s.timeStamp))
        self.calls.append(
            {
                "note": note,
                "lastSeen_asked": asked,
                "wall_us_at_call": wall_us,
                "n_samples": len(rows),
                "samples": rows[:20],
                "samples_truncated": len(rows) > 20,
                "call_s": round(time.monotonic() - t0, 6),
            }
        )


def start_load(stop: threading.Event, state: dict[str, Any]) -> threading.Thread | None:
    """Initialise torch + CUDA now; return a (not yet started) matmul thread."""
    t0 = time.monotonic()
    try:
        import torch  # type: ignore[import-not-found]
    except Exception as exc:
        state["torch"] = {"available": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
        return None
    info: dict[str, Any] = {"version": torch.__version__}
    state["torch"] = info
    try:
        if not torch.cuda.is_available():
            info["available"] = False
            info["error"] = "torch.cuda.is_available() is False"
            return None
        n = 8192
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
        torch.matmul(a, b, out=c)
        torch.cuda.synchronize()
        info.update(
            {
                "available": True,
                "device": torch.cuda.get_device_name(0),
                "matmul": f"bf16 {n}x{n} @ {n}x{n}, synchronize every 10",
                "setup_s": round(time.monotonic() - t0, 3),
            }
        )
    except Exception as exc:
        info["available"] = False
        info["error"] = f"{type(exc).__name__}: {exc}"[:300]
        return None

    def worker() -> None:
        count = 0
        t_start = time.monotonic()
        try:
            while not stop.is_set():
                for _ in range(10):
                    torch.matmul(a, b, out=c)
                torch.cuda.synchronize()
                count += 10
        except Exception as exc:
            info["worker_error"] = f"{type(exc).__name__}: {exc}"[:300]
        elapsed = time.monotonic() - t_start
        info["matmuls"] = count
        info["load_s"] = round(elapsed, 3)
        if elapsed > 0:
            info["tflops"] = round(count * 2 * n**3 / elapsed / 1e12, 1)

    return threading.Thread(target=worker, name="matmul-load", daemon=True)


def sample(nv: Any, errs: Errors, h: Any, phase: str) -> dict[str, Any]:
    row: dict[str, Any] = {"phase": phase, "t": time.monotonic()}
    ok, val = errs.call(
        "nvmlDeviceGetTotalEnergyConsumption", nv.nvmlDeviceGetTotalEnergyConsumption, h
    )
    row["energy_mJ" if ok else "energy_err"] = val
    ok, val = errs.call("nvmlDeviceGetPowerUsage", nv.nvmlDeviceGetPowerUsage, h)
    row["power_mW" if ok else "power_err"] = val
    ok, val = errs.call("nvmlDeviceGetFieldValues", nv.nvmlDeviceGetFieldValues, h, FIELD_IDS)
    if ok:
        for fv in val:
            try:
                d = field_value(fv)
            except Exception as exc:
                d = {"decode_error": errs.note("field_value decode", exc)}
            row[f"f{d.get('fieldId', '?')}"] = d
    else:
        row["fields_err"] = val
    row["t_end"] = time.monotonic()
    return row


def phase_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n_samples": len(rows)}
    if not rows:
        return out
    out["span_s"] = round(rows[-1]["t"] - rows[0]["t"], 3)
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(rows)]
    if gaps:
        out["max_gap_between_samples_s"] = round(max(gaps), 4)
    call_s = sorted(r["t_end"] - r["t"] for r in rows)
    out["sample_call_s_median"] = round(call_s[len(call_s) // 2], 6)
    out["sample_call_s_max"] = round(call_s[-1], 6)

    e_rows = [r for r in rows if "energy_mJ" in r]
    if len(e_rows) >= 2:
        j = (e_rows[-1]["energy_mJ"] - e_rows[0]["energy_mJ"]) / 1000.0
        span = e_rows[-1]["t"] - e_rows[0]["t"]
        out["counter_J"] = round(j, 3)
        out["counter_span_s"] = round(span, 3)
        out["counter_mean_W"] = round(j / span, 2) if span > 0 else None
        out["counter_changes"] = change_stats(
            [r["t"] for r in e_rows], [r["energy_mJ"] for r in e_rows]
        )
    counter_j = out.get("counter_J")

    def integrate(key: str, getter: Callable[[dict[str, Any]], Any]) -> None:
        pts = [(r["t"], getter(r)) for r in rows]
        pts = [(t, v) for t, v in pts if isinstance(v, (int, float))]
        if len(pts) < 2:
            out[key] = {"n": len(pts)}
            return
        ts, vs = [p[0] for p in pts], [p[1] for p in pts]
        j = trapezoid_joules(ts, vs)
        d: dict[str, Any] = {
            "n": len(pts),
            "integrated_J": round(j, 3) if j is not None else None,
            "mean_W": round(sum(vs) / len(vs) / 1000.0, 2),
            "min_W": round(min(vs) / 1000.0, 2),
            "max_W": round(max(vs) / 1000.0, 2),
            "changes": change_stats(ts, vs),
        }
        if j is not None and counter_j:
            d["ratio_integrated_over_counter"] = round(j / counter_j, 4)
        out[key] = d

    integrate("power_usage", lambda r: r.get("power_mW"))
    for fid in FIELD_IDS:
        integrate(f"field_{fid}", lambda r, fid=fid: (r.get(f"f{fid}") or {}).get("value"))
        rets = sorted({(r.get(f"f{fid}") or {}).get("nvmlReturn") for r in rows}, key=str)
        out[f"field_{fid}"]["nvmlReturn_seen"] = rets
        fts = [(r["t"], (r.get(f"f{fid}") or {}).get("timestamp_us")) for r in rows]
        fts = [(t, v) for t, v in fts if v]
        if fts:
            out[f"field_{fid}"]["timestamp_changes"] = change_stats(
                [p[0] for p in fts], [p[1] for p in fts]
            )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="idle + load duration (default 30)")
    ap.add_argument(
        "--interval", type=float, default=0.1, help="sampling period in seconds (default 0.1)"
    )
    ap.add_argument("--no-load", action="store_true", help="do not start the torch matmul load")
    ap.add_argument(
        "--inline-samples", action="store_true", help="put raw samples in the printed JSON"
    )
    args = ap.parse_args()

    try:
        import pynvml as nv
    except Exception as exc:
        print(f"pynvml not importable ({type(exc).__name__}: {exc}); pip install nvidia-ml-py")
        return 2

    errs = Errors()
    report: dict[str, Any] = {
        "tool": "bench/gpu_smoke.py",
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "pid": os.getpid(),
        },
        "args": vars(args),
    }
    try:
        from importlib import metadata

        report["nvidia_ml_py_version"] = metadata.version("nvidia-ml-py")
    except Exception as exc:
        report["nvidia_ml_py_version"] = {"error": type(exc).__name__}

    lib_nf = getattr(nv, "NVMLError_LibraryNotFound", None)
    try:
        nv.nvmlInit()
    except Exception as exc:
        if lib_nf is not None and isinstance(exc, lib_nf):
            print(
                "no NVIDIA driver here (NVMLError_LibraryNotFound: libnvidia-ml.so.1 not loadable)"
            )
            return 3
        print(f"nvmlInit failed: {type(exc).__name__}: {exc}")
        return 4

    t_begin = time.monotonic()
    for key, fn_name in (
        ("driver_version", "nvmlSystemGetDriverVersion"),
        ("nvml_version", "nvmlSystemGetNVMLVersion"),
        ("cuda_driver_version", "nvmlSystemGetCudaDriverVersion"),
    ):
        fn = getattr(nv, fn_name, None)
        ok, val = errs.call(fn_name, fn) if fn else (False, "missing in pynvml")
        report[key] = to_str(val) if ok else {"error": val}

    ok, count = errs.call("nvmlDeviceGetCount", nv.nvmlDeviceGetCount)
    count = count if ok else 0
    handles: list[Any] = []
    devices: list[dict[str, Any]] = []
    for i in range(count):
        ok, h = errs.call("nvmlDeviceGetHandleByIndex", nv.nvmlDeviceGetHandleByIndex, i)
        if not ok:
            devices.append({"index": i, "error": h})
            continue
        handles.append((i, h))
        devices.append(device_info(nv, errs, i, h))
    report["device_count"] = count
    report["devices"] = devices
    log(f"{count} device(s): {[d.get('name') for d in devices]}")

    samples: dict[int, list[dict[str, Any]]] = {i: [] for i, _ in handles}

    def tick(phase: str) -> None:
        for i, h in handles:
            samples[i].append(sample(nv, errs, h, phase))

    # ~1 s with no CUDA context of ours.
    end_pre = time.monotonic() + 1.0
    while time.monotonic() < end_pre:
        tick("pre_context")
        time.sleep(args.interval)

    procs: dict[int, dict[str, Any]] = {i: {} for i, _ in handles}
    for i, h in handles:
        procs[i]["pre_context"] = proc_list(nv, errs, h, "nvmlDeviceGetComputeRunningProcesses")

    idle_s = args.seconds / 3.0
    state: dict[str, Any] = {}
    stop = threading.Event()
    load_thread = None
    if not args.no_load and handles:
        log("initialising torch/CUDA for the load phase")
        load_thread = start_load(stop, state)
    else:
        state["torch"] = {"available": False, "error": "--no-load" if args.no_load else "no device"}

    # Phases start after torch setup so they keep their lengths.
    t0 = time.monotonic()
    t_load = t0 + idle_s
    t_end = t0 + args.seconds

    util = {i: ProcUtil(nv, errs, h) for i, h in handles}
    for i, h in handles:
        procs[i]["idle_with_context"] = proc_list(
            nv, errs, h, "nvmlDeviceGetComputeRunningProcesses"
        )

    log(f"idle phase {idle_s:.1f}s")
    util_polls = [t_load + d for d in (2.0, 5.0, 8.0, 12.0, 16.0) if t_load + d < t_end - 0.5]
    proc_polls = [t_load + d for d in (3.0, 10.0) if t_load + d < t_end - 0.5]
    next_tick = time.monotonic()
    loading = False
    while True:
        now = time.monotonic()
        if now >= t_end:
            break
        phase = "load" if now >= t_load else "idle"
        if phase == "load" and not loading:
            loading = True
            log(f"load phase {t_end - t_load:.1f}s (torch: {state['torch'].get('available')})")
            if load_thread is not None:
                load_thread.start()
            for i, _ in handles:
                util[i].poll("first call at load start, lastSeen=0")
        tick(phase)
        if util_polls and now >= util_polls[0]:
            util_polls.pop(0)
            for i, _ in handles:
                util[i].poll("during load")
                util[i].poll("immediately again (expect no new samples)")
        if proc_polls and now >= proc_polls[0]:
            proc_polls.pop(0)
            for i, h in handles:
                procs[i][f"load_{len(procs[i])}"] = proc_list(
                    nv, errs, h, "nvmlDeviceGetComputeRunningProcesses"
                )
        next_tick += args.interval
        delay = next_tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_tick = time.monotonic()

    stop.set()
    if load_thread is not None and load_thread.is_alive():
        load_thread.join(timeout=10)
    for i, _ in handles:
        util[i].poll("after load ended")

    per_gpu = []
    for i, _ in handles:
        rows = samples[i]
        per_gpu.append(
            {
                "index": i,
                "phases": {
                    ph: phase_summary([r for r in rows if r["phase"] == ph])
                    for ph in ("pre_context", "idle", "load")
                },
                "compute_processes": procs[i],
                "process_utilization_calls": util[i].calls,
            }
        )
    report["per_gpu"] = per_gpu
    rets = {
        (r.get(f"f{fid}") or {}).get("nvmlReturn")
        for rows in samples.values()
        for r in rows
        for fid in FIELD_IDS
    }
    names: dict[str, str] = {}
    for ret in sorted(x for x in rets if isinstance(x, int)):
        if ret == 0:
            names["0"] = "NVML_SUCCESS"
            continue
        try:
            names[str(ret)] = nv.nvmlExceptionClass(ret).__name__
        except Exception as exc:
            names[str(ret)] = f"? ({type(exc).__name__})"
    report["field_nvmlReturn_names"] = names
    report["torch"] = state.get("torch")
    report["errors_seen"] = errs.by_class
    report["elapsed_s"] = round(time.monotonic() - t_begin, 2)
    errs.call("nvmlShutdown", nv.nvmlShutdown)

    raw = {
        str(i): [
            {k: (round(v, 6) if k in ("t", "t_end") else v) for k, v in r.items()}
            for r in samples[i]
        ]
        for i, _ in handles
    }
    if args.inline_samples:
        report["samples"] = raw
    text = json.dumps(report, indent=1, default=str)
    print(text)
    out_dir = os.environ.get("OUT")
    if out_dir:
        try:
            with open(os.path.join(out_dir, "gpu_smoke.json"), "w") as f:
                f.write(text + "\n")
            with open(os.path.join(out_dir, "gpu_smoke_samples.json"), "w") as f:
                f.write("{\n")
                for n, (k, rows) in enumerate(raw.items()):
                    f.write(f' "{k}": [\n')
                    f.write(",\n".join("  " + json.dumps(r, default=str) for r in rows))
                    f.write("\n ]" + ("," if n < len(raw) - 1 else "") + "\n")
                f.write("}\n")
        except OSError as exc:
            log(f"could not write to $OUT: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
