"""NVIDIA GPU energy, power, MIG layout and processes from NVML (the only module using pynvml)."""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from exporter import logs
from exporter.sources.base import Reading, SourceContext, SourceSpec, Status
from exporter.sources.gpu import GpuProcessUse, GpuReading, MigSlice

NO_DRIVER = "no NVIDIA driver here (libnvidia-ml.so.1 not found): the GPU source is off"
INJECTION_ENV = "FOOTPRINT_GPU_INJECTION"
"""How the chart asks the NVIDIA runtime for the exporter's GPUs (its value gpu.injection)."""
INJECTION_HINTS = {
    "env": "the toolkit may refuse NVIDIA_VISIBLE_DEVICES in unprivileged pods "
           "(accept-nvidia-visible-devices-envvar-when-unprivileged = false, as on Bottlerocket): "
           "use gpu.injection=volume-mounts or cdi",
    "volume-mounts": "the toolkit needs accept-nvidia-visible-devices-as-volume-mounts = true "
                     "to read the device list from /var/run/nvidia-container-devices",
    "cdi": "the NVIDIA runtime must see the pod's cdi.k8s.io/ annotation (containerd: "
           "pod_annotations = [\"cdi.k8s.io/*\"] on the nvidia runtime; mode auto or cdi) and "
           "have a spec for nvidia.com/gpu=all (nvidia-ctk cdi list)",
}
"""What to check, per injection, when the driver library is missing (docs/install.md)."""


def no_driver() -> str:
    """NO_DRIVER, with what to check for the injection the chart chose (if it says which)."""
    mode = os.environ.get(INJECTION_ENV, "")
    hint = INJECTION_HINTS.get(mode)
    if hint is None:
        return NO_DRIVER
    return f"{NO_DRIVER}; gpu.injection={mode}: {hint}"
NO_PYNVML = ("the pynvml module (package nvidia-ml-py) is not installed: the GPU source is off "
             "(pip install nvidia-ml-py)")
NOT_MIG = 0xFFFFFFFF
"""gpuInstanceId and computeInstanceId of a process on a GPU with MIG off."""
MIG_ENABLE = 1
"""NVML_DEVICE_MIG_ENABLE, the current mode of a board with MIG on."""
MIG_RESCAN_READS = 60
"""Reads between MIG enumerations while the mode stays on (instances can be re-carved); the
enumeration itself waits for the next process refresh."""
PROCESSES_EVERY_S = 30.0
"""Default seconds (of the `now` given to `read`) between two refreshes of the process list,
the per-process utilisation and the MIG layout (about 2.4 ms of the 5.9 ms one H100 read took;
energy and power are read at every read). At the default 5 s tick, one read in six refreshes
them; docs/gpus.md#cadence says what this means for attribution."""
NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF
"""NVML_VALUE_NOT_AVAILABLE for usedGpuMemory (pynvml 11.5+ turns it into None itself)."""

LOST_HINT = ("it fell off the bus or hit a fatal error (see the Xid lines in the kernel log); "
             "reset it (nvidia-smi -r) or reboot the node")
PERMISSION_HINT = ("run the exporter as root with the NVIDIA device nodes visible "
                   "(the chart does)")

log = logs.get("nvml")


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


@dataclass(slots=True)
class _Gpu:
    uuid: str
    index: int
    product: str
    handle: Any = None
    source: str = ""
    """"counter" or "integrated" once decided (at the first successful read)."""
    last_mj: int | None = None
    last_mw: float | None = None
    last_now: float | None = None
    total_mj: float = 0.0
    step_mj: float = 0.0
    power_watts: float | None = None
    up: bool = False
    mig_mode: int | None = None
    """None: NVML has no MIG for this GPU (NotSupported); else the current mode."""
    mig: tuple[MigSlice, ...] = ()
    mig_age: int = 0
    mig_stale: bool = False
    last_seen_us: int = 0
    """The newest per-process utilisation sample's timeStamp seen (epoch microseconds)."""
    processes: tuple[GpuProcessUse, ...] = ()
    """What this read reports: at a refresh, the listed processes and any pid sampled but no
    longer listed; between refreshes, `held`."""
    held: tuple[GpuProcessUse, ...] = ()
    """The processes listed at the last refresh, with the utilisation it found (pids only
    sampled are left out: they had ended by then)."""
    mps_list: bool = True
    """NVML has an MPS process list for this GPU (False once it said NotSupported)."""
    refresh_due: bool = True
    """Refresh at the next read whatever the schedule: a new GPU, one back from down, or one
    whose last scheduled refresh came back incomplete (once)."""

    def label(self) -> str:
        return f"GPU {self.index} ({self.product}, {self.uuid})"

    def reading(self) -> GpuReading:
        up = self.up
        return GpuReading(uuid=self.uuid, index=self.index, product=self.product, up=up,
                          joules=self.step_mj / 1000.0 if up else 0.0,
                          joules_total=self.total_mj / 1000.0,
                          power_watts=self.power_watts if up else None,
                          source=self.source or "unknown", mig=self.mig,
                          processes=self.processes if up else ())


class NvmlSource:
    """Every NVIDIA GPU NVML sees, keyed by UUID: energy and power at every read; processes,
    their SM utilisation and MIG slices every `processes_every_s` of `now` (held between)."""

    def __init__(self, *, nvml: ModuleType | None = None,
                 processes_every_s: float = PROCESSES_EVERY_S) -> None:
        """`processes_every_s`: seconds of `now` between process refreshes (0: every read).
        Energy and power are read at every read whatever it is."""
        if not (math.isfinite(processes_every_s) and processes_every_s >= 0):
            raise ValueError(f"processes_every_s must be a finite number >= 0, "
                             f"not {processes_every_s!r}")
        self.processes_every_s = float(processes_every_s)
        self._refreshed_at: float | None = None
        """The `now` of the last scheduled refresh (None: none with a `now` yet)."""
        self._last_now: float | None = None
        self._nv: Any = nvml
        self._started = False
        self._gpus: dict[str, _Gpu] = {}
        self._throttle = logs.Throttle(log, source="nvml")
        self._last_fault = ""
        self._count_ok = True
        self.gpus: tuple[GpuReading, ...] = ()
        """Per-GPU readings of the latest read, in index order (down GPUs included)."""

    def probe(self) -> Status:
        """Start NVML once and take the baseline of every GPU."""
        if self._nv is None:
            try:
                self._nv = importlib.import_module("pynvml")
            except ImportError:
                return Status(False, NO_PYNVML, present=False)
        nv = self._nv
        if not self._started:
            try:
                nv.nvmlInit()
            except nv.NVMLError_LibraryNotFound:
                return Status(False, no_driver(), present=False)
            except nv.NVMLError as exc:
                hint = f": {PERMISSION_HINT}" if isinstance(exc, nv.NVMLError_NoPermission) else ""
                return Status(False, f"NVML did not start: {type(exc).__name__} ({exc}){hint}; "
                                     "the GPU source is off")
            self._started = True
        reading = self._read(None)
        if not self._gpus and self._count_ok and not self._last_fault:
            return Status(False, "NVML found no GPU on this host: the GPU source is off",
                          present=False)
        up = [g for g in self._gpus.values() if g.up]
        if not up:
            return Status(False, f"found {len(self._gpus)} GPU(s) but none could be read; "
                                 f"{self._last_fault or 'see the log'}")
        described = ", ".join(self._describe(g) for g in sorted(self._gpus.values(),
                                                                 key=lambda g: g.index))
        detail = f"reading {len(up)} of {len(self._gpus)} GPUs: {described}"
        if not reading.up:
            detail += f"; {self._last_fault or 'see the log'}"
        return Status(True, detail, frozenset({"gpu"}))

    def read(self, now: float) -> Reading:
        """Energy of all GPUs since the previous read; per-GPU readings land in `self.gpus`."""
        if not self._started:
            return Reading(up=False)
        return self._read(now)

    def close(self) -> None:
        """Shut NVML down (the library stays loaded)."""
        if self._started:
            self._started = False
            try:
                self._nv.nvmlShutdown()
            except self._nv.NVMLError as exc:
                log.info(f"nvmlShutdown failed: {exc}")

    @staticmethod
    def _describe(gpu: _Gpu) -> str:
        how = {"counter": "energy counter", "integrated": "integrated power"}.get(
            gpu.source, "not read yet")
        mig = ("MIG not supported" if gpu.mig_mode is None
               else f"MIG on, {len(gpu.mig)} slices" if gpu.mig_mode == MIG_ENABLE
               else "MIG off")
        return f"{gpu.index} {gpu.product} {gpu.uuid} ({how}, {mig})"

    def _fault(self, key: str, message: str) -> None:
        self._last_fault = message
        self._throttle.fault(key, message)

    def _gpu_fault(self, gpu: _Gpu, exc: Exception) -> None:
        nv = self._nv
        if isinstance(exc, nv.NVMLError_GpuIsLost):
            why = f"is lost: {LOST_HINT}"
        elif isinstance(exc, nv.NVMLError_NoPermission):
            why = f"denied access: {PERMISSION_HINT}"
        else:
            why = (f"cannot be read: {type(exc).__name__} ({exc}); check it with "
                   "`nvidia-smi -q -i " + gpu.uuid + "`")
        self._fault(gpu.uuid, f"{gpu.label()} {why}; its energy total is kept and the "
                              "other GPUs go on")

    def _scheduled(self, now: float | None) -> bool:
        """Whether this read refreshes every GPU's processes: the probe (the baseline), the
        first read with a `now`, then the read nearest to `processes_every_s` after the last
        scheduled refresh (within half a tick, so 5 s ticks refresh every 30 s, not 35)."""
        if now is None or self.processes_every_s <= 0 or self._refreshed_at is None \
                or now < self._refreshed_at:
            return True
        half_tick = 0.0
        if self._last_now is not None and now > self._last_now:
            half_tick = (now - self._last_now) / 2.0
        return now + half_tick >= self._refreshed_at + self.processes_every_s

    def _read(self, now: float | None) -> Reading:
        nv = self._nv
        seen: set[str] = set()
        scheduled = self._scheduled(now)
        try:
            count = int(nv.nvmlDeviceGetCount())
            self._count_ok = True
            self._throttle.recovered("count", "NVML counts GPUs again")
        except nv.NVMLError as exc:
            self._count_ok = False
            self._fault("count", f"NVML cannot count GPUs: {type(exc).__name__} ({exc}); "
                                 "every GPU is down until it can")
            count = 0
        identified = True
        for index in range(count):
            gpu = self._identify(index)
            if gpu is None:
                identified = False
                continue
            seen.add(gpu.uuid)
            self._read_gpu(gpu, now, scheduled)
        for gpu in self._gpus.values():
            if gpu.uuid not in seen:
                self._down(gpu)
        if now is not None:
            if scheduled:
                self._refreshed_at = now
            self._last_now = now
        gpus = sorted(self._gpus.values(), key=lambda g: (g.index, g.uuid))
        self.gpus = tuple(g.reading() for g in gpus)
        up_gpus = [g for g in gpus if g.up]
        up = self._count_ok and identified and bool(gpus) and len(up_gpus) == len(gpus)
        joules = {"gpu": sum(g.step_mj for g in up_gpus) / 1000.0} if up_gpus else {}
        return Reading(up=up, joules=joules, measurements=self.gpus)

    def _identify(self, index: int) -> _Gpu | None:
        nv = self._nv
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nv.nvmlDeviceGetUUID(handle))
            gpu = self._gpus.get(uuid)
            if gpu is None:
                product = _text(nv.nvmlDeviceGetName(handle))
        except nv.NVMLError as exc:
            known = next((g for g in self._gpus.values() if g.index == index), None)
            if known is None:
                self._fault(f"index {index}", f"GPU {index} cannot be identified: "
                                              f"{type(exc).__name__} ({exc})")
            else:
                self._gpu_fault(known, exc)  # marked down below, as not seen
            return None
        if gpu is None:
            gpu = self._gpus[uuid] = _Gpu(uuid, index, product)
            if self._started and self.gpus:
                log.info(f"new GPU {gpu.label()}")
        elif gpu.index != index:
            log.info(f"{gpu.label()} is now index {index}")
        gpu.index = index
        gpu.handle = handle
        return gpu

    @staticmethod
    def _down(gpu: _Gpu) -> None:
        gpu.up = False
        gpu.step_mj = 0.0
        gpu.last_mw = gpu.last_now = None  # integration restarts when it comes back
        gpu.refresh_due = True  # its processes are listed again as soon as it is back

    def _read_gpu(self, gpu: _Gpu, now: float | None, scheduled: bool) -> None:
        """Energy (and power) at every read; processes, utilisation and MIG at a refresh,
        else the last refresh's processes (`held`)."""
        nv = self._nv
        try:
            self._energy(gpu, now)
        except nv.NVMLError as exc:
            self._down(gpu)
            self._gpu_fault(gpu, exc)
            return
        gpu.up = True
        self._throttle.recovered(gpu.uuid, f"{gpu.label()} readable again")
        if gpu.mig_mode == MIG_ENABLE:
            gpu.mig_age += 1
        if not (scheduled or gpu.refresh_due):
            gpu.processes = gpu.held
            return
        gpu.refresh_due = False
        extras = f"{gpu.uuid}/processes"
        try:
            self._mig(gpu)
            gpu.processes, complete = self._processes(gpu)
        except nv.NVMLError as exc:
            gpu.processes = gpu.held = ()
            complete = False
            self._throttle.fault(extras, f"{gpu.label()}: cannot list its MIG devices or "
                                         f"processes: {type(exc).__name__} ({exc}); its energy "
                                         "is still read but not attributed to containers")
        else:
            self._throttle.recovered(extras, f"{gpu.label()}: processes readable again")
        if scheduled and not complete and self.processes_every_s > 0:
            gpu.refresh_due = True  # once: a retry that is incomplete again waits its turn

    def _energy(self, gpu: _Gpu, now: float | None) -> None:
        nv = self._nv
        mj: int | None = None
        if gpu.source != "integrated":
            try:
                mj = int(nv.nvmlDeviceGetTotalEnergyConsumption(gpu.handle))
            except nv.NVMLError_NotSupported:
                if gpu.source == "counter":
                    raise
                gpu.source = "integrated"
            else:
                gpu.source = "counter"
        try:
            mw = float(nv.nvmlDeviceGetPowerUsage(gpu.handle))
        except nv.NVMLError_NotSupported:
            if gpu.source == "integrated":
                raise
            mw = None
        gpu.power_watts = None if mw is None else mw / 1000.0
        if mj is not None:
            step: float = 0
            if gpu.last_mj is not None:
                if mj >= gpu.last_mj:
                    step = mj - gpu.last_mj
                else:
                    log.info(f"{gpu.label()}: energy counter went back from {gpu.last_mj} to "
                             f"{mj} mJ (driver reloaded?): new baseline")
            gpu.last_mj = mj
        else:
            assert mw is not None
            step = 0.0
            if now is not None and gpu.last_now is not None and gpu.last_mw is not None \
                    and now > gpu.last_now:
                step = (gpu.last_mw + mw) / 2.0 * (now - gpu.last_now)  # mW x s = mJ
            gpu.last_mw, gpu.last_now = mw, now
        gpu.step_mj = step
        gpu.total_mj += step

    def _mig(self, gpu: _Gpu) -> None:
        nv = self._nv
        try:
            mode: int | None = int(nv.nvmlDeviceGetMigMode(gpu.handle)[0])
        except nv.NVMLError_NotSupported:
            mode = None
        if mode != MIG_ENABLE:
            gpu.mig_mode, gpu.mig = mode, ()
            return
        if gpu.mig_mode == mode and gpu.mig_age < MIG_RESCAN_READS and not gpu.mig_stale:
            return
        board = int(nv.nvmlDeviceGetMemoryInfo(gpu.handle).total)
        slices: list[MigSlice] = []
        for i in range(int(nv.nvmlDeviceGetMaxMigDeviceCount(gpu.handle))):
            try:
                handle = nv.nvmlDeviceGetMigDeviceHandleByIndex(gpu.handle, i)
            except nv.NVMLError_NotFound:
                continue  # an empty slot
            uuid = _text(nv.nvmlDeviceGetUUID(handle))
            memory = int(nv.nvmlDeviceGetMemoryInfo(handle).total)
            if board <= 0 or memory <= 0:
                log.warning(f"{gpu.label()}: MIG device {uuid} reports {memory} of {board} "
                            "bytes of memory: left out (its holders are not charged)")
                continue
            slices.append(MigSlice(uuid, int(nv.nvmlDeviceGetGpuInstanceId(handle)),
                                   int(nv.nvmlDeviceGetComputeInstanceId(handle)),
                                   min(memory / board, 1.0)))
        gpu.mig = tuple(sorted(slices, key=lambda s: (s.gpu_instance_id, s.compute_instance_id)))
        gpu.mig_mode, gpu.mig_age, gpu.mig_stale = mode, 0, False

    def _utilisation(self, gpu: _Gpu) -> tuple[dict[int, float], bool]:
        """Mean SM utilisation per pid over the samples newer than `last_seen_us`, and whether
        NVML said it has none newer (NotFound), which a retry can fix."""
        nv = self._nv
        try:
            samples = nv.nvmlDeviceGetProcessUtilization(gpu.handle, gpu.last_seen_us)
        except nv.NVMLError_NotFound:
            return {}, True  # no sample newer than last_seen
        except nv.NVMLError_NotSupported:
            return {}, False  # MIG on, old GPUs: never any
        except nv.NVMLError as exc:
            if isinstance(exc, nv.NVMLError_GpuIsLost):
                raise
            self._throttle.fault(f"{gpu.uuid}/utilisation",
                                 f"{gpu.label()}: no per-process utilisation: "
                                 f"{type(exc).__name__} ({exc}); its processes are still listed")
            return {}, False
        values: dict[int, list[float]] = {}
        newest = gpu.last_seen_us
        for sample in samples:
            stamp = int(sample.timeStamp)
            if stamp <= gpu.last_seen_us:
                continue
            newest = max(newest, stamp)
            values.setdefault(int(sample.pid), []).append(float(sample.smUtil))
        gpu.last_seen_us = newest
        return {pid: sum(v) / len(v) for pid, v in values.items()}, not values

    def _mps_clients(self, gpu: _Gpu, listed: set[int]) -> list[Any]:
        """MPS clients (Volta and newer) that the compute list left out. Under MPS, NVML lists
        the MPS server as a compute process; its clients, each with its own host pid and
        memory, come from the MPS list (nvidia-smi's "M+C"), which is empty without MPS."""
        nv = self._nv
        if not gpu.mps_list:
            return []
        try:
            clients = nv.nvmlDeviceGetMPSComputeRunningProcesses(gpu.handle)
        except (nv.NVMLError_NotSupported, nv.NVMLError_FunctionNotFound):
            gpu.mps_list = False  # before Volta, or an old driver: never any
            return []
        return [p for p in clients if int(p.pid) not in listed]

    def _processes(self, gpu: _Gpu) -> tuple[tuple[GpuProcessUse, ...], bool]:
        """This refresh's processes (sets `held`), and whether it is complete: False when
        processes are listed but NVML had no new utilisation sample for any of them, or one
        names a MIG slice not enumerated yet."""
        nv = self._nv
        listed = list(nv.nvmlDeviceGetComputeRunningProcesses(gpu.handle))
        listed += self._mps_clients(gpu, {int(p.pid) for p in listed})
        util, no_sample = self._utilisation(gpu)
        slices = {(s.gpu_instance_id, s.compute_instance_id): s.uuid for s in gpu.mig}
        memory: dict[tuple[int, str | None], int | None] = {}
        for process in listed:
            pid = int(process.pid)
            gi, ci = int(process.gpuInstanceId), int(process.computeInstanceId)
            mig_uuid = None
            if gi != NOT_MIG:
                mig_uuid = slices.get((gi, ci))
                if mig_uuid is None:
                    gpu.mig_stale = True  # a slice made since the last enumeration
            used = process.usedGpuMemory
            used = None if used is None or int(used) == NOT_AVAILABLE else int(used)
            key = (pid, mig_uuid)
            if key in memory:  # listed twice: add up what is known
                before = memory[key]
                used = before if used is None else used + (before or 0)
            memory[key] = used

        def ordered(uses: list[GpuProcessUse]) -> tuple[GpuProcessUse, ...]:
            return tuple(sorted(uses, key=lambda u: (u.pid, u.mig_uuid or "")))

        uses = [GpuProcessUse(pid, mig_uuid, used, util.get(pid))
                for (pid, mig_uuid), used in memory.items()]
        gpu.held = ordered(uses)
        listed_pids = {pid for pid, _ in memory}
        uses += [GpuProcessUse(pid, None, None, sm) for pid, sm in util.items()
                 if pid not in listed_pids]  # sampled, but no longer (or never) listed
        complete = not (memory and no_sample) and not gpu.mig_stale
        return ordered(uses), complete


def _create(ctx: SourceContext) -> NvmlSource:
    return NvmlSource(nvml=ctx.nvml_module)


SPEC = SourceSpec("nvml", "nvml", "NVIDIA GPU energy, power and processes through NVML",
                  frozenset({"gpu"}), _create)
