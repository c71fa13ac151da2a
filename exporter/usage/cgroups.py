"""Per-container CPU time from the kernel's cgroup tree (v2 unified, or v1 cpuacct)."""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from exporter import logs

RUNTIMES = ("containerd", "cri-o", "docker")
"""The prefixes the kubelet writes before `://` in a pod status' containerID."""
CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
CONTAINER_DIR = re.compile(r"(?:(cri-containerd|crio|docker)-)?([0-9a-f]{64})(?(1)\.scope)")
"""A container's cgroup: systemd driver `cri-containerd-<id>.scope`, `crio-<id>.scope` or
`docker-<id>.scope`, or the cgroupfs driver's bare `<id>`. CRI-O's `crio-conmon-<id>.scope` holds
the container's monitor process, not the container, and does not match. Use fullmatch: `$` would
accept a trailing newline."""
KUBEPODS_DEPTH = 4
"""kubepods / qos / pod / container; guaranteed pods have no qos level, so theirs sit at 3."""
V1_HIERARCHIES = ("cpu,cpuacct", "cpuacct,cpu", "cpuacct")
"""Where a v1 host mounts the cpuacct controller: co-mounted with cpu (either order), or alone."""

log = logs.get("cgroups")


class UnknownRuntime(ValueError):
    """A containerID whose runtime prefix is none of RUNTIMES."""


def parse_container_id(status_id: str) -> tuple[str, str]:
    """`containerd://<64 hex>` -> ('containerd', id); also `cri-o://` and `docker://`."""
    runtime, sep, cid = status_id.partition("://")
    if not sep:
        raise ValueError(f"container id {status_id!r} is not <runtime>://<id>")
    if runtime not in RUNTIMES:
        raise UnknownRuntime(f"container runtime {runtime!r} (in {status_id!r}) is not supported;"
                             f" supported: {', '.join(RUNTIMES)}")
    if not CONTAINER_ID.fullmatch(cid):
        raise ValueError(f"container id {cid!r} (in {status_id!r}) is not 64 lowercase hex digits")
    return runtime, cid


def _id_in_path(cgroup_path: str) -> str | None:
    # Innermost first: crun puts a CRI-O container's processes in `crio-<id>.scope/container`.
    for name in reversed(cgroup_path.split("/")):
        match = CONTAINER_DIR.fullmatch(name)
        if match:
            return match[2]
    return None


def container_id_of_pid(procfs: Path, pid: int) -> str | None:
    """The container id in `<procfs>/<pid>/cgroup`; None for a host process or a vanished pid."""
    try:
        text = (procfs / str(pid) / "cgroup").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None  # ENOENT once the pid is gone, ESRCH while it is being reaped
    for line in text.splitlines():
        # v2: `0::/path`; v1: `N:controllers:/path`, one line per hierarchy
        fields = line.split(":", 2)
        if len(fields) == 3:
            cid = _id_in_path(fields[2])
            if cid is not None:
                return cid
    return None


@dataclass(frozen=True, slots=True)
class CpuUsage:
    """Cumulative CPU seconds of one container's cgroup, and the file they were read from."""

    seconds: float
    file: str

    @property
    def path(self) -> Path:
        """The usage file, as a Path (made on demand: the tick itself never needs one)."""
        return Path(self.file)


MAX_USAGE_BYTES = 4096
"""cgroup v2 cpu.stat is under 300 bytes (6 lines, 9 with the cpu controller's throttling
fields); v1 cpuacct.usage one number. A larger file is never read whole."""


class _Garbage(Exception):
    """A usage file that holds no counter."""


def _v2_seconds(text: str) -> float:
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            value = value.strip()
            if value.isdigit():
                return int(value) / 1e6
            break
    raise _Garbage("no usage_usec counter")


def _v1_seconds(text: str) -> float:
    value = text.strip()
    if not value.isdigit():
        raise _Garbage(f"holds {value[:40]!r}, not a counter in nanoseconds")
    return int(value) / 1e9


class CgroupReader:
    """Reads per-container CPU time under `<sysfs>/fs/cgroup`, cgroup v2 or v1."""

    def __init__(self, sysfs: Path) -> None:
        mount = sysfs / "fs" / "cgroup"
        self.version: int | None = None
        self._root = mount
        # v2 first: a hybrid host's `unified/cgroup.controllers` is not at the top, so it is v1.
        if (mount / "cgroup.controllers").is_file():
            self.version = 2
        else:
            for name in V1_HIERARCHIES:
                if (mount / name).is_dir():
                    self.version, self._root = 1, mount / name
                    break
        self._file = "cpu.stat" if self.version == 2 else "cpuacct.usage"
        self._index: dict[str, str] = {}
        """Container id -> its usage file (a str: a Path per read costs more than the read),
        from the last walk of the kubepods subtree."""
        self._missing: frozenset[str] = frozenset()
        self._throttle = logs.Throttle(log, source="cgroups")

    def describe(self) -> str:
        """One line for the start-up log."""
        if self.version == 2:
            return f"cgroup v2 at {self._root}"
        if self.version == 1:
            return f"cgroup v1 (cpuacct) at {self._root}"
        return (f"no cgroup tree at {self._root} (neither cgroup.controllers nor a cpuacct "
                "hierarchy): per-container CPU time unavailable")

    def missing(self) -> frozenset[str]:
        """The ids asked for in the last cpu_seconds() call that had no readable cgroup."""
        return self._missing

    def cpu_seconds(self, container_ids: Collection[str]) -> dict[str, CpuUsage]:
        """Cumulative CPU seconds for each id whose cgroup was found; ids with no cgroup are
        left out."""
        wanted = set(container_ids)
        usage: dict[str, CpuUsage] = {}
        if self.version is not None:
            if not wanted <= self._index.keys():
                self._reindex()  # once per call, however many ids are new
            index = self._index
            for cid in wanted:
                path = index.get(cid)
                if path is not None:
                    seconds = self._read(cid, path)
                    if seconds is not None:
                        usage[cid] = CpuUsage(seconds, path)
        self._missing = frozenset(wanted - usage.keys())
        return usage

    def _read(self, cid: str, path: str) -> float | None:
        """One read of at most MAX_USAGE_BYTES: os.open and os.read on a str path, the cheapest
        way Python has (a tick reads one file per container)."""
        key = path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = os.read(fd, MAX_USAGE_BYTES)
            finally:
                os.close(fd)
            text = data.decode("ascii", errors="replace")
            seconds = _v2_seconds(text) if self.version == 2 else _v1_seconds(text)
        except OSError as exc:
            if not os.path.isdir(os.path.dirname(path)):
                del self._index[cid]  # the container exited: its cgroup is gone, not faulty
                return None
            self._throttle.fault(key, f"container {cid} left out: cannot read {path}: "
                                      f"{exc.strerror or exc}",
                                 container=cid, path=path, err=exc.strerror or exc)
            return None
        except _Garbage as exc:
            self._throttle.fault(key, f"container {cid} left out: {path} {exc}",
                                 container=cid, path=path, err=exc)
            return None
        self._throttle.recovered(key, f"{path} readable again", container=cid, path=path)
        return seconds

    def _reindex(self) -> None:
        index: dict[str, str] = {}
        try:
            with os.scandir(self._root) as entries:
                tops = [Path(e.path) for e in entries
                        if e.name.startswith("kubepods") and e.is_dir(follow_symlinks=False)]
        except OSError as exc:
            self._throttle.fault("walk", f"cannot list {self._root}: {exc.strerror or exc}",
                                 path=self._root, err=exc.strerror or exc)
            tops = []
        else:
            self._throttle.recovered("walk", f"{self._root} listable again")
        for top in tops:
            self._walk(top, 1, index)
        self._index = index

    def _walk(self, directory: Path, depth: int, index: dict[str, str]) -> None:
        try:
            with os.scandir(directory) as entries:
                children = [e for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError:
            return  # removed mid-walk (a pod being torn down): nothing left to find there
        for child in children:
            match = CONTAINER_DIR.fullmatch(child.name)
            if match:
                # never descend into a container
                index.setdefault(match[2], os.path.join(child.path, self._file))
            elif depth + 1 < KUBEPODS_DEPTH:
                self._walk(Path(child.path), depth + 1, index)
