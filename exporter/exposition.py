"""The ledger rendered to bytes in the text and OpenMetrics formats, at most once per tick and
only when a scrape asks for it; the families themselves are declared in exporter.metrics."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import ProcessCollector
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest as render_text
from prometheus_client.openmetrics.exposition import generate_latest as render_openmetrics
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from exporter.ledger import Ledger
from exporter.metrics import FAMILIES, TICK_DURATION

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

NODE = "node"
INF = float("inf")


@dataclass(frozen=True)
class TickStats:
    """The self-metrics a tick reports about the ticks before it."""

    count: int = 0
    seconds: float = 0.0


class _NodeLabelled(Collector):
    """Another collector's families with the `node` label added (every series carries it)."""

    def __init__(self, inner: Collector, node: str) -> None:
        self._inner = inner
        self._node = node

    def collect(self) -> Iterable[Metric]:
        for family in self._inner.collect():
            out = Metric(family.name, family.documentation, family.type, family.unit)
            out.samples = [Sample(s.name, {NODE: self._node, **s.labels}, s.value, s.timestamp,
                                  s.exemplar) for s in family.samples]
            yield out


class _Collected:
    """Metrics already collected, rendered by prometheus_client's `generate_latest` (which only
    calls `collect()`) in both formats."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


class Snapshot:
    """One tick's exposition; a scrape serves these bytes and nothing else.

    Rendered when first asked for (`body`, `text`, `openmetrics`), from the values the tick
    left, not at the end of the tick: Prometheus scrapes every 15 to 60 s, the tick runs every
    few seconds, so most ticks are never scraped and their render (6 ms at 250 containers, the
    tick's largest cost; docs/performance.md) is never paid. Once rendered the bytes stay."""

    def __init__(self, render: Callable[[], tuple[bytes, bytes]] | None = None, *,
                 text: bytes = b"", openmetrics: bytes = b"") -> None:
        self._render = render
        self._bytes: tuple[bytes, bytes] | None = None if render else (text, openmetrics)
        self._lock = threading.Lock()
        self._gzipped: dict[bool, bytes] = {}

    def _rendered(self) -> tuple[bytes, bytes]:
        done = self._bytes
        if done is None:
            with self._lock:  # one render, however many scrapes arrive at once
                if self._bytes is None:
                    assert self._render is not None
                    self._bytes = self._render()
                    self._render = None  # and the values it held
                done = self._bytes
        return done

    @property
    def rendered(self) -> bool:
        return self._bytes is not None

    @property
    def text(self) -> bytes:
        return self._rendered()[0]

    @property
    def openmetrics(self) -> bytes:
        return self._rendered()[1]

    def body(self, *, openmetrics: bool, gzipped: bool) -> bytes:
        raw = self.openmetrics if openmetrics else self.text
        if not gzipped:
            return raw
        cached = self._gzipped.get(openmetrics)
        if cached is None:
            # Two scrapers may race here; both compute the same bytes, so no lock is needed.
            # Level 1: on the event loop, the 516 KB body of 250 containers takes 1.1 ms
            # (38.5 KB) instead of level 6's 3.6 ms (32.6 KB) (docs/performance.md).
            cached = gzip.compress(raw, compresslevel=1, mtime=0)
            self._gzipped[openmetrics] = cached
        return cached


def _number(value: float) -> str:
    """Go's float formatting, as Prometheus' own clients write sample values: exactly
    prometheus_client's floatToGoString (tests/test_exposition.py compares them on random and
    edge values), without its float() and three comparisons before the common case."""
    value = float(value)  # an int (a gauge set to 1) is written as 1.0
    text = repr(value)
    if value > 0:
        dot = text.find(".")
        if dot > 6:  # Go switches to exponents sooner than Python
            mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
            return f"{mantissa}e+{dot - 1:02d}"
        return "+Inf" if text == "inf" else text
    if value != value:
        return "NaN"
    return "-Inf" if text == "-inf" else text


def _escape_value(value: str) -> str:
    """A label value as the text formats write it. A lone surrogate (JSON allows `\\ud800`, so a
    hostile API server can send one) cannot be encoded as UTF-8: it becomes `?` here rather
    than failing every render; names are also cleaned where they enter (exporter.workloads)."""
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str, *, openmetrics: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if openmetrics else text


class Renderer:
    """Renders the ledger (and optionally this process's own metrics) to a Snapshot.

    The ledger's families are formatted here directly, byte for byte as prometheus_client
    would (tests/test_exposition.py holds it to that), because building its Metric objects for
    every series each tick costs more than the rest of the tick. Each series' name-and-labels
    prefix is formatted once and kept while the series lives.
    """

    def __init__(self, ledger: Ledger, *, node: str, process_metrics: bool) -> None:
        self._ledger = ledger
        self._node = node
        self._lines: dict[str, dict[tuple[str, ...], tuple[float, str, str]]] = {}
        """Each live series' last value and rendered line: an unchanged value is not
        formatted again."""
        self._lock = threading.Lock()
        """One render at a time: renders share `_lines`."""
        self.renders = 0
        """Snapshots rendered so far (ticks never scraped are never rendered)."""
        self._process: CollectorRegistry | None = None
        if process_metrics:
            self._process = CollectorRegistry(auto_describe=False)
            self._process.register(_NodeLabelled(ProcessCollector(registry=None), node))

    def _prefix(self, name: str, names: tuple[str, ...], values: tuple[str, ...]) -> str:
        fixed = len(names)
        if len(values) > fixed:  # (name, value) pairs of its own follow (Family.extra_labels)
            names = (*names, *values[fixed::2])
            values = (*values[:fixed], *values[fixed + 1::2])
        pairs = sorted(zip(names, values, strict=True))
        return name + "{" + ",".join(f'{k}="{_escape_value(v)}"' for k, v in pairs) + "}"

    def render(self, stats: TickStats) -> Snapshot:
        """The ledger as it is now, rendered when the snapshot is first read: the values are
        copied (a dict copy per family, about 0.1 ms at 250 containers), not formatted."""
        counters = {name: dict(series) for name, series in self._ledger.counters.items()
                    if series}
        gauges = {name: dict(series) for name, series in self._ledger.gauges.items() if series}
        return Snapshot(lambda: self._render(counters, gauges, stats))

    def _render(self, counters: Mapping[str, Mapping[tuple[str, ...], float]],
                gauges: Mapping[str, Mapping[tuple[str, ...], float]],
                stats: TickStats) -> tuple[bytes, bytes]:
        with self._lock:
            return self._render_locked(counters, gauges, stats)

    def _render_locked(self, counters: Mapping[str, Mapping[tuple[str, ...], float]],
                       gauges: Mapping[str, Mapping[tuple[str, ...], float]],
                       stats: TickStats) -> tuple[bytes, bytes]:
        self.renders += 1
        text: list[bytes] = []
        om: list[bytes] = []
        old = self._lines
        new: dict[str, dict[tuple[str, ...], tuple[float, str, str]]] = {}
        node = self._node
        prefix = self._prefix
        for name, spec in FAMILIES.items():
            store = counters if spec.kind == "counter" else gauges
            series = store.get(name)
            if not series:
                continue
            names = (NODE, *spec.labels)
            base = name.removesuffix("_total") if spec.kind == "counter" else name
            text.append(f"# HELP {name} {_escape_help(spec.help, openmetrics=False)}\n"
                        f"# TYPE {name} {spec.kind}\n".encode())
            unit = f"# UNIT {base} {spec.unit}\n" if spec.unit else ""
            om.append(f"# HELP {base} {_escape_help(spec.help, openmetrics=True)}\n"
                      f"# TYPE {base} {spec.kind}\n{unit}".encode())
            cached_of = old.get(name, {}).get
            kept: dict[tuple[str, ...], tuple[float, str, str]] = {}
            new[name] = kept
            lines: list[str] = []
            append = lines.append
            for labels, value in series.items():
                cached = cached_of(labels)
                if cached is None or cached[0] != value or value != value:
                    head = (prefix(name, names, (node, *labels)) + " " if cached is None
                            else cached[1])
                    # repr() is Go's formatting for every float in (-Inf, 1e6): most values
                    number = (repr(value) if value.__class__ is float and -INF < value < 1e6
                              else _number(value))
                    cached = (value, head, head + number + "\n")
                kept[labels] = cached
                append(cached[2])
            body = "".join(lines).encode()  # once, for both formats
            text.append(body)
            om.append(body)  # a counter's samples keep `_total` in OpenMetrics too
        summary_labels = f'{{node="{_escape_value(node)}"}}'
        for out, is_om in ((text, False), (om, True)):
            name = TICK_DURATION.name
            unit = f"# UNIT {name} {TICK_DURATION.unit}\n" if is_om else ""
            out.append(f"# HELP {name} "
                       f"{_escape_help(TICK_DURATION.help, openmetrics=is_om)}\n"
                       f"# TYPE {name} summary\n{unit}"
                       f"{name}_count{summary_labels} {_number(stats.count)}\n"
                       f"{name}_sum{summary_labels} {_number(stats.seconds)}\n"
                       .encode())
        self._lines = new
        text_bytes = b"".join(text)
        om_bytes = b"".join(om)
        if self._process is not None:
            process = _Collected(list(self._process.collect()))  # /proc read once, not twice
            text_bytes += render_text(process)
            process_om: bytes = render_openmetrics(process)  # type: ignore[no-untyped-call]
            om_bytes += process_om
        else:
            om_bytes += b"# EOF\n"
        return text_bytes, om_bytes
