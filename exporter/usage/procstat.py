"""The node's CPU time from `<procfs>/stat`: what the estimate and attribution both read."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ProcError(Exception):
    """A procfs file is missing or not in the kernel's format."""


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """Aggregate CPU time from the first line of /proc/stat, in clock ticks."""

    busy: int
    total: int
    vcpus: int

    @property
    def busy_seconds(self) -> float:
        return self.busy / CLOCK_TICKS_PER_SECOND


def read_cpu_times(procfs: Path) -> CpuTimes:
    path = procfs / "stat"
    try:
        lines = path.read_text(encoding="ascii", errors="replace").splitlines()
    except OSError as exc:
        raise ProcError(f"cannot read {path}: {exc.strerror}") from None
    fields = lines[0].split() if lines else []
    if len(fields) < 5 or fields[0] != "cpu" or not all(f.isdigit() for f in fields[1:]):
        raise ProcError(f"{path}: first line is not the aggregate 'cpu' line of /proc/stat")
    # user nice system idle iowait irq softirq steal (guest time is already inside user/nice)
    t = [int(f) for f in fields[1:9]] + [0] * (9 - len(fields))
    user, nice, system, idle, iowait, irq, softirq, steal = t[:8]
    vcpus = sum(1 for line in lines[1:] if line.startswith("cpu") and line[3:4].isdigit())
    return CpuTimes(busy=user + nice + system + irq + softirq,
                    total=user + nice + system + idle + iowait + irq + softirq + steal,
                    vcpus=max(vcpus, 1))
