"""Attribution conserves energy for any input; the idle baseline learns a low percentile."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from exporter.attribution import IdleBaseline, attribute_energy

joules = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)
components = st.sampled_from(["cpu", "dram", "gpu", "platform"])


@given(st.dictionaries(components, joules), st.dictionaries(components, joules))
def test_parts_add_up_to_node_energy(energy: dict[str, float], idle: dict[str, float]) -> None:
    shares = attribute_energy(energy_joules=energy, idle_joules=idle).unattributed_joules
    for component, node in energy.items():
        parts = [shares[(component, "idle")], shares[(component, "dynamic")]]
        assert all(p >= 0.0 for p in parts)
        assert math.isclose(math.fsum(parts), node, rel_tol=1e-15, abs_tol=0.0)
        assert shares[(component, "idle")] <= node
    assert {c for c, _ in shares} == set(energy)


def test_idle_is_capped_at_the_baseline() -> None:
    shares = attribute_energy(energy_joules={"cpu": 10.0}, idle_joules={"cpu": 4.0})
    assert shares.unattributed_joules == {("cpu", "idle"): 4.0, ("cpu", "dynamic"): 6.0}


def test_learned_baseline_is_a_low_percentile_of_a_sliding_window() -> None:
    baseline = IdleBaseline(fixed_watts={}, percentile=10, window_seconds=100)
    for t in range(100):
        baseline.observe("cpu", watts=100.0 + t, now=float(t))
    assert baseline.watts("cpu") == 110.0
    for t in range(100, 150):  # the lowest half leaves the window
        baseline.observe("cpu", watts=500.0, now=float(t))
    assert baseline.watts("cpu") == 160.0  # t=50..99 remain: 150..199, then 500s
    assert baseline.watts("dram") == 0.0  # nothing seen yet


def test_fixed_baseline_wins() -> None:
    baseline = IdleBaseline(fixed_watts={"cpu": 42.0}, percentile=5, window_seconds=60)
    baseline.observe("cpu", watts=1.0, now=0.0)
    assert baseline.watts("cpu") == 42.0
