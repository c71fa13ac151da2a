"""A sampler with a live intensity provider on a fixture node (from tests/test_intensity.py);
shared by the intensity and forecast tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tests.fakes.carbon_apis import FakeElectricityMaps

if TYPE_CHECKING:
    from exporter.sampler import Sampler


def live_exporter_text(tmp_path: Path, api: FakeElectricityMaps, zone: str, what: str,
                       ready: Callable[[Sampler], bool]) -> str:
    """One tick's /metrics text of a sampler built from a config that names `api` (its token in
    a file) for `zone`, on a fixture node, once `ready(sampler)` (else fails with `what`)."""
    from exporter import cli
    from tests.support import node_tree

    token = tmp_path / "token"
    token.write_text(api.token + "\n")
    config = tmp_path / "footprint.yaml"
    config.write_text(f"carbon:\n  provider: electricitymaps\n  zone: {zone}\n"
                      f"  electricitymaps:\n    base_url: {api.url}\n"
                      f"    token_file: {token}\n")
    root = node_tree(tmp_path, "amd-epyc-2s")
    settings = cli.parse_settings(["--path.sysfs", str(root / "sys"), "--path.procfs",
                                   str(root / "proc"), "--config.file", str(config),
                                   "--no-collector.kubernetes", "--no-collector.nvml"])
    sampler = cli.build_sampler(settings, process_metrics=False)
    sampler.start()
    try:
        deadline = time.monotonic() + 10
        while not ready(sampler):
            assert time.monotonic() < deadline, what
            time.sleep(0.02)
        return sampler.tick().text.decode()
    finally:
        sampler.close()
