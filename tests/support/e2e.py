"""The end-to-end node's facts and polling helpers (from tests/test_e2e.py): the static
intensity, PUE, idle watts, embodied grams and budgets it is configured with, a condition
polled until a deadline, and an exporter's /metrics; shared by the end-to-end,
VictoriaMetrics and honor-labels tests (the node itself is tests/e2e_node.py)."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

from tests.support import parse

VLLM_POD = "llama-7c9f8d6b5-x0"
"""The one pod whose vLLM metrics Prometheus scrapes (the other vLLM replica publishes none)."""
INTENSITY = 250.0  # gCO2e/kWh, static
PUE = 1.25
IDLE_WATTS = {"cpu": 60.0, "dram": 6.0, "gpu": 70.0}
SERVER_GRAMS = 2_500_000.0
GPU_GRAMS = 150_000.0  # H100: no entry in embodied.gpu_grams_by_product, so gpu_grams
LIFETIME_SECONDS = 6 * 8760 * 3600 * 0.85
"""The defaults, BLOOM's 6 years x 8,760 h x 85% (exporter/facts.py: SECONDS_PER_YEAR)."""
BUDGETS = {"mixtral-8x7b": 1e-6, "e5-large": 1e9}
"""grams per day: mixtral's is exceeded within seconds; e5-large's never is."""


def wait_for(condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def exporter_series(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
            return parse(response.read().decode())
    except OSError:
        return {}
