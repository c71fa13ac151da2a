"""One tick in three stages, in types: read (exporter.reading: every source, the pods, the GPU
holders, all the I/O) gives a frozen `TickInputs`; account (exporter.accounting: pure) gives a
`TickResult`, lifecycle facts included; publish (exporter.metrics: the only writer of the
ledger) takes that one result. `Sampler` only sequences them; the exposition is rendered when a
scrape first reads the tick's snapshot."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from exporter import logs
from exporter.accounting import AccountState, TickResult, account
from exporter.attribution import IdleBaseline
from exporter.config import AttributionSettings, EmbodiedSettings, PueSettings, WaterSettings
from exporter.exposition import Renderer, Snapshot, TickStats
from exporter.facts import SECONDS_PER_YEAR
from exporter.intensity.chain import FallbackChain
from exporter.ledger import Ledger
from exporter.metrics import PUE, SOURCE_UP, Publisher
from exporter.reading import Kubernetes, Reader
from exporter.sources.base import Probed

log = logs.get("sampler")


@dataclass(frozen=True, slots=True)
class InputState:
    """One row of the landing page's table of inputs."""

    name: str
    state: str
    """on (an energy source in use), up (a service that answered), off, down or unknown."""
    covers: str
    detail: str


class Sampler:
    """Sequences a tick's stages; `tick()` runs in a worker thread."""

    def __init__(self, reader: Reader, state: AccountState, publisher: Publisher,
                 renderer: Renderer, *, states: Sequence[Probed] = (),
                 clock: Callable[[], float] = time.monotonic,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        self.reader, self._state, self._publish, self._renderer = (reader, state, publisher,
                                                                   renderer)
        self.states = tuple(states)
        self.ledger: Ledger = publisher.ledger
        self._kubernetes, self._intensity = reader.kubernetes, reader.intensity
        self._clock, self._timer = clock, timer
        self._last_now: float | None = None
        self._stats = TickStats()

    @classmethod
    def assemble(cls, *, sources: Sequence[Probed], intensity: FallbackChain,
                 attribution: AttributionSettings, node: str,
                 cpu_model: str, kubernetes: Kubernetes | None = None,
                 embodied: EmbodiedSettings | None = None, pue: PueSettings | None = None,
                 water: WaterSettings | None = None,
                 process_metrics: bool = True, read_timeout_seconds: float = 5.0,
                 clock: Callable[[], float] = time.monotonic,
                 timer: Callable[[], float] = time.perf_counter) -> Sampler:
        """The stages built from settings (cli.build_sampler)."""
        reader = Reader(sources=sources, intensity=intensity,
                        attribution=attribution, kubernetes=kubernetes,
                        read_timeout_seconds=read_timeout_seconds)
        state = AccountState(
            IdleBaseline(fixed_watts=attribution.idle_watts,
                         percentile=attribution.idle_percentile,
                         window_seconds=attribution.idle_window_seconds),
            grace_seconds=kubernetes.grace_seconds if kubernetes is not None else 0.0,
            chargeback_labels=kubernetes.chargeback_labels if kubernetes is not None else (),
            embodied=embodied, pue=pue, water=water)
        publisher = Publisher(Ledger())
        publisher.static([(p.name, p.status) for p in sources],
                         kubernetes=kubernetes is not None, cpu_model=cpu_model)
        renderer = Renderer(publisher.ledger, node=node, process_metrics=process_metrics)
        return cls(reader, state, publisher, renderer, clock=clock, timer=timer,
                   states=sources)

    def start(self) -> None:
        """Start what runs beside the ticks (the pod watch, a live intensity provider)."""
        self.reader.start()

    def close(self) -> None:
        self.reader.close()

    def inputs(self) -> list[InputState]:
        """The landing page's table of inputs (`landing_rows`)."""
        return landing_rows(self)

    def tick(self) -> Snapshot:
        started = self._timer()
        now = self._clock()
        seconds = now - self._last_now if self._last_now is not None else 0.0
        self._last_now = now
        result = account(self.reader.read(now, seconds), self._state)
        self._publish.publish(result)
        if result.facts is not None:
            _log_facts(result)
        snapshot = self._renderer.render(self._stats)
        self._stats = TickStats(self._stats.count + 1,
                                self._stats.seconds + (self._timer() - started))
        return snapshot


def _mass(grams: float) -> str:
    """Grams in the unit people read: g, kg or t."""
    if grams >= 1e6:
        return f"{grams / 1e6:.3g} t"
    if grams >= 1e3:
        return f"{grams / 1e3:.3g} kg"
    return f"{grams:.3g} g"


def _log_facts(result: TickResult) -> None:
    facts = result.facts
    assert facts is not None
    gpus = sum(grams for _, grams in facts.gpu_grams)
    log.info(f"PUE {facts.pue:g} ({facts.pue_source}); embodied {_mass(facts.server_grams)} "
             f"CO2e for the server + {_mass(gpus)} for {len(facts.gpu_grams)} GPU(s), "
             f"spread over {facts.lifetime_seconds / SECONDS_PER_YEAR:.3g} years of use "
             f"({facts.lifetime_seconds:.0f} s)")
    log.info(f"water: WUE {facts.wue:g} L/kWh on site ({facts.wue_source}); grid "
             f"{facts.grid_water:g} L/kWh for zone {facts.zone} ({facts.grid_water_source})")


def landing_rows(sampler: Sampler) -> list[InputState]:
    """Every input and its state now, for the landing page: the energy sources (as probed,
    and up or down at the last tick), the pod watch, the pod-resources API, the grid
    intensity in force and the PUE. Cheap, and safe from the event loop's thread."""
    rows = []
    up = sampler.ledger.gauges.get(SOURCE_UP.name, {})
    for s in sampler.states:
        state = ("off" if not s.status.enabled else
                 "on" if up.get((s.name,), 1.0) == 1.0 else "down")
        rows.append(InputState(s.name, state, ", ".join(sorted(s.status.components)),
                               s.status.detail))
    k = sampler.reader.kubernetes
    if k is None:
        rows.append(InputState("kubernetes", "off", "", "no cluster configured, or "
                               "--no-collector.kubernetes: all energy stays unattributed"))
    else:
        view = k.pods.view()
        rows.append(InputState(
            "kubernetes", "up" if view.up else "down", "pods",
            f"{len(view.pods)} pods of this node known"
            + ("" if view.synced else "; waiting for the first list")
            + f"; {view.api_errors} failed API requests since start"))
        if k.podresources is not None:
            held = up.get(("podresources",))
            rows.append(InputState(
                "podresources", "unknown" if held is None else
                "up" if held == 1.0 else "down", "gpu holders",
                "the kubelet's device allocations"))
        if k.slices is not None:
            index = k.slices.index()
            rows.append(InputState(
                "resourceslices", "up" if k.slices.up() else "down", "dra gpu holders",
                f"{index.devices} DRA devices in {index.pools} pools of this node"
                + ("" if k.slices.synced() else "; waiting for the first list")))
    chain = sampler.reader.intensity
    current = chain.current()
    live = chain.live
    rows.append(InputState(
        "intensity", "up" if live is None or chain.up else "down", "carbon",
        f"{current.grams_per_kwh:g} gCO2e/kWh for zone {current.zone} from "
        f"{current.provider}" + (f"; live provider {live.name}" if live is not None
                                 else "; no live provider")))
    pue = sampler.ledger.gauges.get(PUE.name, {}).get(())
    rows.append(InputState("pue", "on" if pue is not None else "unknown", "infrastructure",
                           f"PUE {pue:g}" if pue is not None else "not computed yet"))
    return rows
