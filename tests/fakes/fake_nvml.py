"""A fake `pynvml` module (package nvidia-ml-py) for tests, driven by test code.

It mirrors the real module where the exporter touches it: function names and arguments,
return shapes (objects with pynvml's attribute names, `str` strings as nvidia-ml-py 13.x
returns), constants, and the `NVMLError` class hierarchy, generated per error code the way
pynvml's `_extractNVMLErrorsAsClasses` does (`NVMLError(6)` is an `NVMLError_NotFound`).
The exception classes are the fake's own: the fake needs neither nvidia-ml-py nor a driver,
and `tests/test_nvml.py` checks that names and codes match the real module's when it is
installed. Behaviours follow docs/gpu-readings.md (real H100 readings):

- the energy counter is in mJ since the driver loaded (not zero at start) and advances with
  fake time; GPUs older than Volta raise `NVMLError_NotSupported` for it;
- `nvmlDeviceGetPowerUsage` is the mean of the last second of true power on H100 (it lags a
  step by about 1 s and equals field 185) and the instant value on A100 and older; field 186
  is always the instant value;
- `nvmlDeviceGetProcessUtilization(h, lastSeen)` returns only the latest sample per process
  newer than lastSeen (`util_backlog=True` returns every newer sample, as the NVML docs
  describe a buffer), raises `NVMLError_NotFound` when none is newer, and
  `NVMLError_NotSupported` with MIG on; timeStamps are epoch microseconds, about 120 ms
  before the call;
- `nvmlDeviceGetComputeRunningProcesses` returns `[]` with no process; gpuInstanceId and
  computeInstanceId are 0xFFFFFFFF with MIG off;
- MPS: a client (`FakeProcess.mps_client`) is in `nvmlDeviceGetMPSComputeRunningProcesses`
  and, as nvidia-smi's "M+C" rows show, in the compute list beside the MPS server's own
  process; before Volta (`FakeGpu.mps_list=False`, the P100) the MPS list raises NotSupported
  and only the server is listed (NVIDIA's MPS guide);
- a lost GPU raises `NVMLError_GpuIsLost` from every call that names it (its handle, its MIG
  devices' handles, and `nvmlDeviceGetHandleByIndex` at its index).

Every pynvml function the fake has counts its calls in `FakeNvml.calls` (a `Counter` keyed by
the function's name; `nvmlInitWithFlags` counts as `nvmlInit`, the `_v3` process list as the
plain one), whether the call succeeds or raises; `take_calls()` returns them and starts again
from zero. That is how tests check what each read costs in NVML calls.
"""

from __future__ import annotations

import math
import string
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_VGPU_ECC_NOT_SUPPORTED = 22
NVML_ERROR_INSUFFICIENT_RESOURCES = 23
NVML_ERROR_FREQ_NOT_SUPPORTED = 24
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_DEPRECATED = 26
NVML_ERROR_NOT_READY = 27
NVML_ERROR_GPU_NOT_FOUND = 28
NVML_ERROR_INVALID_STATE = 29
NVML_ERROR_RESET_TYPE_NOT_SUPPORTED = 30
NVML_ERROR_UNKNOWN = 999

NVML_DEVICE_MIG_DISABLE = 0x0
NVML_DEVICE_MIG_ENABLE = 0x1
NVML_FI_DEV_POWER_AVERAGE = 185
NVML_FI_DEV_POWER_INSTANT = 186
NVML_VALUE_TYPE_UNSIGNED_INT = 1
NVML_VALUE_NOT_AVAILABLE_ulonglong = 0xFFFFFFFFFFFFFFFF  # a c_ulonglong(-1) in pynvml
NOT_MIG = 0xFFFFFFFF
WALL_START_US = 1_795_701_545_757_638
"""Epoch microseconds at fake time 0 (a timeStamp the real H100 returned)."""
SAMPLE_AGE_US = 120_000
"""How long before a call its latest utilisation sample was taken, on the real H100."""


class NVMLError(Exception):
    """pynvml's base class: `NVMLError(code)` builds the code's subclass."""

    _valClassMapping: dict[int, type[NVMLError]] = {}  # noqa: RUF012 (as pynvml)
    _errcode_to_string = {  # noqa: RUF012
        NVML_ERROR_UNINITIALIZED: "Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED: "Not Supported",
        NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
        NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
        NVML_ERROR_NOT_FOUND: "Not Found",
        NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
        NVML_ERROR_INSUFFICIENT_POWER: "Insufficient External Power",
        NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
        NVML_ERROR_TIMEOUT: "Timeout",
        NVML_ERROR_IRQ_ISSUE: "Interrupt Request Issue",
        NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
        NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
        NVML_ERROR_CORRUPTED_INFOROM: "Corrupted infoROM",
        NVML_ERROR_GPU_IS_LOST: "GPU is lost",
        NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
        NVML_ERROR_OPERATING_SYSTEM: "The operating system has blocked the request.",
        NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
        NVML_ERROR_MEMORY: "Insufficient Memory",
        NVML_ERROR_UNKNOWN: "Unknown Error",
    }
    value: int

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __str__(self) -> str:
        return self._errcode_to_string.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NVMLError) and self.value == other.value

    __hash__ = None  # type: ignore[assignment]  # as pynvml: __eq__ without __hash__


def _error_classes() -> dict[str, type[NVMLError]]:
    """`NVML_ERROR_GPU_IS_LOST` -> `NVMLError_GpuIsLost`, as pynvml names them."""
    module = sys.modules[__name__]
    made: dict[str, type[NVMLError]] = {}
    for const in [x for x in dir(module) if x.startswith("NVML_ERROR_")]:
        name = "NVMLError_" + string.capwords(const.replace("NVML_ERROR_", ""), "_").replace(
            "_", "")
        code = getattr(module, const)

        def new(cls: type[NVMLError], *args: object, _code: int = code) -> NVMLError:
            return NVMLError.__new__(cls, _code)

        cls = type(name, (NVMLError,), {"__new__": new, "__module__": __name__})
        NVMLError._valClassMapping[code] = cls
        setattr(module, name, cls)
        made[name] = cls
    return made


ERROR_CLASSES = _error_classes()
NVMLError_NotSupported = ERROR_CLASSES["NVMLError_NotSupported"]
NVMLError_NoPermission = ERROR_CLASSES["NVMLError_NoPermission"]
NVMLError_NotFound = ERROR_CLASSES["NVMLError_NotFound"]
NVMLError_LibraryNotFound = ERROR_CLASSES["NVMLError_LibraryNotFound"]
NVMLError_GpuIsLost = ERROR_CLASSES["NVMLError_GpuIsLost"]
NVMLError_Uninitialized = ERROR_CLASSES["NVMLError_Uninitialized"]
NVMLError_InvalidArgument = ERROR_CLASSES["NVMLError_InvalidArgument"]

MIB = 1 << 20


class Friendly:
    """pynvml's nvmlFriendlyObject / ctypes structs: plain attributes."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.__dict__})"


@dataclass
class FakeProcess:
    """A CUDA process on a GPU (or on one of its MIG devices, by instance ids)."""

    pid: int
    used_memory: int | None = 1_050_673_152
    gpu_instance_id: int = NOT_MIG
    compute_instance_id: int = NOT_MIG
    mps_client: bool = False
    """A client of the GPU's MPS server (nvidia-smi type "M+C"): in the MPS process list, and
    in the compute list only where `FakeGpu.compute_lists_mps_clients`."""


@dataclass
class FakeMigDevice:
    """One MIG device: a compute instance in a GPU instance."""

    uuid: str
    profile: str
    gpu_instance_id: int
    compute_instance_id: int
    memory_total: int
    handle: FakeHandle | None = None


@dataclass
class FakeGpu:
    """One physical GPU as the fake driver sees it."""

    name: str
    uuid: str
    memory_total: int
    energy_counter: bool = True
    power_lag_s: float = 1.0
    """PowerUsage is the mean true power over this window (H100: 1 s); 0: instant (A100-)."""
    watts: float = 80.0
    energy_mj: float = 2_168_441.0
    power_limit_mw: int = 700_000
    mig_capable: bool = True
    mig_mode: int = NVML_DEVICE_MIG_DISABLE
    max_mig_devices: int = 7
    mig_slots: list[FakeMigDevice | None] = field(default_factory=list)
    processes: list[FakeProcess] = field(default_factory=list)
    samples: list[Friendly] = field(default_factory=list)
    util_backlog: bool = False
    mps_list: bool = True
    """Volta and newer: `nvmlDeviceGetMPSComputeRunningProcesses` answers (the clients, or
    `[]` without MPS). False (older GPUs): it raises NotSupported and MPS clients are in no
    list: only the MPS server (an ordinary FakeProcess) is seen, as NVIDIA's MPS guide says."""
    compute_lists_mps_clients: bool = True
    """nvidia-smi shows clients as "M+C" (MPS and compute contexts) beside the server's "C":
    the compute list holds them too. False: only the MPS list does."""
    lost: bool = False
    steps: list[tuple[float, float]] = field(default_factory=list)
    """(fake time, true watts from then on)."""
    handle: FakeHandle | None = None


@dataclass(eq=False)
class FakeHandle:
    """Opaque, like pynvml's c_nvmlDevice_t: the exporter must only pass it back."""

    gpu: FakeGpu
    mig: FakeMigDevice | None = None


def h100(uuid: str = "GPU-d2e6c512-1c8c-b4b8-a8c8-6406cd97ac76") -> FakeGpu:
    """NVIDIA H100 80GB HBM3: energy counter, 1 s average PowerUsage, MIG capable (off)."""
    return FakeGpu("NVIDIA H100 80GB HBM3", uuid, 81_559 * MIB, watts=123.8)


def a100_mig(uuid: str = "GPU-5b6f2a10-0c3e-4d1a-9f57-a100a100a100") -> FakeGpu:
    """NVIDIA A100-SXM4-40GB with MIG on: 3g.20gb + 2g.10gb + 2g.10gb (7 of 7 slices)."""
    gpu = FakeGpu("NVIDIA A100-SXM4-40GB", uuid, 40_960 * MIB, power_lag_s=0.0, watts=60.0,
                  power_limit_mw=400_000, mig_mode=NVML_DEVICE_MIG_ENABLE)
    gpu.mig_slots = [
        FakeMigDevice("MIG-3c1d3a3e-5d33-5b8a-9a2e-000000000003", "3g.20gb", 2, 0, 19_968 * MIB),
        FakeMigDevice("MIG-3c1d3a3e-5d33-5b8a-9a2e-000000000002", "2g.10gb", 3, 0, 9_856 * MIB),
        None,
        FakeMigDevice("MIG-3c1d3a3e-5d33-5b8a-9a2e-000000000005", "2g.10gb", 5, 0, 9_856 * MIB),
        None, None, None,
    ]
    return gpu


def p100(uuid: str = "GPU-0f0e0d0c-1111-2222-3333-00000000f100") -> FakeGpu:
    """Tesla P100-PCIE-16GB (Pascal): no energy counter, instant PowerUsage, no MIG."""
    return FakeGpu("Tesla P100-PCIE-16GB", uuid, 16_280 * MIB, energy_counter=False,
                   power_lag_s=0.0, watts=30.0, power_limit_mw=250_000, mig_capable=False,
                   mps_list=False)


def _process_infos(h: FakeHandle, procs: Sequence[FakeProcess]) -> list[Friendly]:
    """nvmlProcessInfo_t of `procs`, only those of the MIG device when `h` is one."""
    if h.mig is not None:
        procs = [p for p in procs if (p.gpu_instance_id, p.compute_instance_id)
                 == (h.mig.gpu_instance_id, h.mig.compute_instance_id)]
    return [Friendly(pid=p.pid, usedGpuMemory=p.used_memory, gpuInstanceId=p.gpu_instance_id,
                     computeInstanceId=p.compute_instance_id) for p in procs]


class FakeNvml(ModuleType):
    """The fake module: pass an instance where the exporter takes the pynvml module."""

    def __init__(self, gpus: Sequence[FakeGpu] = (), *, library_found: bool = True,
                 init_error: int | None = None) -> None:
        super().__init__("pynvml")
        for name, cls in ERROR_CLASSES.items():
            setattr(self, name, cls)
        self.NVMLError = NVMLError
        self.gpus = list(gpus)
        self.library_found = library_found
        self.init_error = init_error
        self.refcount = 0
        self.time = 0.0
        self.calls: Counter[str] = Counter()
        """Calls per pynvml function name, failed ones included."""
        for gpu in self.gpus:
            self._attach(gpu)

    def __getattr__(self, name: str) -> Any:
        module = sys.modules[__name__]
        if name.startswith("NVML_") and hasattr(module, name):
            return getattr(module, name)
        raise AttributeError(f"the fake pynvml has no {name!r}")

    def _attach(self, gpu: FakeGpu) -> None:
        gpu.handle = gpu.handle or FakeHandle(gpu)
        if not gpu.steps:
            gpu.steps = [(-math.inf, gpu.watts)]
        for mig in gpu.mig_slots:
            if mig is not None and mig.handle is None:
                mig.handle = FakeHandle(gpu, mig)

    # ---- test controls -------------------------------------------------------------------

    def add_gpu(self, gpu: FakeGpu) -> FakeGpu:
        self._attach(gpu)
        self.gpus.append(gpu)
        return gpu

    def set_watts(self, gpu: FakeGpu, watts: float) -> None:
        """True power from now on (PowerUsage follows after its lag)."""
        gpu.watts = watts
        gpu.steps.append((self.time, watts))

    def advance(self, seconds: float) -> None:
        """Fake time passes; every energy counter adds its true power times the time."""
        for gpu in self.gpus:
            gpu.energy_mj += gpu.watts * seconds * 1000.0
        self.time += seconds

    def reset_counter(self, gpu: FakeGpu, to_mj: float = 1_234.0) -> None:
        """A driver reload: the energy counter starts again from about zero."""
        gpu.energy_mj = to_mj

    def take_calls(self) -> Counter[str]:
        """The calls counted since the last `take_calls()` (or the start); counting restarts."""
        taken, self.calls = self.calls, Counter()
        return taken

    def now_us(self) -> int:
        return WALL_START_US + round(self.time * 1e6)

    def add_sample(self, gpu: FakeGpu, pid: int, sm_util: int, mem_util: int = 0, *,
                   age_us: int = SAMPLE_AGE_US) -> int:
        """A per-process utilisation sample taken `age_us` before now; returns its timeStamp."""
        stamp = self.now_us() - age_us
        gpu.samples.append(Friendly(pid=pid, timeStamp=stamp, smUtil=sm_util, memUtil=mem_util,
                                    encUtil=0, decUtil=0))
        return stamp

    # ---- helpers -------------------------------------------------------------------------

    def _enter(self, call: str, handle: Any = None) -> FakeHandle | None:
        self.calls[call] += 1
        if self.refcount <= 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        if handle is None:
            return None
        if not isinstance(handle, FakeHandle):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if handle.gpu.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        return handle

    def _board(self, call: str, handle: Any) -> FakeGpu:
        h = self._enter(call, handle)
        assert h is not None
        if h.mig is not None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)  # board-level only (power, energy, MIG)
        return h.gpu

    def _power_mw(self, gpu: FakeGpu, window: float) -> float:
        if window <= 0:
            return gpu.watts * 1000.0
        start, end = self.time - window, self.time
        joules = 0.0
        for i, (t, w) in enumerate(gpu.steps):
            t_next = gpu.steps[i + 1][0] if i + 1 < len(gpu.steps) else math.inf
            lo, hi = max(t, start), min(t_next, end)
            if hi > lo:
                joules += w * (hi - lo)
        return joules / window * 1000.0

    # ---- the pynvml surface --------------------------------------------------------------

    def nvmlInitWithFlags(self, flags: int) -> None:
        self.calls["nvmlInit"] += 1
        if not self.library_found:
            raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.refcount += 1

    def nvmlInit(self) -> None:
        self.nvmlInitWithFlags(0)

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.refcount -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return "580.159.04"

    def nvmlSystemGetNVMLVersion(self) -> str:
        self._enter("nvmlSystemGetNVMLVersion")
        return "13.580.159.04"

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[index]
        if gpu.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        assert gpu.handle is not None
        return gpu.handle

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        h = self._enter("nvmlDeviceGetUUID", handle)
        assert h is not None
        return h.mig.uuid if h.mig else h.gpu.uuid

    def nvmlDeviceGetName(self, handle: Any) -> str:
        h = self._enter("nvmlDeviceGetName", handle)
        assert h is not None
        return f"{h.gpu.name} MIG {h.mig.profile}" if h.mig else h.gpu.name

    def nvmlDeviceGetIndex(self, handle: Any) -> int:
        return self.gpus.index(self._board("nvmlDeviceGetIndex", handle))

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        gpu = self._board("nvmlDeviceGetTotalEnergyConsumption", handle)
        if not gpu.energy_counter:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return int(gpu.energy_mj)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        gpu = self._board("nvmlDeviceGetPowerUsage", handle)
        return round(self._power_mw(gpu, gpu.power_lag_s))

    def nvmlDeviceGetPowerManagementLimit(self, handle: Any) -> int:
        return self._board("nvmlDeviceGetPowerManagementLimit", handle).power_limit_mw

    def nvmlDeviceGetFieldValues(self, handle: Any, fieldIds: Sequence[int]) -> list[Friendly]:
        gpu = self._board("nvmlDeviceGetFieldValues", handle)
        values = {NVML_FI_DEV_POWER_AVERAGE: self._power_mw(gpu, gpu.power_lag_s),
                  NVML_FI_DEV_POWER_INSTANT: self._power_mw(gpu, 0.0)}
        out = []
        for fid in fieldIds:
            known = fid in values
            out.append(Friendly(fieldId=fid, scopeId=0, timestamp=self.now_us(), latencyUsec=0,
                                valueType=NVML_VALUE_TYPE_UNSIGNED_INT,
                                nvmlReturn=NVML_SUCCESS if known else NVML_ERROR_NOT_SUPPORTED,
                                value=Friendly(uiVal=round(values.get(fid, 0.0)))))
        return out

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Friendly:
        h = self._enter("nvmlDeviceGetMemoryInfo", handle)
        assert h is not None
        if h.mig is not None:
            total = h.mig.memory_total
            procs = [p for p in h.gpu.processes if
                     (p.gpu_instance_id, p.compute_instance_id)
                     == (h.mig.gpu_instance_id, h.mig.compute_instance_id)]
        else:
            total, procs = h.gpu.memory_total, h.gpu.processes
        used = sum(p.used_memory or 0 for p in procs)
        if version:
            return Friendly(version=version, total=total, reserved=0, free=total - used,
                            used=used)
        return Friendly(total=total, free=total - used, used=used)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Friendly]:
        h = self._enter("nvmlDeviceGetComputeRunningProcesses", handle)
        assert h is not None
        gpu = h.gpu
        procs = [p for p in gpu.processes
                 if not p.mps_client or (gpu.mps_list and gpu.compute_lists_mps_clients)]
        return _process_infos(h, procs)

    nvmlDeviceGetComputeRunningProcesses_v3 = nvmlDeviceGetComputeRunningProcesses

    def nvmlDeviceGetMPSComputeRunningProcesses(self, handle: Any) -> list[Friendly]:
        h = self._enter("nvmlDeviceGetMPSComputeRunningProcesses", handle)
        assert h is not None
        if not h.gpu.mps_list:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return _process_infos(h, [p for p in h.gpu.processes if p.mps_client])

    nvmlDeviceGetMPSComputeRunningProcesses_v3 = nvmlDeviceGetMPSComputeRunningProcesses

    def nvmlDeviceGetProcessUtilization(self, handle: Any, timeStamp: int) -> list[Friendly]:
        h = self._enter("nvmlDeviceGetProcessUtilization", handle)
        assert h is not None
        if h.mig is not None or h.gpu.mig_mode == NVML_DEVICE_MIG_ENABLE:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        newer = [s for s in h.gpu.samples if s.timeStamp > timeStamp]
        if not newer:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        if h.gpu.util_backlog:
            return newer
        latest: dict[int, Friendly] = {}
        for s in newer:
            if s.pid not in latest or s.timeStamp > latest[s.pid].timeStamp:
                latest[s.pid] = s
        return list(latest.values())

    def nvmlDeviceGetMigMode(self, handle: Any) -> list[int]:
        gpu = self._board("nvmlDeviceGetMigMode", handle)
        if not gpu.mig_capable:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return [gpu.mig_mode, gpu.mig_mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:
        gpu = self._board("nvmlDeviceGetMaxMigDeviceCount", handle)
        if not gpu.mig_capable:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return gpu.max_mig_devices

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int) -> FakeHandle:
        gpu = self._board("nvmlDeviceGetMigDeviceHandleByIndex", handle)
        if not gpu.mig_capable:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if not 0 <= index < gpu.max_mig_devices:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        mig = gpu.mig_slots[index] if index < len(gpu.mig_slots) else None
        if mig is None or gpu.mig_mode != NVML_DEVICE_MIG_ENABLE:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        if mig.handle is None:
            mig.handle = FakeHandle(gpu, mig)
        return mig.handle

    def nvmlDeviceIsMigDeviceHandle(self, handle: Any) -> int:
        h = self._enter("nvmlDeviceIsMigDeviceHandle", handle)
        assert h is not None
        return int(h.mig is not None)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: Any) -> FakeHandle:
        h = self._enter("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", handle)
        assert h is not None
        if h.mig is None:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        assert h.gpu.handle is not None
        return h.gpu.handle

    def nvmlDeviceGetGpuInstanceId(self, handle: Any) -> int:
        h = self._enter("nvmlDeviceGetGpuInstanceId", handle)
        assert h is not None
        if h.mig is None:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return h.mig.gpu_instance_id

    def nvmlDeviceGetComputeInstanceId(self, handle: Any) -> int:
        h = self._enter("nvmlDeviceGetComputeInstanceId", handle)
        assert h is not None
        if h.mig is None:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return h.mig.compute_instance_id
