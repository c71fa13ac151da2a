"""The Helm chart rendered with helm-python-sdk (from tests/test_chart.py): its place, release
and namespace, and the rendered objects by kind; shared by the chart, chart-rules and
honor-labels tests."""

from __future__ import annotations

import importlib
import json
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.support import REPO

CHART = REPO / "charts" / "footprint-exporter"
INSTALL_DOC = REPO / "docs" / "install.md"
RELEASE = "footprint"
NAMESPACE = "monitoring"

Obj = dict[str, Any]


def require_module(name: str, package: str) -> ModuleType:
    """A Python package the test needs; fails (never skips) when it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError:
        pytest.fail(f"{package} is not installed: run scripts/test.sh, which installs it")


def render_templates(helm: ModuleType, values: Obj | None,
                     kube_version: str | None = None) -> dict[str, str]:
    """The chart's templates rendered, as for Kubernetes `kube_version` (e.g. "1.32") when
    given: Chart.render has no such option, the SDK's native call takes it."""
    with helm.Chart.load(CHART) as chart:
        if kube_version is None:
            rendered: dict[str, str] = chart.render(values, name=RELEASE, namespace=NAMESPACE,
                                                    is_install=True)
        else:
            from helm_python import _native

            options = {"name": RELEASE, "namespace": NAMESPACE, "is_install": True,
                       "kube_version": f"v{kube_version}.0"}
            rendered = json.loads(_native.call_string(
                "helm_render", chart._raw(), json.dumps(values), json.dumps(options)))
    return rendered


def render(helm: ModuleType, values: Obj | None, kube_version: str | None = None) -> list[Obj]:
    """The objects the chart renders (NOTES.txt left out)."""
    objects = []
    for template, text in sorted(render_templates(helm, values, kube_version).items()):
        if template.endswith("NOTES.txt"):
            continue
        # libyaml's parser, PyYAML's safe types: the pure-Python parser was a third of the time
        objects += [obj for obj in yaml.load_all(text, Loader=yaml.CSafeLoader) if obj]
    return objects


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[Obj], kind: str) -> Obj:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]
