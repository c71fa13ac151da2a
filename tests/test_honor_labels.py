"""The chart's monitors under the Prometheus Operator's overrideHonorLabels, in the real
Prometheus.

The exporter's `namespace`, `pod` and `container` labels name the measured workload, so its
ServiceMonitor and PodMonitor scrape with `honorLabels: true`. A Prometheus CR with
`overrideHonorLabels: true` turns that into `honor_labels: false`: Prometheus keeps the target
labels of the exporter's own pod and renames the exporter's to `exported_*`. The monitors
therefore render metricRelabelings (`restoreWorkloadLabels`) that copy them back and drop the
`exported_*` copies. Here each monitor's rendered list, converted to `metric_relabel_configs`
as the operator writes them, runs in Debian's prometheus against a fixed exposition whose
target carries the labels the operator adds for the exporter's pod: with `honor_labels: false`
(overrideHonorLabels), with `honor_labels: true` (the relabelings must then change nothing),
and a control job without them, which must show the renaming the relabelings undo.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.e2e_node import Prometheus, free_port
from tests.support import require_binary
from tests.support.chart import INSTALL_DOC, NAMESPACE, Obj, one, render, require_module
from tests.support.e2e import wait_for

MONITORS = {  # kind -> (values key, endpoints key)
    "ServiceMonitor": ("serviceMonitor", "endpoints"),
    "PodMonitor": ("podMonitor", "podMetricsEndpoints"),
}
TARGET_LABELS = {"namespace": NAMESPACE, "pod": "footprint-exporter-abcde",
                 "container": "exporter"}
"""What the operator's relabelings put on the target: the exporter's own pod."""
WORKLOAD = {"namespace": "ml", "pod": "llm-0", "container": "main"}
CONTAINER = "footprint_container_energy_joules_total"
CONTAINER_LABELS = {"node": "gpu-node-1", **WORKLOAD, "model": "llama-3-8b", "phase": "serving",
                    "component": "gpu", "mode": "dynamic"}
NODE = "footprint_node_energy_joules_total"
NODE_LABELS = {"node": "gpu-node-1", "component": "cpu", "source": "rapl"}
EXPOSITION = (
    f"# HELP {CONTAINER} Energy attributed to one container.\n"
    f"# TYPE {CONTAINER} counter\n"
    + CONTAINER + "{" + ",".join(f'{k}="{v}"' for k, v in CONTAINER_LABELS.items()) + "} 42\n"
    f"# HELP {NODE} Energy the node used per component.\n"
    f"# TYPE {NODE} counter\n"
    + NODE + "{" + ",".join(f'{k}="{v}"' for k, v in NODE_LABELS.items()) + "} 1000\n"
).encode()
RELABEL_KEYS = {"sourceLabels": "source_labels", "separator": "separator",
                "targetLabel": "target_label", "regex": "regex", "modulus": "modulus",
                "replacement": "replacement", "action": "action"}
"""RelabelConfig's fields (monitoring.coreos.com/v1) -> Prometheus' relabel_config keys."""


@pytest.fixture(scope="module")
def helm() -> ModuleType:
    return require_module("helm_python", "helm-python-sdk")


def metric_relabelings(helm: ModuleType, kind: str, **values: Any) -> list[Obj]:
    """The monitor's rendered metricRelabelings, with {enabled: true, **values}."""
    key, endpoints = MONITORS[kind]
    monitor = one(render(helm, {key: {"enabled": True, **values}}), kind)
    (endpoint,) = monitor["spec"][endpoints]
    assert endpoint["honorLabels"] is True
    relabelings: list[Obj] = endpoint.get("metricRelabelings", [])
    return relabelings


def metric_relabel_configs(relabelings: list[Obj]) -> list[Obj]:
    """A monitor's metricRelabelings as Prometheus' metric_relabel_configs (as the operator
    writes them: the same fields in snake_case, the action in lower case)."""
    out = []
    for relabeling in relabelings:
        unknown = set(relabeling) - set(RELABEL_KEYS)
        assert not unknown, f"no conversion for {unknown}"
        config = {RELABEL_KEYS[k]: v for k, v in relabeling.items()}
        if "action" in config:
            config["action"] = config["action"].lower()
        out.append(config)
    return out


class Exposition:
    """A fixed /metrics body on loopback, standing in for an exporter."""

    def __init__(self, body: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        name="honor-labels-exposition")
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


class ScrapingPrometheus(Prometheus):
    """tests/e2e_node.py's Prometheus (readiness, queries, stop) with these scrape jobs."""

    def __init__(self, binary: str, tmp_path: Path, scrape_configs: list[Obj]) -> None:
        self.port = free_port()
        self._launch(binary, tmp_path,
                     {"global": {"scrape_interval": "1s"}, "scrape_configs": scrape_configs})


def job(name: str, port: int, honor_labels: bool, relabelings: list[Obj]) -> Obj:
    """A scrape job as the operator writes one for the exporter's pod (its target labels)."""
    config: Obj = {"job_name": name, "honor_labels": honor_labels,
                   "static_configs": [{"targets": [f"127.0.0.1:{port}"],
                                       "labels": TARGET_LABELS}]}
    if relabelings:
        config["metric_relabel_configs"] = metric_relabel_configs(relabelings)
    return config


def job_name(kind: str, honor_labels: bool) -> str:
    return f"{kind.lower()}-{'honored' if honor_labels else 'overridden'}"


SLOW = pytest.mark.slow(seconds=2)
"""The tests on the real Prometheus (the module's one, ~6 s to start and scrape)."""
CONTROL = "control-overridden"
"""honor_labels false and no metric relabelings: what overrideHonorLabels does unaided."""


@pytest.fixture(scope="module")
def prometheus(helm: ModuleType, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Prometheus]:
    """One Prometheus scraping the exposition once per monitor kind and honor_labels value,
    with the monitor's rendered relabelings, and once as the control."""
    binary = require_binary("prometheus")
    exposition = Exposition(EXPOSITION)
    jobs = [job(CONTROL, exposition.port, False, [])]
    for kind in MONITORS:
        relabelings = metric_relabelings(helm, kind)
        jobs += [job(job_name(kind, honor), exposition.port, honor, relabelings)
                 for honor in (False, True)]
    server = ScrapingPrometheus(binary, tmp_path_factory.mktemp("prometheus"), jobs)
    try:
        server.wait_ready()
        expected = {(j["job_name"], name) for j in jobs for name in (CONTAINER, NODE)}

        def scraped() -> bool:
            stored = server.query(f'{{__name__=~"{CONTAINER}|{NODE}"}}')
            return {(s["metric"]["job"], s["metric"]["__name__"]) for s in stored} == expected
        wait_for(scraped, "every job's first scrape", 30)
        yield server
    finally:
        server.stop()
        exposition.stop()


def series(prometheus: Prometheus, name: str, job: str) -> dict[str, str]:
    """The labels of the one series `name` the job stored (job and instance left out)."""
    found = prometheus.query(f'{name}{{job="{job}"}}')
    assert len(found) == 1, (name, job, found)
    labels: dict[str, str] = found[0]["metric"]
    assert labels.pop("__name__") == name
    assert labels.pop("job") == job
    assert labels.pop("instance").startswith("127.0.0.1:")
    return labels


# ---------------------------------------------------------------------------------------------
# The rendered relabelings


@pytest.mark.parametrize("kind", MONITORS)
def test_the_monitors_render_the_restore_ahead_of_the_users_relabelings(
        helm: ModuleType, kind: str) -> None:
    restore = [*({"sourceLabels": [f"exported_{label}"], "regex": "(.+)", "targetLabel": label,
                  "replacement": "$1", "action": "replace"}
                 for label in ("namespace", "pod", "container")),
               {"regex": "exported_(namespace|pod|container)", "action": "labeldrop"}]
    assert metric_relabelings(helm, kind) == restore
    mine = {"sourceLabels": ["__name__"], "regex": "process_.*", "action": "drop"}
    assert metric_relabelings(helm, kind, metricRelabelings=[mine]) == [*restore, mine]
    assert metric_relabelings(helm, kind, restoreWorkloadLabels=False) == []
    assert metric_relabelings(helm, kind, restoreWorkloadLabels=False,
                              metricRelabelings=[mine]) == [mine]


# ---------------------------------------------------------------------------------------------
# In Prometheus


@SLOW
def test_without_the_relabelings_overridden_honor_labels_renames_the_workload_labels(
        prometheus: Prometheus) -> None:
    """The control: what the relabelings must undo, so the tests below cannot pass vacuously."""
    container = series(prometheus, CONTAINER, CONTROL)
    assert {k: container.pop(f"exported_{k}") for k in WORKLOAD} == WORKLOAD
    assert container == {**CONTAINER_LABELS, **TARGET_LABELS}
    assert series(prometheus, NODE, CONTROL) == {**NODE_LABELS, **TARGET_LABELS}


@SLOW
@pytest.mark.parametrize("kind", MONITORS)
def test_the_relabelings_restore_the_workload_labels_under_override_honor_labels(
        prometheus: Prometheus, kind: str) -> None:
    job = job_name(kind, honor_labels=False)
    container = series(prometheus, CONTAINER, job)
    assert {k: container[k] for k in WORKLOAD} == WORKLOAD
    assert not [k for k in container if k.startswith("exported_")], container
    assert container == CONTAINER_LABELS
    # Node totals have no workload labels: they keep the exporter pod's target labels.
    assert series(prometheus, NODE, job) == {**NODE_LABELS, **TARGET_LABELS}


@SLOW
@pytest.mark.parametrize("kind", MONITORS)
def test_the_relabelings_change_nothing_when_labels_are_honored(
        prometheus: Prometheus, kind: str) -> None:
    honored, overridden = job_name(kind, True), job_name(kind, False)
    assert series(prometheus, CONTAINER, honored) == CONTAINER_LABELS
    assert series(prometheus, NODE, honored) == {**NODE_LABELS, **TARGET_LABELS}
    for name in (CONTAINER, NODE):
        assert series(prometheus, name, honored) == series(prometheus, name, overridden)


def yaml_blocks(text: str) -> list[Any]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S)]


def test_install_md_shows_the_rendered_relabelings(helm: ModuleType) -> None:
    """docs/install.md's copies: the chart's list, and the plain-Prometheus equivalent."""
    rendered = metric_relabelings(helm, "ServiceMonitor")
    assert rendered == metric_relabelings(helm, "PodMonitor")
    blocks = yaml_blocks(INSTALL_DOC.read_text())
    chart = [b["metricRelabelings"] for b in blocks
             if isinstance(b, dict) and "metricRelabelings" in b]
    plain = [b for b in blocks if isinstance(b, dict) and "metric_relabel_configs" in b]
    assert chart == [rendered]
    assert [(b["honor_labels"], b["metric_relabel_configs"]) for b in plain] == [
        (False, metric_relabel_configs(rendered))]
