"""In-process fakes of the external services the exporter talks to (for tests only)."""

from __future__ import annotations

from tests.fakes.kube_api import FakeKubeAPI

__all__ = ["FakeKubeAPI"]
