"""From the pods the API knows and the cgroups the kernel keeps to one tick's workloads.

Each running container with a container id becomes a `Container` (who it is, which model, its
CPU request) with the CPU time its cgroup used since the last tick. Pods are matched to models
once per resourceVersion, not every tick. Problems (a malformed pod, a container id with no
cgroup, an unknown runtime) are reported once per container and reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import sub
from pathlib import Path
from typing import Any, cast

from exporter import logs
from exporter.attribution import Usage
from exporter.kube.pods import Pod, PodView, SlimPod, parse_cpu_quantity
from exporter.metrics import ERRORS
from exporter.models import ModelMatch, ModelRule, clean_label_value, match_pod
from exporter.podlabels import PodLabelAllowlist, PublishedLabels
from exporter.usage.cgroups import (
    CgroupReader,
    UnknownRuntime,
    container_id_of_pid,
    parse_container_id,
)
from exporter.usage.procstat import ProcError, read_cpu_times

log = logs.get("workloads")

MPS_SERVER = "nvidia-cuda-mps-server"
"""The process an MPS control daemon starts per GPU (and user); NVML lists it on the GPU."""


def process_name(procfs: Path, pid: int) -> str:
    """`<procfs>/<pid>/comm` without its newline; "" when the pid is gone."""
    try:
        return (procfs / str(pid) / "comm").read_text(encoding="utf-8",
                                                      errors="replace").strip()
    except OSError:
        return ""


@dataclass(frozen=True, slots=True)
class Container:
    """A container on this node: the labels its series carry, and what attribution needs."""

    namespace: str
    pod: str
    container: str
    model: str
    phase: str
    model_source: str
    owner_kind: str
    owner_name: str
    cpu_request_cores: float
    container_id: str
    """The runtime's id, without its `containerd://` prefix: it changes when the container
    restarts."""
    pod_uid: str = ""
    pod_labels: PublishedLabels = field(default=(), hash=False)
    """The pod's allowed labels as published on its info series, (`label_<key>`, value)
    pairs (exporter.podlabels); left out of the hash: the other fields identify the
    container."""
    key: tuple[str, str, str] = field(init=False, repr=False, compare=False, hash=False)
    """(namespace, pod, container), made once."""
    _hash: int = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        # A container is a dict key about eight times per tick (attribution, the GPU plan,
        # publishing): its hash is computed once, not over eleven fields each time.
        key = (self.namespace, self.pod, self.container)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "_hash", hash((
            key, self.model, self.phase, self.model_source, self.owner_kind, self.owner_name,
            self.cpu_request_cores, self.container_id, self.pod_uid)))

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong with one pod or container, reported once."""

    reason: str
    """malformed_pod, no_container_id, unknown_runtime or no_cgroup."""
    message: str


@dataclass(frozen=True, slots=True)
class WorkloadSample:
    """One tick's containers and their CPU time."""

    containers: tuple[Container, ...]
    """The containers whose CPU time was read (usage.keys)."""
    usage: Usage[Container]
    node_busy_cpu_seconds: float
    problems: tuple[Problem, ...]


def _requests(pod: Pod) -> dict[str, Any]:
    spec = pod.get("spec") or {}
    out = {}
    for c in spec.get("containers") or ():
        if isinstance(c, Mapping) and isinstance(c.get("name"), str):
            out[c["name"]] = ((c.get("resources") or {}).get("requests") or {}).get("cpu")
    return out


def containers_of(pod: Pod, match: ModelMatch, pod_labels: PublishedLabels = ()
                  ) -> tuple[list[Container], list[Problem]]:
    """The running containers of a pod that have an id, and what is wrong with the others;
    each carries `pod_labels`, the pod's published labels."""
    problems: list[Problem] = []
    metadata = pod.get("metadata")
    status = pod.get("status")
    if not (isinstance(metadata, Mapping) and isinstance(metadata.get("namespace"), str)
            and isinstance(metadata.get("name"), str) and isinstance(pod.get("spec"), Mapping)
            and isinstance(status or {}, Mapping)):
        return [], [Problem("malformed_pod", f"pod {str(metadata)[:80]} lacks namespace, name "
                                             "or spec; its energy stays unattributed")]
    where = f"pod {metadata['namespace']}/{metadata['name']}"
    requests = _requests(pod)
    out = []
    for cs in (status or {}).get("containerStatuses") or ():
        if not isinstance(cs, Mapping) or not isinstance(cs.get("name"), str):
            problems.append(Problem("malformed_pod", f"{where}: a containerStatus without name"))
            continue
        name, raw_id = cs["name"], cs.get("containerID")
        if not raw_id:
            if "running" in (cs.get("state") or {}):
                problems.append(Problem("no_container_id",
                                        f"{where} container {name} runs but has no containerID"))
            continue
        try:
            _, container_id = parse_container_id(str(raw_id))
        except UnknownRuntime as exc:
            problems.append(Problem("unknown_runtime", f"{where} container {name}: {exc}"))
            continue
        except ValueError as exc:
            problems.append(Problem("malformed_pod", f"{where} container {name}: {exc}"))
            continue
        try:
            request = parse_cpu_quantity(requests[name]) if requests.get(name) else 0.0
        except ValueError as exc:
            problems.append(Problem("malformed_pod", f"{where} container {name}: {exc}"))
            request = 0.0
        out.append(Container(  # names cleaned as model values are: a lone surrogate in any
            # of them would make the whole exposition unencodable
            namespace=clean_label_value(metadata["namespace"]),
            pod=clean_label_value(metadata["name"]), container=clean_label_value(name),
            model=match.model, phase=match.phase, model_source=match.model_source,
            owner_kind=match.owner_kind, owner_name=match.owner_name,
            cpu_request_cores=request, container_id=container_id,
            pod_uid=clean_label_value(str(metadata.get("uid") or "")), pod_labels=pod_labels))
    return out, problems


class WorkloadTracker:
    """Turns a PodView into one tick's workloads; keeps per-container CPU counters between ticks."""

    def __init__(self, *, procfs: Path, cgroups: CgroupReader, rules: Sequence[ModelRule],
                 labels: PodLabelAllowlist | None = None) -> None:
        """`labels`: the pod labels published (`kubernetes.pod_label_allowlist`), for pods
        that are not a SlimPod (which carries them already)."""
        self._procfs = procfs
        self._cgroups = cgroups
        self._rules = rules
        self._labels = labels or PodLabelAllowlist()
        self._pods: dict[str, tuple[str, list[Container], list[Problem]]] = {}
        """Pod uid -> (resourceVersion, containers, problems), recomputed when the pod changes."""
        self._last_cpu: tuple[tuple[str, ...], Sequence[float | None]] = ((), [])
        """The ids read at the last tick and their cumulative CPU seconds (None: unread)."""
        self._requests: tuple[tuple[Container, ...] | None, list[float]] = (None, [])
        """The containers' CPU requests, made once per tuple of them."""
        self._busy: float | None = None
        self._reported: set[tuple[str, str]] = set()
        self._throttle = logs.Throttle(log, source="kubernetes")
        self._pid_ids: dict[int, str | None] = {}
        self._last_pods: tuple[Pod, ...] | None = None
        self._last_containers: tuple[tuple[Container, ...], list[Problem], tuple[str, ...]] = (
            (), [], ())

    def describe(self) -> str:
        """Where container CPU time is read from, for logs."""
        return self._cgroups.describe()

    def close(self) -> None:
        """Close the usage files kept open (exporter.usage.cgroups)."""
        self._cgroups.close()

    def containers_of_pids(self, pids: set[int],
                           containers: Sequence[Container]) -> dict[int, Container]:
        """Which container each GPU process belongs to (host PIDs, via <procfs>/<pid>/cgroup).

        A pid's cgroup never changes, so each is read once while it lives. An MPS server
        (`nvidia-cuda-mps-server`) is nobody's: it runs the work of its clients, in their pods,
        from the pod of the MPS control daemon (docs/attribution.md#mps).
        """
        by_id = {c.container_id: c for c in containers}
        known = {pid: self._pid_ids[pid] if pid in self._pid_ids
                 else self._container_id_of_gpu_pid(pid) for pid in pids}
        self._pid_ids = known  # forget pids that are gone
        return {pid: by_id[cid] for pid, cid in known.items() if cid in by_id}

    def _container_id_of_gpu_pid(self, pid: int) -> str | None:
        container_id = container_id_of_pid(self._procfs, pid)
        if container_id is not None and process_name(self._procfs, pid) == MPS_SERVER:
            log.info(f"GPU process {pid} is an MPS server ({MPS_SERVER}, container "
                     f"{container_id[:12]}): not a GPU holder; its clients are")
            return None
        return container_id

    def sample(self, view: PodView) -> WorkloadSample:
        busy_delta = 0.0
        try:
            busy = read_cpu_times(self._procfs).busy_seconds
            if self._busy is not None:
                busy_delta = max(busy - self._busy, 0.0)
            self._busy = busy
        except ProcError as exc:
            log.debug(f"node CPU time unknown this tick: {exc}")

        containers, problems, ids = self._containers_of(view.pods)
        seconds: Sequence[float | None] | None = self._cgroups.cpu_seconds_in_order(ids)
        if seconds is None:  # not every one read the common way: one by one
            found = self._cgroups.cpu_seconds(ids)
            seconds = [found.get(cid) for cid in ids]
        if None in seconds:
            problems = problems + [
                Problem("no_cgroup", f"container {c.namespace}/{c.pod}/{c.container} "
                                     f"({c.container_id[:12]}) has no cgroup under "
                                     f"{self._cgroups.describe()}")
                for c, s in zip(containers, seconds, strict=True) if s is None]
        usage = self._usage(containers, ids, seconds)

        fresh = []
        current = set()
        for problem in problems:
            mark = (problem.reason, problem.message)
            current.add(mark)
            if mark not in self._reported:
                fresh.append(problem)
                # One line per reason and period: pod churn must not flood the log.
                self._throttle.fault(problem.reason, f"{problem.message} ({problem.reason}; "
                                                     "further ones are counted in "
                                                     f"{ERRORS.name})")
        self._reported = current  # bounded by what is wrong now
        return WorkloadSample(containers=usage.keys, usage=usage,
                              node_busy_cpu_seconds=busy_delta, problems=tuple(fresh))

    def _usage(self, containers: tuple[Container, ...], ids: tuple[str, ...],
               seconds: Sequence[float | None]) -> Usage[Container]:
        """The containers read this tick and the CPU time each used since the last (0 at its
        first, or if its counter went back), as columns. While every container is read (the
        common case) they are the very tuple of `containers`, the same as last tick while no
        pod changed, so that what the reader and publisher derive from them is reused (an
        identity check); while the ids and reads are also as last tick, the differences are
        taken in C (`map`)."""
        last_ids, last = self._last_cpu
        self._last_cpu = (ids, seconds)
        if last_ids is ids and None not in seconds and None not in last:
            keys = containers
            used = list(map(max, map(sub, cast(Sequence[float], seconds),
                                     cast(Sequence[float], last)), repeat(0.0)))
        else:
            before = dict(zip(last_ids, last, strict=True))
            read = [(c, s, before.get(c.container_id))
                    for c, s in zip(containers, seconds, strict=True) if s is not None]
            keys = containers if len(read) == len(containers) else tuple(c for c, _, _ in read)
            used = [max(s - b, 0.0) if b is not None else 0.0 for _, s, b in read]
        if self._requests[0] is not keys:
            self._requests = (keys, [c.cpu_request_cores for c in keys])
        return Usage(keys, used, self._requests[1])

    def _containers_of(self, pods: tuple[Pod, ...]
                       ) -> tuple[tuple[Container, ...], list[Problem], tuple[str, ...]]:
        """The pods' containers, the problems found in their specs, and the containers' ids;
        the same tuples as last tick while the pods are the same tuple (no pod changed)."""
        if pods is self._last_pods and isinstance(pods, tuple):
            return self._last_containers
        containers: list[Container] = []
        problems: list[Problem] = []
        live = set()
        for pod in pods:
            uid = str((pod.get("metadata") or {}).get("uid"))
            rv = str((pod.get("metadata") or {}).get("resourceVersion"))
            live.add(uid)
            cached = self._pods.get(uid)
            if cached is None or cached[0] != rv:
                if isinstance(pod, SlimPod):
                    match, labels = pod.match, pod.pod_labels
                else:
                    match = match_pod(pod, self._rules)
                    labels = self._labels.publish((pod.get("metadata") or {}).get("labels"))
                found, wrong = containers_of(pod, match, labels)
                cached = (rv, found, wrong)
                self._pods[uid] = cached
            containers.extend(cached[1])
            problems.extend(cached[2])
        for uid in set(self._pods) - live:
            del self._pods[uid]
        self._last_pods = pods
        self._last_containers = (tuple(containers), problems,
                                 tuple(c.container_id for c in containers))
        return self._last_containers
