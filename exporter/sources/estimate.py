"""Usage-based power estimate for hosts without sensors (Cloud Carbon Footprint's model).

CPU watts = vCPUs x (idle + (max - idle) x utilisation), utilisation from `/proc/stat`;
DRAM watts = GB of MemTotal x watts per GB. Energy is watts x the time between reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from exporter import logs
from exporter.schema import ConfigError, setting
from exporter.sources.base import Reading, SourceContext, SourceSpec, Status
from exporter.usage.procstat import CpuTimes, ProcError, read_cpu_times

log = logs.get("estimate")

ESTIMABLE = frozenset({"cpu", "dram"})


@dataclass(frozen=True)
class EstimateSettings:
    """Usage-based power model where no sensor exists (Cloud Carbon Footprint's coefficients)."""

    cpu_idle_watts_per_vcpu: float = setting(
        0.74, minimum=0.0, maximum=100.0,
        doc="watts per vCPU at 0% utilisation (CCF, AWS average)")
    cpu_max_watts_per_vcpu: float = setting(
        3.5, minimum=0.0, maximum=100.0,
        doc="watts per vCPU at 100% utilisation (CCF, AWS average)")
    dram_watts_per_gb: float = setting(
        0.392, minimum=0.0, maximum=10.0,
        doc="watts per GB of MemTotal (CCF: 0.000392 kWh per GB-hour)")

    def __post_init__(self) -> None:
        if self.cpu_max_watts_per_vcpu < self.cpu_idle_watts_per_vcpu:
            raise ConfigError(
                "estimate.cpu_max_watts_per_vcpu: expected a number >= "
                f"estimate.cpu_idle_watts_per_vcpu ({self.cpu_idle_watts_per_vcpu:g}), "
                f"got {self.cpu_max_watts_per_vcpu:g}")


def read_mem_total_bytes(procfs: Path) -> int:
    path = procfs / "meminfo"
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise ProcError(f"cannot read {path}: {exc.strerror}") from None
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    raise ProcError(f"{path}: no 'MemTotal: <n> kB' line")


class EstimateSource:
    """Estimates the components no sensor covers; `components` says which those are."""

    def __init__(self, procfs: Path, settings: EstimateSettings,
                 components: frozenset[str]) -> None:
        self._procfs = procfs
        self._settings = settings
        self._components = components & ESTIMABLE
        self._last_cpu: CpuTimes | None = None
        self._last_now: float | None = None
        self._throttle = logs.Throttle(log, source="estimate")

    def probe(self) -> Status:
        if not self._components:
            return Status(False, "not needed: a sensor covers cpu and dram", present=False)
        try:
            cpu = read_cpu_times(self._procfs)
            mem = read_mem_total_bytes(self._procfs)
        except ProcError as exc:
            return Status(False, f"{exc}; check --path.procfs", present=True)
        s = self._settings
        parts = []
        if "cpu" in self._components:
            parts.append(f"cpu: {cpu.vcpus} vCPUs x {s.cpu_idle_watts_per_vcpu:g}-"
                         f"{s.cpu_max_watts_per_vcpu:g} W by utilisation")
        if "dram" in self._components:
            parts.append(f"dram: {mem / 1e9:.1f} GB x {s.dram_watts_per_gb:g} W/GB")
        return Status(True, "; ".join(parts), self._components)

    def read(self, now: float) -> Reading:
        try:
            cpu = read_cpu_times(self._procfs)
            mem_bytes = read_mem_total_bytes(self._procfs) if "dram" in self._components else 0
        except ProcError as exc:
            # Keep the last good sample: the next good one covers the gap at its average use.
            self._throttle.fault("proc", f"estimate paused: {exc}", path=self._procfs, err=exc)
            return Reading(up=False)
        self._throttle.recovered("proc", "estimate resumed: procfs readable again")
        last_cpu, last_now = self._last_cpu, self._last_now
        self._last_cpu, self._last_now = cpu, now
        if last_cpu is None or last_now is None or now <= last_now:
            return Reading(up=True)
        seconds = now - last_now
        joules: dict[str, float] = {}
        s = self._settings
        if "cpu" in self._components:
            total = cpu.total - last_cpu.total
            busy = cpu.busy - last_cpu.busy
            utilisation = min(max(busy / total, 0.0), 1.0) if total > 0 else 0.0
            watts = cpu.vcpus * (s.cpu_idle_watts_per_vcpu + (
                s.cpu_max_watts_per_vcpu - s.cpu_idle_watts_per_vcpu) * utilisation)
            joules["cpu"] = watts * seconds
        if "dram" in self._components:
            joules["dram"] = mem_bytes / 1e9 * s.dram_watts_per_gb * seconds
        return Reading(up=True, joules=joules)


def _create(ctx: SourceContext) -> EstimateSource:
    return EstimateSource(ctx.procfs, ctx.settings or EstimateSettings(),
                          ESTIMABLE & ctx.uncovered)


SPEC = SourceSpec("estimate", "estimated",
                  "utilisation-based estimate for cpu/dram where no sensor covers them",
                  ESTIMABLE, _create, settings=EstimateSettings)
