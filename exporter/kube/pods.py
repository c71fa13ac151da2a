"""The pods of this node, kept by one list-then-watch (exporter.kube.reflector), and the node's
own labels, read again after each list.

A pod is kept slim (`slim_pod`): its model is matched once from the whole object as it arrives,
then only what attribution reads is kept (names, uid, resourceVersion, each container's name and
CPU request, each status's id and whether it runs), and of its labels only those
`kubernetes.pod_label_allowlist` publishes (exporter.podlabels). Args, env, annotations and
managedFields, which a pod may carry by the megabyte, are never held
(docs/performance.md#pods)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter import boundedjson
from exporter.kube.reflector import MAX_OBJECT_BYTES, Reflector, _describe, _read_bounded, _Stopped
from exporter.models import ModelMatch, ModelRule, match_pod
from exporter.podlabels import PodLabelAllowlist, PublishedLabels

Pod = Mapping[str, Any]


class SlimPod(dict[str, Any]):
    """A pod reduced to what the exporter reads, in the API's own shape, the model it was
    matched to from the whole object, and the labels its containers publish."""

    __slots__ = ("match", "pod_labels")

    def __init__(self, fields: Mapping[str, Any], match: ModelMatch,
                 pod_labels: PublishedLabels = ()) -> None:
        super().__init__(fields)
        self.match = match
        self.pod_labels = pod_labels
        """(`label_<key>`, value) pairs of the allowed labels (exporter.podlabels)."""


def _strings(source: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {k: source[k] for k in keys if isinstance(source.get(k), str)}


def _container(c: object) -> object:
    if not isinstance(c, Mapping):
        return None
    resources = c.get("resources")
    requests = resources.get("requests") if isinstance(resources, Mapping) else None
    cpu = requests.get("cpu") if isinstance(requests, Mapping) else None
    kept: dict[str, Any] = _strings(c, ("name",))
    if isinstance(cpu, str | int | float) and not isinstance(cpu, bool):
        kept["resources"] = {"requests": {"cpu": cpu}}
    return kept


def _status(cs: object) -> object:
    if not isinstance(cs, Mapping):
        return None
    kept = _strings(cs, ("name", "containerID"))
    state = cs.get("state")
    if isinstance(state, Mapping) and "running" in state:
        kept["state"] = {"running": {}}
    return kept


def slim_pod(obj: Mapping[str, Any], rules: Sequence[ModelRule] = (),
             labels: PodLabelAllowlist | None = None) -> SlimPod:
    """The model `obj` matches (exporter.models.match_pod), the labels `labels` publishes, and
    only the fields that exporter.workloads reads; what is malformed stays malformed (None) so
    it is still reported."""
    match = match_pod(obj, rules)
    meta, spec, status = obj.get("metadata"), obj.get("spec"), obj.get("status")
    published = (labels.publish(meta.get("labels"))
                 if labels and isinstance(meta, Mapping) else ())
    fields: dict[str, Any] = {
        "metadata": _strings(meta, ("namespace", "name", "uid", "resourceVersion"))
        if isinstance(meta, Mapping) else None}
    if isinstance(spec, Mapping):
        containers = spec.get("containers")
        fields["spec"] = {**_strings(spec, ("nodeName",)), "containers": [
            _container(c) for c in (containers if isinstance(containers, list) else ())]}
    else:
        fields["spec"] = None
    if isinstance(status, Mapping):
        statuses = status.get("containerStatuses")
        fields["status"] = {**_strings(status, ("phase",)), "containerStatuses": [
            _status(cs) for cs in (statuses if isinstance(statuses, list) else ())]}
    elif status is not None:
        fields["status"] = None
    return SlimPod(fields, match, published)


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

    def __init__(self, api: Any, node_name: str, *,
                 slim: Callable[[Mapping[str, Any]], Pod] = slim_pod, **kwargs: Any) -> None:
        """`slim`: what is kept of each pod; exporter.cli passes `slim_pod` with the model
        rules in force."""
        super().__init__(api.list_pod_for_all_namespaces, node_name, **kwargs)
        self._api = api
        self._slim = slim
        self._node_facts: NodeFacts | None = None
        self._pods: tuple[Pod, ...] = ()
        self._viewed = -1
        """The reflector's `_version` that `_pods` was taken at: a tick's pods are the same
        tuple as the last tick's while none changed (exporter.workloads reuses its work)."""

    def keep(self, obj: Mapping[str, Any]) -> Pod:
        return self._slim(obj)

    def view(self) -> PodView:
        with self._lock:
            if self._viewed != self._version:  # the same tuple while no pod changed, so that
                self._pods, self._viewed = tuple(self._items.values()), self._version
            return PodView(pods=self._pods, node=self._node_facts,
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
                body = _read_bounded(response, MAX_OBJECT_BYTES, f"Node {self._node}")
            finally:
                self._done(response)
            return node_facts(boundedjson.loads(body, max_bytes=MAX_OBJECT_BYTES,
                                                what=f"Node {self._node}"))
        except Exception as exc:
            if self._stopping.is_set():
                raise _Stopped() from None
            self._throttle.fault("node", f"cannot read Node {self._node}: {_describe(exc)}; "
                                         "zone, region and allocatable CPU stay unknown")
            return None
