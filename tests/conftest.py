from __future__ import annotations

import logging
import os

import pytest

# The shared helpers (tests/support/) came out of test modules: pytest rewrites their asserts
# as it does a test module's, so a failing one still shows its operands. Before their import.
pytest.register_assert_rewrite("tests.support")

from tests.support import START, FakeClock  # noqa: E402

SLOW_SECONDS = 10.0
"""The wall time assumed for a `slow` test whose marker gives no `seconds`."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/* from the code's output (review the diff)")


def slow_seconds(item: pytest.Item) -> float:
    marker = item.get_closest_marker("slow")
    if marker is None:
        return 0.0
    return float(marker.kwargs.get("seconds", SLOW_SECONDS))


def order_for_workers(items: list[pytest.Item], workers: int) -> list[pytest.Item]:
    """The tests by module, the unit that `--dist loadfile` gives one worker (a module's
    Prometheus, install or image is made once), the longest modules first by their tests'
    `slow(seconds=...)`: they start at once on separate workers and the short ones fill in at
    the end. xdist hands every worker two units before its first test starts (a worker must
    know its next test to run one), so the unit at index `workers` waits behind the longest:
    it is the shortest one."""
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    ranked = sorted(units.values(), key=lambda unit: -sum(map(slow_seconds, unit)))
    if len(ranked) > workers + 1:
        ranked.insert(workers, ranked.pop())
    return [item for unit in ranked for item in unit]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (scripts/test.sh runs the slow tier with `--dist loadfile
    --no-loadscope-reorder`), after the `-m` selection: order_for_workers. Without xdist the
    order stays pytest's."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers >= 2:
        items[:] = order_for_workers(items, workers)


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def clock() -> FakeClock:
    """A clock for the live-intensity providers and their fake APIs, at START."""
    return FakeClock(START)


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog, capturing the exporter's ("footprint") logs from DEBUG."""
    caplog.set_level(logging.DEBUG, logger="footprint")
    return caplog
