"""Runs the real exporter process on the fake NVML: the lowest layer faked, nothing else.

    python -m tests.fakes.nvml_process MODULE:FUNCTION [exporter arguments...]

FUNCTION (e.g. `tests.test_dra:four_dra_gpus`) returns a `Scenario`: a FakeNvml, and the SM
utilisation each GPU process shows. This installs the fake as the `pynvml` module, then runs
`exporter.cli.main` with the remaining arguments, as `python -m exporter` would. A driver
thread advances the fake's clock with the wall clock (so energy counters grow at each GPU's
watts) and adds one utilisation sample per process every `SAMPLE_EVERY_S`.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from tests.fakes.fake_nvml import FakeNvml

SAMPLE_EVERY_S = 0.05


@dataclass
class Scenario:
    nvml: FakeNvml
    sm_util: Mapping[str, Mapping[int, int]] = field(default_factory=dict)
    """GPU UUID -> pid -> the SM utilisation (percent) its samples show."""


def drive(scenario: Scenario, stop: threading.Event) -> None:
    nvml = scenario.nvml
    by_uuid = {g.uuid: g for g in nvml.gpus}
    last = time.monotonic()
    while not stop.wait(SAMPLE_EVERY_S):
        now = time.monotonic()
        nvml.advance(now - last)
        last = now
        for uuid, pids in scenario.sm_util.items():
            gpu = by_uuid[uuid]
            for pid, sm in pids.items():
                nvml.add_sample(gpu, pid, sm)
            del gpu.samples[:-64]  # NVML keeps a bounded buffer too


def main(argv: list[str]) -> int:
    target, *args = argv
    module, _, function = target.partition(":")
    scenario: Scenario = getattr(importlib.import_module(module), function)()
    sys.modules["pynvml"] = scenario.nvml
    stop = threading.Event()
    threading.Thread(target=drive, args=(scenario, stop), name="fake-nvml-driver",
                     daemon=True).start()
    from exporter import cli

    try:
        return cli.main(args)
    finally:
        stop.set()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
