"""Power and energy sensors of the kernel's hwmon class, for hosts without RAPL.

ARM servers (Ampere eMAG and Altra through `xgene-hwmon`, NVIDIA Grace through ACPI power
meters), IBM POWER (`ibmpowernv`), ACPI 4.0 power meters and a few others publish what they
measure under `<sysfs>/class/hwmon/hwmon*/` (Documentation/hwmon/sysfs-interface.rst):

- `energy<N>_input`: cumulative energy in microjoules. Preferred: the step between two reads is
  exact, in integer microjoules (a counter that goes down restarts its baseline).
- `power<N>_average` (preferred) or `power<N>_input`: power in microwatts, integrated between
  two reads with the trapezoid rule, `(previous + current) / 2 x seconds`.

Each device has a `name` file (its driver); each sensor an optional `<sensor>_label`
(`power<N>_oem_info` for ACPI power meters). A device whose `name` is only in `device/` (the
legacy registration of older kernels) is read there, as is one whose sensor files are only there.

Which component a sensor feeds: the first row that matches, in this order, on the sensor's
label (case-insensitive; the device's `name` when the sensor has no label):

| driver (`name`) | label | component |
|---|---|---|
| `amdgpu`, `radeon`, `nouveau`, `i915`, `xe`, `nvidia` | any | none: a GPU (gpu is NVML's) |
| `power_meter` | contains `energy`, `throttle` or `samples` | none: not a power reading |
| `power_meter` | contains `output` | none: a regulator's output (its input is counted) |
| `power_meter` | contains `sysio` or the word `soc` | none: the SoC rail, inside the socket |
| `power_meter` | contains `module power` (GH200) | platform (CPU, GPU, HBM and DRAM) |
| `power_meter` | contains `grace power` | platform, socket level (cores, SoC, LPDDR5X) |
| `apm_xgene` | `IO power` | none: the SoC's I/O domain, neither cores nor node |
| `ibmpowernv` | `Chip N` | cpu (the whole processor chip) |
| `ibmpowernv` | `Chip N Vdd`, `Chip N Vdn` | cpu, inside (rails of the chip) |
| `ibmpowernv` | `APSS N` | none: board supply channels (one repeats `System`) |
| `fam15h_power` | any | cpu |
| any | contains `dram`, `memory`, `mem` or `dimm` | dram |
| any | contains `total`, `system`, `platform` or `node` | platform |
| any | contains `cpu`, `package` or `socket` | cpu (`CPU power`, `Esocket0`) |
| any | contains `core` | cpu, inside (`Ecore000`, `CORE VRD`) |
| `power_meter` | anything else, or no label | platform (the system's input power) |
| anything else | | none (logged once at info) |

A sensor is never added where it would count energy twice, in this order:

1. per component, only the coarsest sensors are added: a sensor "inside" (per-core counters,
   rails of a chip, a Grace socket under its GH200 module) is not added where a coarser sensor of
   that component exists;
2. one driver per component: where two drivers measure the same component at the same level,
   the one with energy counters (else the lowest hwmon index) is used, the other is not added;
3. within one device, a power sensor is not added where an energy counter of that device covers
   the same component.

platform overlaps cpu and dram (as RAPL psys does): it is never charged to containers. Sensors
that are not added are not read at all (amd_energy's per-core counters cost an inter-processor
interrupt each). `Reading.zones` stays empty: `footprint_rapl_energy_joules_total` is RAPL's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from exporter import logs
from exporter.sources.base import Reading, SourceContext, SourceSpec, Status
from exporter.sources.sysfs import MAX_SENSOR_WATTS, read_attribute, read_uint

COMPONENTS = frozenset({"cpu", "dram", "platform"})
"""What hwmon can own; gpu is NVML's."""
DEVICE_DIR = re.compile(r"^hwmon(\d+)$")
SENSOR_FILE = re.compile(r"^(energy|power)(\d+)_(input|average)$")
MAX_LABEL_BYTES = 128
FIRST_STEP_SECONDS = 3600.0
"""The time an energy counter's first step after the probe is checked against (the probe has no
clock): the longest --collector.interval."""

PERMISSION_HINT = (
    "some hwmon energy files are readable by root only (amd_energy since CVE-2020-12912): run "
    "the exporter as UID 0 (the chart does), or pass --no-collector.hwmon")
DRIVER_HINT = ("the driver failed to measure (see the kernel log: dmesg); the other sensors go "
               "on, and --no-collector.hwmon turns the source off")

GPU_DRIVERS = frozenset({"amdgpu", "radeon", "nouveau", "i915", "xe", "nvidia"})

PACKAGE, INSIDE = 2, 1
"""Levels within a component: only the coarsest present are added (cpu: package over per-core
counters and rails; platform: the node or GH200 module over a Grace socket)."""

log = logs.get("hwmon")


@dataclass(frozen=True, slots=True)
class _Rule:
    driver: str | None
    pattern: re.Pattern[str]
    component: str | None
    level: int
    why: str


def _rule(driver: str | None, pattern: str, component: str | None, level: int = PACKAGE,
          why: str = "") -> _Rule:
    return _Rule(driver, re.compile(pattern), component, level, why)


RULES: tuple[_Rule, ...] = (
    _rule("power_meter", r"energy|throttle|samples", None, why="not a power reading"),
    _rule("power_meter", r"output", None, why="a regulator's output (its input is counted)"),
    _rule("power_meter", r"sysio|\bsoc\b", None, why="the SoC rail, inside the socket"),
    _rule("power_meter", r"module power", "platform"),
    _rule("power_meter", r"grace power", "platform", INSIDE),
    _rule("apm_xgene", r"^io power$", None,
          why="the SoC's I/O domain, neither the cores nor the node"),
    _rule("ibmpowernv", r"^chip \d+$", "cpu"),
    _rule("ibmpowernv", r"^chip \d+ vd[dn]$", "cpu", INSIDE),
    _rule("ibmpowernv", r"^apss\b", None, why="a board supply channel"),
    _rule("fam15h_power", r"", "cpu"),
    _rule(None, r"dram|memory|mem|dimm", "dram"),
    _rule(None, r"total|system|platform|node", "platform"),
    _rule(None, r"cpu|package|socket", "cpu"),
    _rule(None, r"core", "cpu", INSIDE),
    _rule("power_meter", r"", "platform"),
)
"""The module docstring's table, less the GPU drivers; first match wins."""


def classify(driver: str, label: str) -> tuple[str | None, int, str]:
    """(component or None, level, why not) for a sensor of `driver` labelled `label`."""
    if driver in GPU_DRIVERS:
        return None, 0, "a GPU's (the gpu component is NVML's)"
    text = (label or driver).lower()
    for rule in RULES:
        if rule.driver is not None and rule.driver != driver:
            continue
        if rule.pattern.search(text):
            return rule.component, rule.level, rule.why
    return None, 0, "unknown"


class SensorError(Exception):
    """A sensor file is missing, unreadable or holds something other than a value."""


def _read_text(path: Path) -> str | None:
    """A `name` or `_label` file as printable text (cut at MAX_LABEL_BYTES); None if absent."""
    try:
        text = read_attribute(path, MAX_LABEL_BYTES, nonblocking=True)[:MAX_LABEL_BYTES]
    except OSError:
        return None
    return "".join(ch for ch in text if ch.isprintable()).strip()


UNITS = {"energy": "microjoules", "power": "microwatts"}


def _read_uint(path: Path, kind: str) -> int:
    return read_uint(path, error=SensorError, what=f"a value in {UNITS[kind]}",
                     permission_hint=PERMISSION_HINT, hint=DRIVER_HINT, nonblocking=True)


@dataclass(slots=True)
class _Sensor:
    file: str
    kind: str
    """"energy" (a counter in microjoules) or "power" (microwatts, integrated)."""
    label: str
    component: str | None
    level: int
    why: str
    counted: bool = False
    skip: str = ""
    """Why it is not counted (when it is not)."""
    last: int | None = None
    last_now: float | None = None

    def title(self) -> str:
        return f"{self.file} {self.label!r}" if self.label else self.file


@dataclass(slots=True)
class _Device:
    key: str
    """`hwmon<N>`."""
    index: int
    path: Path
    """The directory holding its sensor files: `hwmon<N>/` or `hwmon<N>/device/`."""
    inode: int
    name: str
    sensors: dict[str, _Sensor] = field(default_factory=dict)

    def title(self) -> str:
        return f"{self.key} ({self.name})" if self.name else self.key


def _channel_files(names: Iterable[str]) -> dict[tuple[str, int], str]:
    """One file per channel: energyN_input; powerN_average over powerN_input."""
    chosen: dict[tuple[str, int], str] = {}
    for name in names:
        match = SENSOR_FILE.match(name)
        if match is None:
            continue
        kind, index, attr = match.group(1), int(match.group(2)), match.group(3)
        if kind == "energy" and attr != "input":
            continue
        key = (kind, index)
        if key not in chosen or attr == "average":
            chosen[key] = name
    return dict(sorted(chosen.items()))


@dataclass(frozen=True, slots=True)
class SensorInfo:
    """One power or energy sensor as discovered, and whether it is added to node energy."""

    device: str
    """`hwmon<N>`."""
    driver: str
    file: str
    label: str
    component: str | None
    """What its label maps to (None: nothing)."""
    added: bool
    why_not: str
    """Why it is not added (empty when it is)."""


class HwmonSource:
    """Power and energy sensors under `<sysfs>/class/hwmon`, for the components still free."""

    def __init__(self, sysfs: Path, *, components: frozenset[str] = COMPONENTS) -> None:
        self._root = sysfs / "class" / "hwmon"
        self._components = components & COMPONENTS
        self._devices: dict[str, _Device] = {}
        self._throttle = logs.Throttle(log, source="hwmon")
        self._last_fault = ""
        self._probed = False

    # -- start-up -------------------------------------------------------------------------

    def probe(self) -> Status:
        if not self._components:
            return Status(False, "not needed: cpu, dram and platform are covered by an earlier "
                                 "source (RAPL)", present=False)
        if not self._root.is_dir():
            return Status(False, f"no hwmon class at {self._root}: no hardware-monitoring "
                                 "driver is loaded", present=False)
        reading = self._read(None)
        self._probed = True
        sensors = [s for d in self._devices.values() for s in d.sensors.values()]
        if not sensors:
            found = ", ".join(d.title() for d in self._devices.values()) or "none"
            why = f"; {self._last_fault}" if self._last_fault else ""
            return Status(False, f"no power or energy sensor under {self._root} (devices: "
                                 f"{found}){why}", present=False)
        counted = [s for s in sensors if s.counted]
        wanted = "/".join(sorted(self._components))
        if not counted:
            return Status(False, f"no sensor for {wanted}: {self.describe()}", present=False)
        readable = [s for s in counted if s.last is not None]
        if not readable:
            return Status(False, f"found {self.describe()} but none could be read; "
                                 f"{self._last_fault or 'see the log'}")
        components = frozenset(s.component for s in readable if s.component is not None)
        detail = f"reading {len(readable)} of {len(counted)} sensors: {self.describe()}"
        if not reading.up:
            detail += f"; {self._last_fault or 'see the log'}"
        return Status(True, detail, components)

    def sensors(self) -> tuple[SensorInfo, ...]:
        """Every power and energy sensor found at the last read, in hwmon order."""
        return tuple(SensorInfo(d.key, d.name, s.file, s.label, s.component, s.counted, s.skip)
                     for d in self._devices.values() for s in d.sensors.values())

    def describe(self) -> str:
        """Each device with sensors: what feeds which component, and what is left out (why)."""
        parts = []
        for device in self._devices.values():
            if not device.sensors:
                continue
            feeds: dict[str, list[str]] = {}
            left: dict[str, list[str]] = {}
            for s in device.sensors.values():
                if s.counted and s.component is not None:
                    how = "" if s.kind == "energy" else " (integrated)"
                    feeds.setdefault(s.component, []).append(f"{s.title()}{how}")
                else:
                    left.setdefault(s.skip, []).append(s.title())
            text = [f"{c} from {_few(titles)}" for c, titles in sorted(feeds.items())]
            text += [f"not added: {_few(titles)} ({why})" for why, titles in left.items()]
            parts.append(f"{device.title()}: {'; '.join(text)}")
        return " | ".join(parts) or "no sensors"

    # -- discovery ------------------------------------------------------------------------

    def _discover(self) -> bool:
        """Track devices that appear and vanish; False when the class could not be listed."""
        try:
            present = {p.name for p in self._root.iterdir() if DEVICE_DIR.match(p.name)}
        except OSError as exc:
            self._fault("root", f"cannot list {self._root}: {exc.strerror}; the known sensors "
                                "are read, new ones are not found")
            return False
        self._throttle.recovered("root", f"{self._root} can be listed again")
        changed = False
        for key in sorted(present | set(self._devices), key=_index):
            old = self._devices.get(key)
            inode = None
            if key in present:
                try:
                    inode = (self._root / key).stat().st_ino
                except OSError:
                    inode = None
            if old is not None and (inode is None or inode != old.inode):
                del self._devices[key]
                changed = True
                counted = any(s.counted for s in old.sensors.values())
                (log.warning if counted else log.info)(
                    f"{old.title()} vanished from {self._root}; a device that comes back "
                    "starts a new baseline")
                old = None
            if old is None and inode is not None:
                device = self._scan(key, inode)
                if device is not None:
                    self._devices[key] = device
                    changed = True
        if changed:
            self._devices = dict(sorted(self._devices.items(), key=lambda kv: kv[1].index))
            self._plan()
        return True

    def _scan(self, key: str, inode: int) -> _Device | None:
        base = self._root / key
        parent = base / "device"  # legacy registration: name and sensor files may be here
        name = _read_text(base / "name")
        if name is None:
            name = _read_text(parent / "name")
        try:
            files = _channel_files(os.listdir(base))
        except OSError as exc:
            self._fault(key, f"cannot list {base}: {exc.strerror}; its sensors are left out "
                             "until it can")
            return None
        self._throttle.recovered(key, f"{base} can be listed again")
        if not files:
            try:
                files = _channel_files(os.listdir(parent))
            except OSError:
                files = {}
            if files:
                base = parent
        device = _Device(key, _index(key), base, inode, name or "")
        for (kind, index), file in files.items():
            label = _read_text(base / f"{kind}{index}_label")
            if label is None and kind == "power":
                label = _read_text(base / f"power{index}_oem_info")
            component, level, why = classify(device.name, label or "")
            device.sensors[file] = _Sensor(file, kind, label or "", component, level, why)
            if component is None and why == "unknown":
                log.info(f"{device.title()} {file} {label or ''!r}: no component matches it, "
                         "not added to node energy (docs/sources.md, hwmon)")
        if self._probed and device.sensors:
            log.info(f"new hwmon device {device.title()}")
        return device

    def _plan(self) -> None:
        """Decide which sensors are added (the module docstring's three rules)."""
        sensors = [(d, s) for d in self._devices.values() for s in d.sensors.values()]
        before = {(d.key, s.file) for d, s in sensors if s.counted}
        candidates: dict[str, list[tuple[_Device, _Sensor]]] = {}
        for d, s in sensors:
            s.counted, s.skip = False, s.why or "unknown"
            if s.component is None:
                continue
            if s.component not in self._components:
                s.skip = f"{s.component} is covered by an earlier source"
                continue
            candidates.setdefault(s.component, []).append((d, s))
        for component, pairs in candidates.items():
            top = max(s.level for _, s in pairs)
            at_top = [(d, s) for d, s in pairs if s.level == top]
            drivers = sorted({d.name for d, _ in at_top}, key=lambda name: (
                not any(s.kind == "energy" for d, s in at_top if d.name == name),
                min(d.index for d, _ in at_top if d.name == name)))
            owner = drivers[0]
            for d, s in pairs:
                if s.level < top:
                    s.skip = f"inside a coarser {component} sensor"
                elif d.name != owner:
                    s.skip = f"{component} is read from {owner or 'another driver'}"
                elif s.kind == "power" and any(
                        o.kind == "energy" and o.level == top and o.component == component
                        for o in d.sensors.values()):
                    s.skip = f"an energy counter of {d.key} covers {component}"
                else:
                    s.counted, s.skip = True, ""
        for _, s in sensors:
            if not s.counted:
                s.last = s.last_now = None  # counted again later: a new baseline
        after = {(d.key, s.file) for d, s in sensors if s.counted}
        if self._probed and after != before:
            log.info(f"hwmon sensors changed: {self.describe()}")

    # -- reading --------------------------------------------------------------------------

    def _fault(self, key: str, message: str) -> None:
        self._last_fault = message
        self._throttle.fault(key, message)

    def read(self, now: float) -> Reading:
        """Energy per component since the previous read; never negative."""
        return self._read(now)

    def _read(self, now: float | None) -> Reading:
        listed = self._discover()
        counted = [(d, s) for d in self._devices.values() for s in d.sensors.values()
                   if s.counted]
        up = listed and bool(counted)
        exact_uj: dict[str, int] = {}
        integrated_uj: dict[str, float] = {}
        for device, sensor in counted:
            key = f"{device.key}/{sensor.file}"
            component = sensor.component
            assert component is not None
            try:
                value = _read_uint(device.path / sensor.file, sensor.kind)
                if sensor.kind == "energy":
                    step = self._energy_step(device, sensor, value, now)
                    if step is not None:
                        exact_uj[component] = exact_uj.get(component, 0) + step
                else:
                    uj = self._power_step(device, sensor, value, now)
                    if uj is not None:
                        integrated_uj[component] = integrated_uj.get(component, 0.0) + uj
            except SensorError as exc:
                up = False
                self._fault(key, f"hwmon sensor {device.title()} {sensor.title()} down: {exc}")
                continue
            self._throttle.recovered(key, f"hwmon sensor {device.title()} {sensor.title()} "
                                          "readable again")
        joules = {c: (exact_uj.get(c, 0) + integrated_uj.get(c, 0.0)) / 1e6
                  for c in sorted(set(exact_uj) | set(integrated_uj))}
        return Reading(up=up, joules=joules)

    @staticmethod
    def _energy_step(device: _Device, sensor: _Sensor, value: int,
                     now: float | None) -> int | None:
        """Microjoules since the previous read (None: a baseline only). A step above
        MAX_SENSOR_WATTS restarts the baseline and raises SensorError."""
        last, last_now = sensor.last, sensor.last_now
        sensor.last = value
        if now is not None:
            sensor.last_now = now
        if last is None:
            return None
        if value < last:
            log.info(f"hwmon sensor {device.title()} {sensor.title()}: counter went back from "
                     f"{last} to {value} uJ (driver reloaded?): new baseline")
            return 0
        step = value - last
        seconds = (max(now - last_now, 1.0) if now is not None and last_now is not None
                   else FIRST_STEP_SECONDS)
        if step > MAX_SENSOR_WATTS * 1e6 * seconds:
            raise SensorError(f"{device.path / sensor.file} rose by {step} uJ in {seconds:g} s, "
                              f"above {MAX_SENSOR_WATTS:g} W: refused, baseline restarted")
        return step

    @staticmethod
    def _power_step(device: _Device, sensor: _Sensor, microwatts: int,
                    now: float | None) -> float | None:
        """Microjoules since the previous read by the trapezoid rule (None: none yet). A value
        above MAX_SENSOR_WATTS raises SensorError and keeps the last good one, so the next good
        read covers the gap."""
        if microwatts > MAX_SENSOR_WATTS * 1e6:
            raise SensorError(f"{device.path / sensor.file} reads {microwatts} uW, above "
                              f"{MAX_SENSOR_WATTS:g} W: refused")
        last, last_now = sensor.last, sensor.last_now
        sensor.last = microwatts
        if now is None:
            return None
        sensor.last_now = now
        if last is None or last_now is None or now <= last_now:
            return None
        return (last + microwatts) / 2.0 * (now - last_now)


def _index(key: str) -> int:
    match = DEVICE_DIR.match(key)
    return int(match.group(1)) if match else 0


def _few(titles: list[str], shown: int = 4) -> str:
    if len(titles) <= shown:
        return ", ".join(titles)
    return f"{', '.join(titles[:shown])} and {len(titles) - shown} more"


def _create(ctx: SourceContext) -> HwmonSource:
    return HwmonSource(ctx.sysfs, components=ctx.uncovered)


SPEC = SourceSpec("hwmon", "hwmon", "power sensors in <path.sysfs>/class/hwmon (power*_input), "
                  "for platforms that publish them and have no RAPL",
                  COMPONENTS, _create)
