from __future__ import annotations

import logging

import pytest

from tests.support import START, FakeClock


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/* from the code's output (review the diff)")


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
