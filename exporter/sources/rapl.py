"""RAPL energy counters from the kernel's powercap sysfs tree (Intel, and AMD Zen)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from exporter import logs
from exporter.sources.base import DeviceEnergy, Reading, SourceContext, SourceSpec, Status
from exporter.sources.sysfs import MAX_SENSOR_WATTS, read_attribute, read_uint

ZONE_DIR = re.compile(r"^intel-rapl(:[0-9a-fA-F]+)+$")
"""`intel-rapl:0`, `intel-rapl:0:1`, `intel-rapl:1a`; never `intel-rapl-mmio:*` (a package copy)."""
PACKAGE_NAME = re.compile(r"^package-\d+(-die-\d+)?$")
COMPONENT_OF_DOMAIN = {"package": "cpu", "dram": "dram", "psys": "platform"}
"""core and uncore are inside package: published per zone, never added to a component."""
KNOWN_DOMAINS = ("package", "core", "uncore", "dram", "psys")

PERMISSION_HINT = (
    "energy_uj is readable by root only since Linux 5.10 (CVE-2020-8694): run the exporter as "
    "UID 0 (the chart does), or pass --no-collector.rapl to use the usage estimate")

MAX_ZONE_WATTS = MAX_SENSOR_WATTS
"""A step (a wrap included) that implies more than this over the time since the last read (at
least 1 s) is a reset or garbage, not energy: counted as nothing."""

log = logs.get("rapl")


class ZoneError(Exception):
    """A zone file is missing, unreadable or holds something other than a counter."""


def _zone_sort_key(zone: str) -> tuple[int, ...]:
    return tuple(int(part, 16) for part in zone.split(":")[1:])


def _read_uint(path: Path) -> int:
    return read_uint(path, error=ZoneError, what="a counter in microjoules",
                     permission_hint=PERMISSION_HINT)


@dataclass(slots=True)
class _Zone:
    path: Path
    domain: str
    max_uj: int
    last_uj: int | None = None
    total_uj: int = 0
    last_now: float = 0.0
    energy: Path = field(init=False)
    """`path / "energy_uj"`, made once: a Path per read costs more than the read."""

    def __post_init__(self) -> None:
        self.energy = self.path / "energy_uj"


class RaplSource:
    """Every RAPL zone under `<sysfs>/class/powercap`, wraparound corrected per zone."""

    def __init__(self, sysfs: Path) -> None:
        self._root = sysfs / "class" / "powercap"
        self._zones: dict[str, _Zone] = {}
        self._gone: dict[str, _Zone] = {}
        """Zones that vanished: their totals stay published, they never go down."""
        self._throttle = logs.Throttle(log, source="rapl")
        self._last_fault = ""

    def probe(self) -> Status:
        if not self._root.is_dir():
            return Status(False, f"no powercap tree at {self._root}: this host has no RAPL "
                                 "driver (cloud VMs and non-x86 hosts have none)", present=False)
        reading = self.read(0.0)
        if not self._zones:
            return Status(False, f"no intel-rapl zones under {self._root} (is the intel_rapl "
                                 "or amd_energy powercap driver loaded?)", present=False)
        counting = [z for z in self._zones.values() if z.last_uj is not None]
        components = frozenset(COMPONENT_OF_DOMAIN[z.domain] for z in counting
                               if z.domain in COMPONENT_OF_DOMAIN)
        zones = ", ".join(f"{zone} ({z.domain})" for zone, z in self._zones.items())
        if not counting:
            return Status(False, f"found zones {zones} but none could be read; "
                                 f"{self._first_fault()}")
        detail = f"reading {len(counting)} of {len(self._zones)} zones: {zones}"
        if not reading.up:
            detail += f"; {self._first_fault()}"
        return Status(True, detail, components)

    def _first_fault(self) -> str:
        return self._last_fault or "see the log"

    def _discover(self) -> None:
        try:
            present = {name for name in os.listdir(self._root) if ZONE_DIR.match(name)}
        except OSError as exc:
            self._throttle.fault("root", f"cannot list {self._root}: {exc.strerror}",
                                 path=self._root, err=exc.strerror or exc)
            present = set()
        if present == self._zones.keys():
            return  # the zones of the last tick (each tick: one listdir)
        for zone in set(self._zones) - present:
            self._gone[zone] = self._zones.pop(zone)
            log.warning(f"zone {zone} vanished from {self._root}; its total stays published "
                        "and a zone that comes back starts a new baseline")
        for zone in sorted(present - set(self._zones), key=_zone_sort_key):
            path = self._root / zone
            try:
                name = read_attribute(path / "name").strip()
                max_uj = _read_uint(path / "max_energy_range_uj")
            except (OSError, ZoneError) as exc:
                self._fault(zone, f"zone {zone} skipped: {exc}")
                continue
            domain = "package" if PACKAGE_NAME.match(name) else name
            if not max_uj:
                log.warning(f"zone {zone} has max_energy_range_uj 0: its wraps cannot be "
                            f"corrected (each restarts the baseline) and a step above "
                            f"{MAX_ZONE_WATTS:g} W is refused as garbage")
            if domain not in KNOWN_DOMAINS:
                log.info(f"zone {zone} has unknown domain {name!r}: published per zone, "
                         "not added to node energy")
            old = self._gone.pop(zone, None)
            self._zones[zone] = _Zone(path, domain, max_uj,
                                      total_uj=old.total_uj if old else 0)
        self._zones = dict(sorted(self._zones.items(), key=lambda kv: _zone_sort_key(kv[0])))

    def _fault(self, zone: str, message: str) -> None:
        self._last_fault = message
        self._throttle.fault(zone, message, path=self._root / zone)

    def read(self, now: float) -> Reading:
        """Energy per component since the previous read; each zone's total never decreases."""
        self._discover()
        delta_uj: dict[str, int] = {}
        up = bool(self._zones)
        for zone, z in self._zones.items():
            try:
                value = _read_uint(z.energy)
                if z.max_uj and value > z.max_uj:
                    raise ZoneError(f"{z.energy} reads {value}, above "
                                    f"max_energy_range_uj {z.max_uj}")
            except ZoneError as exc:
                up = False
                self._fault(zone, f"zone {zone} down: {exc}")
                continue
            if z.last_uj is not None:
                wrapped = value < z.last_uj
                if not wrapped:
                    step = value - z.last_uj
                elif z.max_uj:
                    step = z.max_uj - z.last_uj + value
                else:
                    step = 0  # no known range to correct with: restart the baseline
                seconds = max(now - z.last_now, 1.0)
                if step > MAX_ZONE_WATTS * 1e6 * seconds:
                    # A wrap is a wrap only when the energy it implies is physically possible:
                    # a counter that steps back (a glitch, a driver reload, a VM migration)
                    # or jumps ahead is a reset, and its step counts nothing.
                    up = False
                    how = (f"went back from {z.last_uj} to {value} uJ, which as a wrap of "
                           f"{z.max_uj} would be {step} uJ" if wrapped
                           else f"rose by {step} uJ")
                    self._fault(zone, f"zone {zone} down: {z.energy} {how} in "
                                      f"{max(now - z.last_now, 0.0):g} s, above "
                                      f"{MAX_ZONE_WATTS:g} W: a reset or a glitch, not energy; "
                                      "nothing counted, baseline restarted")
                    z.last_uj, z.last_now = value, now
                    continue
                z.total_uj += step
                component = COMPONENT_OF_DOMAIN.get(z.domain)
                if component is not None:
                    delta_uj[component] = delta_uj.get(component, 0) + step
            self._throttle.recovered(zone, f"zone {zone} readable again")
            z.last_uj, z.last_now = value, now
        totals = [DeviceEnergy(COMPONENT_OF_DOMAIN.get(z.domain), zone, z.total_uj / 1e6,
                               (("zone", zone), ("domain", z.domain)))
                  for zone, z in sorted({**self._gone, **self._zones}.items(),
                                        key=lambda kv: _zone_sort_key(kv[0]))]
        return Reading(up=up, joules={c: uj / 1e6 for c, uj in delta_uj.items()},
                       measurements=tuple(totals))


def _create(ctx: SourceContext) -> RaplSource:
    return RaplSource(ctx.sysfs)


SPEC = SourceSpec("rapl", "rapl", "RAPL energy counters from <path.sysfs>/class/powercap",
                  frozenset({"cpu", "dram", "platform"}), _create)
