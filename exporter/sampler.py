"""One tick: read every source once, attribute, convert to grams, update the ledger, render."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from exporter import __version__, carbon, logs
from exporter.attribution import MODES, IdleBaseline, attribute_energy
from exporter.config import AttributionSettings
from exporter.exposition import Renderer, Snapshot, TickStats
from exporter.ledger import Ledger
from exporter.sources.base import EnergySource, Status

log = logs.get("sampler")


@dataclass(frozen=True, slots=True)
class SourceState:
    """A source as probed at start-up: the landing page and the log show this."""

    name: str
    status: Status


def read_cpu_model(procfs: Path) -> str:
    try:
        text = (procfs / "cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model"):
            return value.strip()
    return ""


class Sampler:
    """Owns the sources, the ledger and the renderer; `tick()` runs in a worker thread."""

    def __init__(self, *, sources: Sequence[EnergySource], statuses: Sequence[Status],
                 intensity: carbon.StaticIntensity, attribution: AttributionSettings,
                 node: str, cpu_model: str, process_metrics: bool = True,
                 clock: Callable[[], float] = time.monotonic,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        self._sources = [(s, st) for s, st in zip(sources, statuses, strict=True) if st.enabled]
        self.states = tuple(SourceState(s.name, st) for s, st in zip(sources, statuses,
                                                                     strict=True))
        self._intensity = intensity
        self._baseline = IdleBaseline(fixed_watts=attribution.idle_watts,
                                      percentile=attribution.idle_percentile,
                                      window_seconds=attribution.idle_window_seconds)
        self._clock = clock
        self._timer = timer
        self._last_now: float | None = None
        self._stats = TickStats()
        self.ledger = Ledger()
        self._renderer = Renderer(self.ledger, node=node, process_metrics=process_metrics)
        self._publish_static(statuses=statuses, sources=sources, cpu_model=cpu_model)

    def _publish_static(self, *, statuses: Sequence[Status], sources: Sequence[EnergySource],
                        cpu_model: str) -> None:
        ledger = self.ledger
        ledger.set("footprint_exporter_build_info", (__version__, platform.python_version()), 1)
        ledger.set("footprint_node_info", ("", "", "", cpu_model, "", "0"), 1)
        for source, status in zip(sources, statuses, strict=True):
            if status.present:
                ledger.set("footprint_source_up", (source.name,), 1.0 if status.enabled else 0.0)
                ledger.ensure("footprint_exporter_errors_total", (source.name,))
            for component in sorted(status.components) if status.enabled else ():
                # Published from the start so a counter's first increase is never lost to rate().
                ledger.ensure("footprint_node_energy_joules_total", (component, source.name))
                ledger.ensure("footprint_node_co2e_grams_total", (component, source.name))
                for mode in MODES:
                    ledger.ensure("footprint_unattributed_energy_joules_total", (component, mode))
                    ledger.ensure("footprint_unattributed_co2e_grams_total", (component, mode))

    def tick(self) -> Snapshot:
        started = self._timer()
        now = self._clock()
        seconds = now - self._last_now if self._last_now is not None else 0.0
        self._last_now = now
        ledger = self.ledger
        intensity = self._intensity.current()
        ledger.gauges["footprint_grid_intensity_grams_per_kwh"] = {
            (intensity.zone, intensity.provider): intensity.grams_per_kwh}

        energy: dict[str, float] = {}
        for source, status in self._sources:
            reading = source.read(now)
            ledger.set("footprint_source_up", (source.name,), 1.0 if reading.up else 0.0)
            if not reading.up:
                ledger.add("footprint_exporter_errors_total", (source.name,), 1.0)
            for zone in reading.zones:
                ledger.set_total("footprint_rapl_energy_joules_total", (zone.zone, zone.domain),
                                 zone.joules_total)
            for component, joules in reading.joules.items():
                if component not in status.components:
                    continue  # another source owns it: never count a component twice
                labels = (component, source.name)
                ledger.add("footprint_node_energy_joules_total", labels, joules)
                ledger.add("footprint_node_co2e_grams_total", labels,
                           carbon.grams(joules, intensity))
                energy[component] = energy.get(component, 0.0) + joules

        idle: dict[str, float] = {}
        if seconds > 0:
            for component, joules in energy.items():
                self._baseline.observe(component, watts=joules / seconds, now=now)
                idle[component] = self._baseline.watts(component) * seconds
        shares = attribute_energy(energy_joules=energy, idle_joules=idle)
        for (component, mode), joules in shares.unattributed_joules.items():
            ledger.add("footprint_unattributed_energy_joules_total", (component, mode), joules)
            ledger.add("footprint_unattributed_co2e_grams_total", (component, mode),
                       carbon.grams(joules, intensity))

        snapshot = self._renderer.render(self._stats)
        self._stats = TickStats(self._stats.count + 1,
                                self._stats.seconds + (self._timer() - started))
        return snapshot
