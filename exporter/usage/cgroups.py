"""Per-container CPU time from the kernel's cgroup tree (v2 unified, or v1 cpuacct)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import weakref
from collections.abc import Collection
from itertools import repeat
from operator import truediv
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


MAX_USAGE_BYTES = 4096
"""cgroup v2 cpu.stat is under 300 bytes (6 lines, 9 with the cpu controller's throttling
fields); v1 cpuacct.usage one number. A larger file is never read whole."""

KEEP_OPEN_MAX = 4096
"""The most usage files kept open, whatever the descriptor limit: a node runs a few hundred
containers (110 pods by default); above the cap the rest are opened at each read."""

_REOPEN = (errno.ENODEV, errno.ENOENT, errno.ESTALE, errno.EBADF)
"""What a read of a kept-open usage file raises when it should be opened again: cgroupfs answers
ENODEV once the cgroup is removed (a new cgroup of that name is a new file)."""


def keep_open_limit() -> int:
    """How many usage files may be kept open: half the soft RLIMIT_NOFILE (the rest for sockets
    and everything else, and below 1024 for anything that still uses select()), at most
    KEEP_OPEN_MAX. A DaemonSet under containerd 2 or Docker 25 inherits a soft limit of 1024:
    512 kept open."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return 0
    if soft == resource.RLIM_INFINITY:
        return KEEP_OPEN_MAX
    return max(0, min(KEEP_OPEN_MAX, soft // 2))


def on_cgroupfs(path: Path) -> bool:
    """Whether `path` is on a cgroup filesystem (cgroup or cgroup2, by its device in
    /proc/self/mountinfo, so a bind mount at /host/sys counts). There a file is never replaced
    while its cgroup lives, and a kept-open one fails once the cgroup is removed; anywhere else
    (a copied tree, a test fixture) a file may be replaced by a rename, which an open descriptor
    does not see."""
    try:
        device = os.stat(path).st_dev
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    wanted = f"{os.major(device)}:{os.minor(device)}"
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 3 and fields[2] == wanted and " - " in line:
            fstype = line.split(" - ", 1)[1].split(" ", 1)[0]
            return fstype in ("cgroup", "cgroup2")
    return False


class _Garbage(Exception):
    """A usage file that holds no counter."""


def _v2_seconds(data: bytes) -> float:
    if data.startswith(b"usage_usec "):  # the kernel writes it first: the common case
        end = data.find(b"\n")
        value = data[11:end] if end >= 0 else data[11:]
        if value.isdigit():  # bytes: ASCII digits only, what int() takes
            return int(value) / 1e6
    for line in data.splitlines():
        key, _, value = line.partition(b" ")
        if key == b"usage_usec":
            value = value.strip()
            if value.isdigit():
                return int(value) / 1e6
            break
    raise _Garbage("no usage_usec counter")


def _v1_seconds(data: bytes) -> float:
    value = data.strip()
    if not value.isdigit():
        shown = value[:40].decode("ascii", errors="replace")
        raise _Garbage(f"holds {shown!r}, not a counter in nanoseconds")
    return int(value) / 1e9


def _close_all(kept: dict[str, tuple[int, str]]) -> None:
    for fd, _ in kept.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    kept.clear()


class CgroupReader:
    """Reads per-container CPU time under `<sysfs>/fs/cgroup`, cgroup v2 or v1.

    Each container's usage file is opened once and kept open; a tick reads it again with
    `pread`, one system call instead of open, read and close. Up to `max_open` are kept (None:
    `keep_open_limit()`, asked at each walk of the tree); above that the rest are opened at each
    read, and that is logged once. A kept file is opened again when its read fails (cgroupfs
    answers ENODEV once the cgroup is gone) and closed when its container is no longer asked
    for or no longer in the tree. Off cgroupfs (`check_links`) a read is also followed by an
    fstat, and a file with no link left (replaced by a rename, or its directory removed) is
    opened again. The descriptors belong to the thread that reads (a tick's host reads);
    `close()` them when done, or they close when the reader is collected.
    """

    def __init__(self, sysfs: Path, *, max_open: int | None = None) -> None:
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
        self._parse = _v2_seconds if self.version == 2 else _v1_seconds
        self._index: dict[str, str] = {}
        """Container id -> its usage file (a str: a Path per read costs more than the read),
        from the last walk of the kubepods subtree."""
        self._kept: dict[str, tuple[int, str]] = {}
        """Container id -> the open descriptor of its usage file, and that file's path."""
        self._max_open = max_open
        self._limit = max_open if max_open is not None else keep_open_limit()
        self._over_limit_logged = False
        self.check_links = self.version is not None and not on_cgroupfs(self._root)
        """Whether a kept file may be replaced while its cgroup lives (not on cgroupfs)."""
        self._missing: frozenset[str] = frozenset()
        self._faulty: set[str] = set()
        """Usage files whose fault was logged and not yet their recovery (read the slow way)."""
        self._throttle = logs.Throttle(log, source="cgroups")
        self._kept_version = 0
        """Bumped whenever a file is kept or let go: the descriptors in `_fds` may be stale."""
        self._fds: tuple[tuple[str, ...], int, list[int]] | None = None
        """The ids last read in order, the `_kept_version` then, and their descriptors."""
        self._finalizer = weakref.finalize(self, _close_all, self._kept)

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

    def usage_file(self, container_id: str) -> Path | None:
        """The usage file of a container as last indexed (what cpu_seconds reads for it)."""
        path = self._index.get(container_id)
        return Path(path) if path is not None else None

    def open_files(self) -> int:
        """How many usage files are kept open now."""
        return len(self._kept)

    def close(self) -> None:
        """Close every kept usage file (the next read opens them again)."""
        _close_all(self._kept)
        self._kept_version += 1

    def cpu_seconds_in_order(self, container_ids: tuple[str, ...]) -> list[float] | None:
        """Each id's cumulative CPU seconds, in the ids' order, when every one reads the common
        way: v2 on cgroupfs, its file kept open, `usage_usec` first, digits. One `pread` each
        and the parsing in C (`map`), no Python per container. None when any does
        not (a new id, a failed read, a fault still logged, another layout): then
        `cpu_seconds` reads them one by one and deals with each."""
        if self.check_links or self.version != 2 or self._faulty:
            return None
        fds = self._fds_in_order(container_ids)
        if fds is None:
            return None
        try:
            data = list(map(os.pread, fds, repeat(MAX_USAGE_BYTES), repeat(0)))
        except OSError:
            return None
        if not all(map(bytes.startswith, data, repeat(b"usage_usec "))):
            return None
        ends = list(map(bytes.find, data, repeat(b"\n"), repeat(11)))
        if ends and min(ends) <= 11:  # no line end (-1), or no value before it
            return None
        values = list(map(bytes.__getitem__, data, map(slice, repeat(11), ends)))
        if not all(map(bytes.isdigit, values)):
            return None
        self._missing = frozenset()
        return list(map(truediv, map(int, values), repeat(1e6)))

    def _fds_in_order(self, container_ids: tuple[str, ...]) -> list[int] | None:
        """The kept descriptors of these ids in order, made once while the ids are the same
        tuple and no file was opened or closed since; None unless every one is kept."""
        cached = self._fds
        if (cached is not None and cached[0] is container_ids
                and cached[1] == self._kept_version):
            return cached[2]
        kept = self._kept
        if len(kept) != len(container_ids) or not all(map(kept.__contains__, container_ids)):
            return None  # cpu_seconds opens the new ones and forgets those not asked for
        fds = [kept[cid][0] for cid in container_ids]
        self._fds = (container_ids, self._kept_version, fds)
        return fds

    def cpu_seconds(self, container_ids: Collection[str]) -> dict[str, float]:
        """Cumulative CPU seconds for each id whose cgroup was found; ids with no cgroup are
        left out. One by one, each fault dealt with: what a tick reads when
        `cpu_seconds_in_order` declines (a new or gone container, a fault, v1, off cgroupfs)."""
        wanted = set(container_ids)
        usage: dict[str, float] = {}
        if self.version is not None:
            if not wanted <= self._index.keys():
                self._reindex()  # once per call, however many ids are new
            kept = self._kept
            if len(kept) > len(wanted):  # containers no longer asked for (exited)
                for cid in kept.keys() - wanted:
                    self._forget(cid)
            index = self._index
            read = self._read
            for cid in wanted:
                path = index.get(cid)
                if path is not None:
                    seconds = read(cid, path)
                    if seconds is not None:
                        usage[cid] = seconds
        self._missing = frozenset(wanted - usage.keys())
        return usage

    def _forget(self, cid: str) -> None:
        entry = self._kept.pop(cid, None)
        if entry is not None:
            self._kept_version += 1
            with contextlib.suppress(OSError):
                os.close(entry[0])

    def _open_and_read(self, cid: str, path: str) -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.pread(fd, MAX_USAGE_BYTES, 0)
        except BaseException:
            os.close(fd)
            raise
        if len(self._kept) < self._limit:
            self._kept[cid] = (fd, path)
            self._kept_version += 1
        else:
            os.close(fd)
            if not self._over_limit_logged:
                self._over_limit_logged = True
                log.info(f"{self._limit} containers' usage files are kept open (half the "
                         "open-file limit, RLIMIT_NOFILE, at most "
                         f"{KEEP_OPEN_MAX}); the others are opened at each read")
        return data

    def _read(self, cid: str, path: str) -> float | None:
        """One read of at most MAX_USAGE_BYTES: `pread` on the kept-open file, or open (and
        keep) it first."""
        try:
            entry = self._kept.get(cid)
            if entry is None:
                data = self._open_and_read(cid, path)
            else:
                fd = entry[0]
                try:
                    data = os.pread(fd, MAX_USAGE_BYTES, 0)
                    stale = self.check_links and os.fstat(fd).st_nlink == 0
                except OSError as exc:
                    if exc.errno not in _REOPEN:
                        raise
                    stale = True
                if stale:  # removed, or replaced: the file now at `path`, if any
                    self._forget(cid)
                    data = self._open_and_read(cid, path)
            seconds = self._parse(data)
        except OSError as exc:
            self._forget(cid)
            if not os.path.isdir(os.path.dirname(path)):
                del self._index[cid]  # the container exited: its cgroup is gone, not faulty
                self._faulty.discard(path)
                return None
            self._fault(path, f"container {cid} left out: cannot read {path}: "
                              f"{exc.strerror or exc}",
                        container=cid, path=path, err=exc.strerror or exc)
            return None
        except _Garbage as exc:
            self._fault(path, f"container {cid} left out: {path} {exc}",
                        container=cid, path=path, err=exc)
            return None
        if self._faulty and path in self._faulty:
            self._faulty.discard(path)
            self._throttle.recovered(path, f"{path} readable again", container=cid, path=path)
        return seconds

    def _fault(self, key: str, message: str, **facts: object) -> None:
        self._faulty.add(key)
        self._throttle.fault(key, message, **facts)

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
        if self._faulty:  # bounded by the files in the tree
            self._faulty.intersection_update(index.values())
        for cid, (_, path) in list(self._kept.items()):
            if index.get(cid) != path:  # gone from the tree, or found elsewhere now
                self._forget(cid)
        if self._max_open is None:
            self._limit = keep_open_limit()

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
