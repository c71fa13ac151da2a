"""cgroup reader against committed v1/v2 trees per runtime and driver, and odd cases built
from them."""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter import logs
from exporter.usage import cgroups
from exporter.usage.cgroups import (
    CgroupReader,
    UnknownRuntime,
    container_id_of_pid,
    parse_container_id,
)
from tests.support import FIXTURES, write_atomic, write_in_place

CGROUP_FIXTURES = FIXTURES / "cgroup"
VARIANTS = ("v2-systemd-containerd", "v2-systemd-crio", "v2-cgroupfs-containerd",
            "v1-systemd-docker", "v1-cgroupfs-containerd")


def cid(digit: str) -> str:
    return digit * 64


USEC = {cid("1"): 5_012_345_678, cid("a"): 31_337, cid("2"): 812_345_001, cid("3"): 42_000_250,
        cid("b"): 29_001, cid("4"): 1_250_000, cid("c"): 27_777}
"""Every pod container in every fixture (pause containers included), as in its README."""
DECOY = cid("e")  # a container outside kubepods
UNKNOWN = cid("f")


def expected_seconds(variant: str, container: str) -> float:
    if variant.startswith("v2"):
        return USEC[container] / 1e6
    return (USEC[container] * 1000 + 417) / 1e9


def container_dir_name(variant: str, container: str) -> str:
    scope = {"v2-systemd-containerd": "cri-containerd", "v2-systemd-crio": "crio",
             "v1-systemd-docker": "docker"}.get(variant)
    return f"{scope}-{container}.scope" if scope else container


def tree(tmp_path: Path, variant: str) -> Path:
    """A writable copy of a fixture node: the root holding `sys/` and `proc/`."""
    root = tmp_path / variant
    shutil.copytree(CGROUP_FIXTURES / variant, root)
    return root


def hierarchy(root: Path) -> Path:
    mount = root / "sys" / "fs" / "cgroup"
    return mount if (mount / "cgroup.controllers").exists() else mount / "cpu,cpuacct"


def container_dir(root: Path, container: str) -> Path:
    names = {container, *(f"{scope}-{container}.scope" for scope in
                          ("cri-containerd", "crio", "docker"))}
    [found] = [p for p in hierarchy(root).glob("kubepods*/**/*") if p.name in names]
    return found


def usage_text(variant: str, usec: int) -> str:
    if variant.startswith("v2"):
        return f"usage_usec {usec}\nuser_usec {usec}\nsystem_usec 0\nnr_periods 0\n"
    return f"{usec * 1000}\n"


def usage_file(variant: str) -> str:
    return "cpu.stat" if variant.startswith("v2") else "cpuacct.usage"


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Every directory the reader lists, in order."""
    seen: list[Path] = []
    real = os.scandir

    def counting(path: str | os.PathLike[str] | int) -> object:
        if not isinstance(path, int):  # shutil.rmtree lists by file descriptor
            seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(cgroups.os, "scandir", counting)
    yield seen


# parse_container_id

@pytest.mark.parametrize(("status_id", "runtime"), [
    (f"containerd://{cid('1')}", "containerd"),
    (f"cri-o://{cid('2')}", "cri-o"),
    (f"docker://{cid('3')}", "docker"),
])
def test_parse_container_id_per_runtime(status_id: str, runtime: str) -> None:
    assert parse_container_id(status_id) == (runtime, status_id.split("://")[1])


def test_unknown_runtime_names_prefix_and_supported_ones() -> None:
    with pytest.raises(UnknownRuntime) as info:
        parse_container_id(f"rkt://{cid('1')}")
    message = str(info.value)
    assert "'rkt'" in message
    for runtime in ("containerd", "cri-o", "docker"):
        assert runtime in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("status_id", [
    "", cid("1"), "containerd://", f"containerd://{cid('1')[:63]}",
    f"containerd://{cid('1')}1", f"containerd://{cid('A')}", f"containerd://{cid('g')}",
    f"containerd://{cid('1')}\n", f"containerd:/{cid('1')}",
])
def test_malformed_container_id_is_value_error(status_id: str) -> None:
    with pytest.raises(ValueError, match="container id") as info:
        parse_container_id(status_id)
    assert not isinstance(info.value, UnknownRuntime)


# every fixture variant

@pytest.mark.parametrize("variant", VARIANTS)
def test_reader_finds_every_container_exactly(variant: str) -> None:
    reader = CgroupReader(CGROUP_FIXTURES / variant / "sys")
    assert reader.version == int(variant[1])
    mount = CGROUP_FIXTURES / variant / "sys" / "fs" / "cgroup"
    described = reader.describe()
    assert described.startswith(f"cgroup v{variant[1]}")
    assert str(mount if variant.startswith("v2") else mount / "cpu,cpuacct") in described
    usage = reader.cpu_seconds(USEC)
    assert usage == {
        c: expected_seconds(variant, c) for c in USEC}
    for container in usage:
        found = reader.usage_file(container)
        assert found is not None
        assert found.name == usage_file(variant)
        assert found.parent.name == container_dir_name(variant, container)
        assert "kubepods" in found.parent.parent.as_posix()
    assert reader.missing() == frozenset()


@pytest.mark.parametrize("variant", VARIANTS)
def test_unknown_and_non_kubepods_ids_are_missing(variant: str) -> None:
    reader = CgroupReader(CGROUP_FIXTURES / variant / "sys")
    usage = reader.cpu_seconds([cid("2"), UNKNOWN, DECOY])
    assert set(usage) == {cid("2")}
    assert reader.missing() == {UNKNOWN, DECOY}
    assert reader.cpu_seconds([]) == {}
    assert reader.missing() == frozenset(), "missing() is about the last call only"


def test_crio_conmon_scope_is_not_the_container(tmp_path: Path) -> None:
    root = tree(tmp_path, "v2-systemd-crio")
    reader = CgroupReader(root / "sys")
    usage = reader.cpu_seconds([cid("2")])
    assert usage[cid("2")] == USEC[cid("2")] / 1e6  # the scope, not conmon nor crun's
    assert (reader.usage_file(cid("2")) or Path()).parent.name == f"crio-{cid('2')}.scope"
    # the container exits while its monitor lingers: conmon's scope is no stand-in
    shutil.rmtree(container_dir(root, cid("4")))
    fresh = CgroupReader(root / "sys")
    assert cid("4") not in fresh.cpu_seconds([cid("4")])
    assert fresh.missing() == {cid("4")}
    pod = next(hierarchy(root).glob("kubepods.slice/kubepods-besteffort.slice/*pod*"))
    assert (pod / f"crio-conmon-{cid('4')}.scope" / "cpu.stat").is_file()


@pytest.mark.parametrize("variant", VARIANTS)
def test_container_created_after_first_call_is_found(tmp_path: Path, variant: str) -> None:
    root = tree(tmp_path, variant)
    reader = CgroupReader(root / "sys")
    new = cid("5")
    assert reader.cpu_seconds([cid("1"), new]).keys() == {cid("1")}
    assert reader.missing() == {new}
    sibling = container_dir(root, cid("3"))
    created = sibling.with_name(container_dir_name(variant, new))
    created.mkdir()
    (created / usage_file(variant)).write_text(usage_text(variant, 2_500_000))
    usage = reader.cpu_seconds([cid("1"), new])
    assert usage[new] == 2.5
    assert reader.usage_file(new) == created / usage_file(variant)
    assert usage[cid("1")] == expected_seconds(variant, cid("1"))
    assert reader.missing() == frozenset()


@pytest.mark.parametrize("variant", VARIANTS)
def test_vanished_container_disappears(tmp_path: Path, variant: str) -> None:
    root = tree(tmp_path, variant)
    reader = CgroupReader(root / "sys")
    assert reader.cpu_seconds([cid("2"), cid("3")]).keys() == {cid("2"), cid("3")}
    shutil.rmtree(container_dir(root, cid("3")))
    assert reader.cpu_seconds([cid("2"), cid("3")]).keys() == {cid("2")}
    assert reader.missing() == {cid("3")}
    # the whole pod goes
    shutil.rmtree(container_dir(root, cid("1")).parent)
    assert reader.cpu_seconds([cid("1"), cid("a"), cid("4")]).keys() == {cid("4")}
    assert reader.missing() == {cid("1"), cid("a")}


def test_walk_happens_only_for_new_ids_and_once_per_call(
        tmp_path: Path, listings: list[Path]) -> None:
    root = tree(tmp_path, "v2-systemd-containerd")
    reader = CgroupReader(root / "sys")
    top = hierarchy(root)
    reader.cpu_seconds(USEC)
    assert listings.count(top) == 1
    listings.clear()
    reader.cpu_seconds(USEC)
    assert listings == [], "every id is indexed: no walk"
    reader.cpu_seconds([cid("1"), UNKNOWN, DECOY, cid("6")])
    assert listings.count(top) == 1, "several unknown ids: one walk"
    assert reader.missing() == {UNKNOWN, DECOY, cid("6")}
    assert all("kubepods" in p.as_posix() for p in listings if p != top)
    assert not [p for p in listings if len(p.relative_to(top).parts) > 3], "depth limit"


def test_vanished_cgroup_is_dropped_from_the_index(
        tmp_path: Path, listings: list[Path]) -> None:
    root = tree(tmp_path, "v2-cgroupfs-containerd")
    reader = CgroupReader(root / "sys")
    reader.cpu_seconds([cid("2"), cid("3")])
    shutil.rmtree(container_dir(root, cid("3")))
    listings.clear()
    assert reader.cpu_seconds([cid("2"), cid("3")]).keys() == {cid("2")}
    assert listings == [], "the id was indexed: its vanished directory is found on read"
    reader.cpu_seconds([cid("2"), cid("3")])
    assert listings.count(hierarchy(root)) == 1, "dropped, so asking again re-walks"


def test_container_below_the_depth_limit_is_not_indexed(tmp_path: Path) -> None:
    root = tree(tmp_path, "v2-cgroupfs-containerd")
    pod = container_dir(root, cid("2")).parent
    deep = pod / "nested" / cid("6")
    deep.mkdir(parents=True)
    (deep / "cpu.stat").write_text(usage_text("v2", 1_000_000))
    reader = CgroupReader(root / "sys")
    assert reader.cpu_seconds([cid("6"), cid("2")]).keys() == {cid("2")}
    assert reader.missing() == {cid("6")}


@pytest.mark.parametrize("variant", ["v2-systemd-containerd", "v1-systemd-docker"])
def test_garbage_usage_is_skipped_and_logged_once(
        tmp_path: Path, variant: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="footprint")
    root = tree(tmp_path, variant)
    reader = CgroupReader(root / "sys")
    path = container_dir(root, cid("2")) / usage_file(variant)
    garbage = ["nr_periods 0\nusage_usec lots\n", "", "user_usec 5\n"] if variant[1] == "2" else [
        "lots\n", "", "-5\n", "12 34\n"]
    for text in garbage:
        write_in_place(path, text)
        usage = reader.cpu_seconds([cid("2"), cid("3")])
        assert usage.keys() == {cid("3")}
        assert reader.missing() == {cid("2")}
    faults = [r for r in caplog.records if str(path) in r.getMessage()]
    assert len(faults) == 1, "logged once, not every tick"
    assert faults[0].levelno == logging.WARNING
    assert getattr(faults[0], logs.FIELDS) == {"source": "cgroups", "container": cid("2"),
                                               "path": str(path), "err": faults[0].getMessage()
                                               .split(f"{path} ", 1)[1]}
    assert f" source=cgroups container={cid('2')} path={path} err=" in (
        logs.LogfmtFormatter().format(faults[0]))
    write_in_place(path, usage_text(variant, 900_000_000))
    assert reader.cpu_seconds([cid("2")])[cid("2")] == 900.0
    assert any("readable again" in r.getMessage() for r in caplog.records)


def test_unreadable_usage_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tree(tmp_path, "v2-systemd-crio")
    reader = CgroupReader(root / "sys")
    path = container_dir(root, cid("3")) / "cpu.stat"
    path.unlink()
    path.mkdir()  # EISDIR: reading fails though the cgroup is there
    assert reader.cpu_seconds([cid("2"), cid("3")]).keys() == {cid("2")}
    assert reader.missing() == {cid("3")}
    assert any(str(path) in r.getMessage() for r in caplog.records)
    assert reader.cpu_seconds([cid("3")]) == {}, "still there: stays indexed, no raise"


# usage files kept open (read again with pread)

def open_usage_files() -> list[str]:
    """The usage files this process has open, by /proc/self/fd."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.endswith(("/cpu.stat", "/cpuacct.usage")):
                found.append(target.removesuffix(" (deleted)"))
    return found


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every usage file opened (by the reader: nothing else opens them), in order."""
    seen: list[str] = []
    real = os.open

    def counting(path: str, flags: int, *args: int, **kwargs: int) -> int:
        if isinstance(path, str) and path.endswith(("/cpu.stat", "/cpuacct.usage")):
            seen.append(path)
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(cgroups.os, "open", counting)
    yield seen


@pytest.mark.parametrize("variant", ["v2-systemd-containerd", "v1-cgroupfs-containerd"])
def test_usage_files_are_opened_once_and_read_again(
        tmp_path: Path, variant: str, opens: list[str]) -> None:
    root = tree(tmp_path, variant)
    reader = CgroupReader(root / "sys")
    reader.check_links = False  # as on cgroupfs: the fixture is written in place
    assert reader.cpu_seconds([cid("2"), cid("3")]).keys() == {cid("2"), cid("3")}
    assert reader.open_files() == 2
    assert len(opens) == 2
    path = container_dir(root, cid("2")) / usage_file(variant)
    for usec in (900_000_000, 900_000_001):
        write_in_place(path, usage_text(variant, usec))
        usage = reader.cpu_seconds([cid("2"), cid("3")])
        assert usage[cid("2")] == usec / 1e6
        assert usage[cid("3")] == expected_seconds(variant, cid("3"))
    assert len(opens) == 2, "read again, not opened again"
    assert sorted(open_usage_files()) == sorted(
        str(container_dir(root, c) / usage_file(variant)) for c in (cid("2"), cid("3")))
    reader.close()
    assert reader.open_files() == 0
    assert open_usage_files() == []
    assert reader.cpu_seconds([cid("2")])[cid("2")] == 900_000_001 / 1e6
    assert reader.open_files() == 1, "opened again"


def test_kept_file_with_garbage_is_left_out_then_recovers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="footprint")
    root = tree(tmp_path, "v2-cgroupfs-containerd")
    reader = CgroupReader(root / "sys")
    reader.check_links = False
    path = container_dir(root, cid("2")) / "cpu.stat"
    assert reader.cpu_seconds([cid("2"), cid("3")]).keys() == {cid("2"), cid("3")}
    for text in ("usage_usec lots\n", "usage_usec 5", "", "nr_periods 0\nusage_usec 5\n"):
        write_in_place(path, text)
        usage = reader.cpu_seconds([cid("2"), cid("3")])
        # usage_usec not first, or with no newline: read the slow way, still read
        if text.startswith("nr_periods") or text == "usage_usec 5":
            assert usage[cid("2")] == 5e-6
        else:
            assert usage.keys() == {cid("3")}
    write_in_place(path, usage_text("v2", 9_000_000))
    assert reader.cpu_seconds([cid("2"), cid("3")])[cid("2")] == 9.0
    messages = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert len([m for m in messages if "left out" in m]) == 2, messages  # each fault once
    assert len([m for m in messages if "readable again" in m]) == 2, messages
    assert reader.open_files() == 2


def test_in_order_reads_agree_with_one_by_one_and_decline_what_they_cannot_read(
        tmp_path: Path) -> None:
    """The tick's common case (every file kept, v2, usage_usec first) reads in the ids' order
    in C; anything else is declined (None) and left to `cpu_seconds`, which deals with each."""
    root = tree(tmp_path, "v2-cgroupfs-containerd")
    reader = CgroupReader(root / "sys")
    reader.check_links = False  # as on cgroupfs
    ids = (cid("3"), cid("1"), cid("2"))
    assert reader.cpu_seconds_in_order(ids) is None, "nothing kept open yet"
    by_one = reader.cpu_seconds(ids)
    assert reader.cpu_seconds_in_order(ids) == [by_one[c] for c in ids]
    path = container_dir(root, cid("2")) / "cpu.stat"
    write_in_place(path, usage_text("v2", 7_000_001))
    assert reader.cpu_seconds_in_order(ids) == [by_one[cid("3")], by_one[cid("1")], 7.000001]
    assert reader.cpu_seconds_in_order(ids[:2]) is None, "one kept that is not asked for"
    assert reader.cpu_seconds_in_order((*ids, cid("4"))) is None, "a new id"
    for text in ("usage_usec lots\n", "usage_usec 5", "usage_usec \n",
                 "nr_periods 0\nusage_usec 5\n", ""):
        write_in_place(path, text)
        assert reader.cpu_seconds_in_order(ids) is None, text
    write_in_place(path, "usage_usec 5\nuser_usec 5\n")
    assert reader.cpu_seconds_in_order(ids) == [by_one[cid("3")], by_one[cid("1")], 5e-6]
    reader.close()
    assert reader.cpu_seconds_in_order(ids) is None, "its descriptors are closed"
    assert reader.cpu_seconds(ids)[cid("2")] == 5e-6  # opened again
    assert reader.cpu_seconds_in_order(ids) == [by_one[cid("3")], by_one[cid("1")], 5e-6]
    reader.check_links = True  # off cgroupfs, a file may be replaced: one by one, with fstat
    assert reader.cpu_seconds_in_order(ids) is None


def test_in_order_reads_decline_while_a_fault_is_logged(tmp_path: Path) -> None:
    root = tree(tmp_path, "v2-cgroupfs-containerd")
    reader = CgroupReader(root / "sys")
    reader.check_links = False
    ids = (cid("2"), cid("3"))
    reader.cpu_seconds(ids)
    path = container_dir(root, cid("2")) / "cpu.stat"
    write_in_place(path, "garbage\n")
    assert reader.cpu_seconds(ids).keys() == {cid("3")}  # the fault, logged once
    write_in_place(path, usage_text("v2", 3_000_000))
    assert reader.cpu_seconds_in_order(ids) is None, "the recovery is logged one by one"
    assert reader.cpu_seconds(ids)[cid("2")] == 3.0
    assert reader.cpu_seconds_in_order(ids) == [3.0, expected_seconds("v2", cid("3"))]


@pytest.mark.parametrize("variant", ["v1-cgroupfs-containerd", "v2-systemd-containerd"])
def test_in_order_reads_are_for_v2_on_cgroupfs_only(tmp_path: Path, variant: str) -> None:
    root = tree(tmp_path, variant)
    reader = CgroupReader(root / "sys")
    ids = (cid("2"),)
    reader.cpu_seconds(ids)
    reader.check_links = variant.startswith("v2")  # v1: as if on cgroupfs; v2: not
    assert reader.cpu_seconds_in_order(ids) is None


def test_replaced_usage_file_is_opened_again_off_cgroupfs(tmp_path: Path) -> None:
    """Off cgroupfs (a copied tree, a fixture) a file may be replaced by a rename, which an
    open descriptor would not see: the reader checks for it after each read."""
    root = tree(tmp_path, "v2-cgroupfs-containerd")
    reader = CgroupReader(root / "sys")
    assert reader.check_links, "a temp dir is not cgroupfs"
    path = container_dir(root, cid("2")) / "cpu.stat"
    assert reader.cpu_seconds([cid("2")])[cid("2")] == USEC[cid("2")] / 1e6
    write_atomic(path, usage_text("v2", 7_000_000))
    assert reader.cpu_seconds([cid("2")])[cid("2")] == 7.0
    assert open_usage_files() == [str(path)]


@pytest.mark.parametrize("cgroupfs", [True, False], ids=["enodev", "unlinked"])
def test_recreated_cgroup_is_read_from_its_new_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opens: list[str], cgroupfs: bool
        ) -> None:
    """A container's cgroup removed and made again (a new directory, a new cpu.stat): read
    from the new file. On cgroupfs the kept descriptor answers ENODEV once its cgroup is gone
    (simulated here); off it, the old file has no link left."""
    root = tree(tmp_path, "v2-cgroupfs-containerd")
    reader = CgroupReader(root / "sys")
    directory = container_dir(root, cid("3"))
    assert reader.cpu_seconds([cid("2"), cid("3")])[cid("3")] == USEC[cid("3")] / 1e6
    [old_fd] = [fd for c, (fd, _) in reader._kept.items() if c == cid("3")]
    if cgroupfs:
        reader.check_links = False
        real_pread, real_close, removed_fds = os.pread, os.close, {old_fd}

        def removed(fd: int, size: int, offset: int) -> bytes:
            if fd in removed_fds:
                raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
            return real_pread(fd, size, offset)

        def close(fd: int) -> None:
            removed_fds.discard(fd)  # the number is free again, for the new file maybe
            real_close(fd)

        monkeypatch.setattr(cgroups.os, "pread", removed)
        monkeypatch.setattr(cgroups.os, "close", close)
    shutil.rmtree(directory)
    directory.mkdir()
    write_in_place(directory / "cpu.stat", usage_text("v2", 3_000_000))
    opens.clear()
    usage = reader.cpu_seconds([cid("2"), cid("3")])
    assert usage[cid("3")] == 3.0
    assert usage[cid("2")] == USEC[cid("2")] / 1e6
    assert opens == [str(directory / "cpu.stat")], "only the re-created one is opened again"
    assert reader.open_files() == 2
    monkeypatch.undo()
    write_in_place(directory / "cpu.stat", usage_text("v2", 4_000_000))
    assert reader.cpu_seconds([cid("3")])[cid("3")] == 4.0


def test_vanished_containers_files_are_closed(tmp_path: Path) -> None:
    root = tree(tmp_path, "v2-systemd-containerd")
    reader = CgroupReader(root / "sys")
    reader.cpu_seconds(USEC)
    assert reader.open_files() == len(USEC)
    gone = container_dir(root, cid("3")) / "cpu.stat"
    assert str(gone) in open_usage_files()
    # a container no longer asked for (it exited; its cgroup may linger a moment)
    reader.cpu_seconds([c for c in USEC if c != cid("3")])
    assert reader.open_files() == len(USEC) - 1
    assert str(gone) not in open_usage_files()
    # a container whose cgroup is removed while still asked for
    removed = container_dir(root, cid("2"))
    shutil.rmtree(removed)
    assert cid("2") not in reader.cpu_seconds([c for c in USEC if c != cid("3")])
    assert reader.open_files() == len(USEC) - 2
    assert not [p for p in open_usage_files() if p.startswith(str(removed))]
    # and once the reader is gone, so are its descriptors
    del reader
    gc.collect()
    assert not [p for p in open_usage_files() if p.startswith(str(root))]


def test_above_the_cap_files_are_opened_at_each_read(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, opens: list[str]) -> None:
    caplog.set_level(logging.INFO, logger="footprint")
    root = tree(tmp_path, "v2-systemd-containerd")
    reader = CgroupReader(root / "sys", max_open=2)
    reader.check_links = False
    for tick in range(3):
        usage = reader.cpu_seconds(USEC)
        assert usage == {c: USEC[c] / 1e6 for c in USEC}
        assert reader.open_files() == 2
        assert len(open_usage_files()) == 2
        assert len(opens) == len(USEC) + tick * (len(USEC) - 2)
    # kept or not, every file is read afresh
    for c in USEC:
        write_in_place(container_dir(root, c) / "cpu.stat", usage_text("v2", 1_000_000))
    assert set(reader.cpu_seconds(USEC).values()) == {1.0}
    capped = [r for r in caplog.records if "kept open" in r.getMessage()]
    assert len(capped) == 1, "logged once"
    assert "2 containers' usage files are kept open" in capped[0].getMessage()


def test_the_cap_follows_the_open_file_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"soft": 1024}
    monkeypatch.setattr(cgroups.resource, "getrlimit",
                        lambda _: (limits["soft"], cgroups.resource.RLIM_INFINITY))
    assert cgroups.keep_open_limit() == 512
    limits["soft"] = 1 << 20
    assert cgroups.keep_open_limit() == cgroups.KEEP_OPEN_MAX
    limits["soft"] = cgroups.resource.RLIM_INFINITY
    assert cgroups.keep_open_limit() == cgroups.KEEP_OPEN_MAX


def writable_cgroupfs() -> Path | None:
    """A cgroup hierarchy this process may make cgroups in (root on a host that mounts one
    read-write), with the file the reader reads there; None elsewhere."""
    for mount, name in ((Path("/sys/fs/cgroup"), "cpu.stat"),
                        (Path("/sys/fs/cgroup/unified"), "cpu.stat"),
                        (Path("/sys/fs/cgroup/cpu,cpuacct"), "cpuacct.usage"),
                        (Path("/sys/fs/cgroup/cpuacct"), "cpuacct.usage")):
        if ((mount / name).is_file() or (mount / "cgroup.controllers").is_file()) \
                and cgroups.on_cgroupfs(mount) and os.access(mount, os.W_OK):
            return mount
    return None


@pytest.mark.skipif(writable_cgroupfs() is None, reason="no writable cgroup hierarchy (root)")
def test_on_real_cgroupfs_a_recreated_cgroup_is_opened_again(tmp_path: Path) -> None:
    """The kernel's own behaviour, where it can be had: a kept file of a removed cgroup answers
    ENODEV, and the reader opens the re-created cgroup's new file; once removed for good, the
    container is missing and its file closed. Makes (and removes) one empty cgroup."""
    mount = writable_cgroupfs()
    assert mount is not None
    top = mount / f"kubepods-footprint-test-{os.getpid()}"
    directory = top / "pod0" / cid("7")
    (tmp_path / "fs").mkdir()
    (tmp_path / "fs" / "cgroup").symlink_to(mount)
    directory.mkdir(parents=True)
    try:
        reader = CgroupReader(tmp_path)
        assert not reader.check_links
        assert cid("7") in reader.cpu_seconds([cid("7")])
        [(old_fd, _)] = reader._kept.values()
        old_inode = os.fstat(old_fd).st_ino
        directory.rmdir()
        directory.mkdir()
        assert cid("7") in reader.cpu_seconds([cid("7")])
        [(fd, _)] = reader._kept.values()
        assert os.fstat(fd).st_ino != old_inode
        directory.rmdir()
        assert reader.cpu_seconds([cid("7")]) == {}
        assert reader.missing() == {cid("7")}
        assert reader.open_files() == 0
    finally:
        for leftover in (directory, directory.parent, top):
            with contextlib.suppress(OSError):
                leftover.rmdir()


def test_fixture_trees_are_not_cgroupfs(tmp_path: Path) -> None:
    assert not cgroups.on_cgroupfs(tmp_path)
    assert not cgroups.on_cgroupfs(tmp_path / "missing")


def test_v1_cpuacct_mounted_alone(tmp_path: Path) -> None:
    root = tree(tmp_path, "v1-cgroupfs-containerd")
    mount = root / "sys" / "fs" / "cgroup"
    (mount / "cpu,cpuacct").rename(mount / "cpuacct")
    reader = CgroupReader(root / "sys")
    assert reader.version == 1
    assert str(mount / "cpuacct") in reader.describe()
    assert reader.cpu_seconds([cid("4")])[cid("4")] == expected_seconds("v1", cid("4"))


def test_no_cgroup_tree(tmp_path: Path) -> None:
    reader = CgroupReader(tmp_path)
    assert reader.version is None
    assert "no cgroup tree" in reader.describe()
    assert reader.cpu_seconds([cid("1")]) == {}
    assert reader.missing() == {cid("1")}


def test_hybrid_unified_mount_is_not_v2() -> None:
    mount = CGROUP_FIXTURES / "v1-systemd-docker" / "sys" / "fs" / "cgroup"
    assert (mount / "unified" / "cgroup.controllers").is_file()
    assert CgroupReader(mount.parent.parent).version == 1


# container_id_of_pid

@pytest.mark.parametrize("variant", VARIANTS)
def test_container_id_of_pid(variant: str) -> None:
    proc = CGROUP_FIXTURES / variant / "proc"
    assert container_id_of_pid(proc, 4242) == cid("2")
    assert container_id_of_pid(proc, 812) is None, "the runtime daemon is a host process"
    assert container_id_of_pid(proc, 99999) is None, "vanished pid"


def test_conmon_process_is_not_in_the_container() -> None:
    assert container_id_of_pid(CGROUP_FIXTURES / "v2-systemd-crio" / "proc", 4240) is None


@pytest.mark.parametrize(("text", "expected"), [
    (f"0::/kubepods/pod0a1b2c3d-1111-4000-8000-000000000001/{cid('1')}\n", cid("1")),
    (f"0::/kubepods.slice/kubepods-podx.slice/cri-containerd-{cid('1')}.scope\n", cid("1")),
    ("0::/init.scope\n", None),
    ("0::/\n", None),
    (f"3:cpu,cpuacct:/kubepods/besteffort/podx/{cid('4')}\n1:name=systemd:/kubepods/besteffort/"
     f"podx/{cid('4')}\n0::/\n", cid("4")),
    ("4:memory:/user.slice\n1:name=systemd:/user.slice/user-1000.slice/session-2.scope\n", None),
    (f"0::/kubepods.slice/p.slice/crio-{cid('3')}.scope/container\n", cid("3")),
    (f"0::/kubepods.slice/p.slice/{cid('3')}.scope\n", None),  # bare ids carry no .scope
    (f"0::/kubepods.slice/p.slice/docker-{cid('3')}\n", None),  # a runtime scope has one
    ("garbage\n", None),
    ("", None),
])
def test_container_id_of_pid_lines(tmp_path: Path, text: str, expected: str | None) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "cgroup").write_text(text)
    assert container_id_of_pid(tmp_path, 7) == expected
