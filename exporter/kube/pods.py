"""The pods of this node, kept by one list-then-watch (exporter.kube.reflector), and the node's
own labels, read again after each list."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from exporter.kube.reflector import ApiError, Gone, Reflector, _describe, _Stopped

__all__ = ["ApiError", "Gone", "NodeFacts", "Pod", "PodView", "PodWatcher", "node_facts",
           "parse_cpu_quantity"]

Pod = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What the Node object says about this node."""

    labels: Mapping[str, str]
    allocatable_cores: float
    provider_id: str = ""
    """spec.providerID, e.g. aws:///us-east-1a/i-0abc, gce://project/zone/name, azure:///..."""


@dataclass(frozen=True, slots=True)
class PodView:
    """What a tick sees: the pods as last known, and whether the API is reachable."""

    pods: tuple[Pod, ...] = ()
    node: NodeFacts | None = None
    up: bool = False
    synced: bool = False
    """A list has completed at least once (before that, no pod is known)."""
    api_errors: int = 0
    """Failed requests since start (a counter)."""
    malformed: int = 0
    """Objects the API sent that are not pods (skipped), since start (a counter)."""


def parse_cpu_quantity(text: object) -> float:
    """Kubernetes CPU quantity ("2", "1500m", "0.5", "250u"...) in cores; ValueError if not one."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    if not isinstance(text, str) or not text:
        raise ValueError(f"not a CPU quantity: {text!r}")
    scale = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}.get(text[-1])
    number = text[:-1] if scale is not None else text
    value = float(number) * (scale or 1.0)
    if not value >= 0.0 or value == float("inf"):
        raise ValueError(f"not a CPU quantity: {text!r}")
    return value


def node_facts(node: Mapping[str, Any]) -> NodeFacts:
    metadata = node.get("metadata") or {}
    labels = metadata.get("labels") or {}
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    try:
        cores = parse_cpu_quantity(allocatable.get("cpu", "0"))
    except ValueError:
        cores = 0.0
    provider_id = (node.get("spec") or {}).get("providerID") or ""
    return NodeFacts(labels={str(k): str(v) for k, v in labels.items()}, allocatable_cores=cores,
                     provider_id=str(provider_id))


class PodWatcher(Reflector[Pod]):
    """Keeps this node's pods current from a background thread, and reads the Node after each
    list; `view()` is cheap and safe."""

    kind = "pod"

    def __init__(self, api: Any, node_name: str, **kwargs: Any) -> None:
        super().__init__(api.list_pod_for_all_namespaces, node_name, **kwargs)
        self._api = api
        self._node_facts: NodeFacts | None = None

    def keep(self, obj: Mapping[str, Any]) -> Pod:
        return obj

    def view(self) -> PodView:
        with self._lock:
            return PodView(pods=tuple(self._items.values()), node=self._node_facts,
                           up=self._up, synced=self._synced, api_errors=self._errors,
                           malformed=self._malformed)

    def after_list(self) -> None:
        facts = self._read_node()
        if facts is not None:
            with self._lock:
                self._node_facts = facts

    def _read_node(self) -> NodeFacts | None:
        try:
            response = self._request(self._api.read_node, self._node, _request_timeout=(10, 30))
            try:
                return node_facts(json.loads(response.data))
            finally:
                self._done(response)
        except Exception as exc:
            if self._stopping.is_set():
                raise _Stopped() from None
            self._throttle.fault("node", f"cannot read Node {self._node}: {_describe(exc)}; "
                                         "zone, region and allocatable CPU stay unknown")
            return None
