"""The exposition renderer writes exactly what prometheus_client would, for any labels."""

from __future__ import annotations

from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from exporter.exposition import Renderer, TickStats, _number
from exporter.ledger import Ledger
from exporter.metrics import FAMILIES as SPECS
from exporter.metrics import TICK_DURATION as SUMMARY

TICK_DURATION, TICK_DURATION_HELP = SUMMARY.name, SUMMARY.help

hostile = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ['a"b', "back\\slash", "new\nline", "x" * 10_000, "", "ümlaut ✓"])
values = st.floats(min_value=0, max_value=1e18, allow_nan=False) | st.sampled_from(
    [0.0, 1.0, 1e-300, 123456789.0, 1e22])


class Reference(Collector):
    """The ledger as prometheus_client's own families: the oracle."""

    def __init__(self, ledger: Ledger, node: str, stats: TickStats) -> None:
        self.ledger, self.node, self.stats = ledger, node, stats

    def collect(self) -> Iterator[Metric]:
        for name, spec in SPECS.items():
            store = self.ledger.counters if spec.kind == "counter" else self.ledger.gauges
            if not store.get(name):
                continue
            cls = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
            family = cls(name, spec.help, labels=("node", *spec.labels), unit=spec.unit)
            for labels, value in store[name].items():
                family.add_metric((self.node, *labels), value)
            yield family
        summary = SummaryMetricFamily(TICK_DURATION, TICK_DURATION_HELP, labels=("node",),
                                      unit=SUMMARY.unit)
        summary.add_metric((self.node,), count_value=self.stats.count,
                           sum_value=self.stats.seconds)
        yield summary


@settings(max_examples=60, deadline=None)
@given(node=hostile, data=st.data())
def test_same_bytes_as_prometheus_client(node: str, data: st.DataObject) -> None:
    ledger = Ledger()
    for name in data.draw(st.lists(st.sampled_from(sorted(SPECS)), unique=True, max_size=6)):
        spec = SPECS[name]
        for labels in data.draw(st.lists(st.tuples(*[hostile] * len(spec.labels)),
                                         unique=True, max_size=4)):
            (ledger.counters if spec.kind == "counter" else ledger.gauges)[name][labels] = (
                data.draw(values))
    stats = TickStats(count=data.draw(st.integers(0, 10**9)), seconds=data.draw(values))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Reference(ledger, node, stats))
    snapshot = Renderer(ledger, node=node, process_metrics=False).render(stats)
    assert snapshot.text == generate_latest(registry)
    assert snapshot.openmetrics == generate_openmetrics(registry)  # type: ignore[no-untyped-call]
    families = list(parse_om(snapshot.openmetrics.decode()))
    assert families[-1].name == TICK_DURATION


def test_cached_prefixes_follow_the_ledger() -> None:
    ledger = Ledger()
    renderer = Renderer(ledger, node="n", process_metrics=False)
    ledger.add("footprint_unattributed_energy_joules_total", ("cpu", "idle"), 1.5)
    first = renderer.render(TickStats()).text.decode()
    assert 'footprint_unattributed_energy_joules_total{component="cpu",mode="idle",node="n"} 1.5' \
        in first
    ledger.retire(("footprint_unattributed_energy_joules_total",), ("cpu",))
    assert "component=" not in renderer.render(TickStats()).text.decode()


@settings(max_examples=200, deadline=None)
@given(value=st.floats() | st.integers(-10**6, 10**18) | st.sampled_from(
    [0.0, -0.0, 1e6, 1234567.0, 12345678.9, 1e16, 1e22, 5e-324, float("inf"), float("-inf")]))
def test_number_is_floattogostring(value: float) -> None:
    assert _number(value) == floatToGoString(value)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_cached_lines_follow_changing_values(data: st.DataObject) -> None:
    """One renderer over several ticks: a value that changes, stays or goes is written as
    prometheus_client would write the ledger of that tick."""
    ledger = Ledger()
    renderer = Renderer(ledger, node="n", process_metrics=False)
    name = "footprint_container_energy_joules_total"
    keys = data.draw(st.lists(st.tuples(*[hostile] * len(SPECS[name].labels)), unique=True,
                              min_size=1, max_size=5))
    for tick in range(4):
        series = ledger.counters[name]
        for key in keys:
            if data.draw(st.booleans()):
                series[key] = data.draw(values)
            elif data.draw(st.booleans()):
                series.pop(key, None)
        stats = TickStats(count=tick, seconds=0.5 * tick)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Reference(ledger, "n", stats))
        assert renderer.render(stats).text == generate_latest(registry)


GAUGE = next(name for name, spec in SPECS.items() if spec.kind == "gauge")


@settings(max_examples=200, deadline=None)
@given(value=st.floats(max_value=1e6) | st.integers(-10**6, 10**18) | st.sampled_from(
    [-0.0, 999999.9999999999, 1e6, 1000000.5, 5e-324, -1e22, float("-inf"), float("inf"),
     float("nan")]))
def test_rendered_values_are_floattogostring(value: float) -> None:
    """The renderer writes most values with repr() (every float below 1e6): the same text as
    prometheus_client's floatToGoString, negative, tiny and infinite values included."""
    ledger = Ledger()
    ledger.gauges[GAUGE][("x",) * len(SPECS[GAUGE].labels)] = value
    text = Renderer(ledger, node="n", process_metrics=False).render(TickStats()).text.decode()
    [line] = [line for line in text.splitlines() if line.startswith(GAUGE + "{")]
    assert line.rsplit(" ", 1)[1] == floatToGoString(value)
