"""The container image, built and run for real (docs/container.md#building-it-here).

scripts/build_image.sh builds the Dockerfile, unchanged, both stages, with buildah, on a stand-in
for its base (Debian bookworm's Python 3.11, made by mmdebstrap: no registry is reachable here).
The image then runs, from a buildah working container, as root and as UID 65534, on a fixture
node bind-mounted read-only, and serves /metrics, which is scraped over HTTP; it stops on SIGTERM
and writes nothing. What is in it is checked (no compiler, pip cache, source tree or build
configuration; the OCI labels) and its size, its base's and each installed distribution's are
printed, so that the test's output records them.

Slow: a cold run makes the stand-in (~1 min, cached in .cache/image/ by its inputs) and builds
the image (~40 s); a warm run reuses an image built from the same inputs (the Dockerfile and its
build context, the base, the script), and takes ~6 s. Never skipped: without buildah or
mmdebstrap it fails, saying how to install them.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from exporter import __version__
from tests.support import FIXTURES, REPO, parse, pump_lines, value, wait_for_metrics

pytestmark = pytest.mark.slow(seconds=120)  # ~45 s warm, ~135 s from nothing

SCRIPT = REPO / "scripts" / "build_image.sh"
TAG = "localhost/footprint-exporter:pytest"
TOOLS = ("buildah", "mmdebstrap")
INSTALL_HINT = "`bash scripts/setup.sh --test` installs them (Debian packages buildah, mmdebstrap)"
BUILD_TIMEOUT = 900.0
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "make", "ld", "x86_64-linux-gnu-gcc",
             "aarch64-linux-gnu-gcc")
FAMILIES = ("footprint_exporter_build_info", "footprint_node_info", "footprint_source_up",
            "footprint_node_energy_joules_total", "footprint_exporter_tick_duration_seconds")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def buildah(*args: str, timeout: float = 60.0) -> str:
    done = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert done.returncode == 0, f"buildah {' '.join(args)}: {done.stderr}"
    return done.stdout


@dataclass
class Built:
    image: str
    base: str
    container: str
    root: Path  # the working container's root file system, mounted
    config: dict[str, Any]  # the image's OCI config ("config" of its OCI image configuration)


@pytest.fixture(scope="module")
def built(pytestconfig: pytest.Config) -> Iterator[Built]:
    missing = missing_tools()
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: {INSTALL_HINT}")
    started = time.monotonic()
    done = subprocess.run(["bash", str(SCRIPT), "--tag", TAG], capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT, check=False,
                          env={**os.environ, "PYTHON": sys.executable})
    if done.returncode != 0:
        pytest.fail(f"scripts/build_image.sh failed ({done.returncode}):\n"
                    f"{done.stderr[-6000:]}\n{done.stdout[-2000:]}")
    names = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert names.get("image") == TAG and names.get("base"), done.stdout
    reused = "not building it again" in done.stderr
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    assert capture is not None
    with capture.global_and_fixture_disabled():  # recorded in the output, not captured
        print(f"\nscripts/build_image.sh: {time.monotonic() - started:.1f} s, "
              + ("reused the image built from the same inputs" if reused else
                 f"built {TAG} on {names['base']}"))
    inspected = json.loads(buildah("inspect", "--type", "image", TAG))
    container = f"footprint-exporter-pytest-{os.getpid()}"
    if _exists(container):
        buildah("rm", container, timeout=30)
    buildah("from", "--quiet", "--pull=never", "--name", container, TAG)
    try:
        root = Path(buildah("mount", container).strip())
        yield Built(image=TAG, base=names["base"], container=container, root=root,
                    config=inspected["OCIv1"]["config"])
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, timeout=60,
                       check=False)


def _exists(container: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "container", container],
                          capture_output=True, check=False).returncode == 0


def test_buildah_and_mmdebstrap_are_installed() -> None:
    missing = missing_tools()
    assert not missing, f"{', '.join(missing)} not found: {INSTALL_HINT}"


# --- what is in the image --------------------------------------------------------------------


def test_labels_entrypoint_and_port(built: Built) -> None:
    labels = built.config.get("Labels") or {}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert labels.get("org.opencontainers.image.title") == "footprint-exporter", labels
    assert labels.get("org.opencontainers.image.version") == project["version"] == __version__
    assert labels.get("org.opencontainers.image.licenses") == "Apache-2.0", labels
    assert re.fullmatch(r"https://\S+", labels.get("org.opencontainers.image.source", "")), labels
    assert labels.get("org.opencontainers.image.description"), labels
    assert built.config.get("Entrypoint") == ["footprint-exporter"], built.config
    assert not built.config.get("Cmd"), built.config  # the stand-in's `python3` is reset
    assert "9835/tcp" in (built.config.get("ExposedPorts") or {}), built.config
    assert not built.config.get("User"), "no USER: the pod chooses the uid"
    env = dict(e.split("=", 1) for e in built.config.get("Env", []))
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1" and env.get("PYTHONUNBUFFERED") == "1", env


def test_no_compiler_pip_cache_source_or_build_configuration(built: Built) -> None:
    root = built.root
    env = dict(e.split("=", 1) for e in built.config.get("Env", []))
    path = [d for d in env["PATH"].split(":") if d]
    for name in COMPILERS:
        found = [f"{d}/{name}" for d in path if os.path.lexists(root / d.lstrip("/") / name)]
        assert not found, f"a build tool in the image: {found}"
    pip_cache = root / "root" / ".cache" / "pip"
    assert not pip_cache.exists() or not any(pip_cache.iterdir()), "a pip cache in the image"
    for gone in ("src", "wheels"):
        assert not (root / gone).exists(), f"/{gone} (the builder's) is in the image"
    # One walk of the whole file system: the exporter only where pip installed it, no source
    # tree, lock or project file anywhere, and no compiler proper off the PATH either.
    packages, stray = [], []
    for parent, dirs, files in os.walk(root):
        here = Path(parent).relative_to(root)
        if here.name == "exporter" and "__init__.py" in files:
            packages.append(here)
        stray += [here / f for f in files
                  if f in ("pyproject.toml", "requirements.lock", "cc1", "cc1plus")]
        dirs[:] = [d for d in dirs if not (here == Path(".") and d in ("proc", "sys", "dev"))]
    assert packages, "the exporter is not installed"
    for package in packages:
        assert package.parts[-2] in ("site-packages", "dist-packages"), package
    assert not stray, f"source or build files in the image: {stray}"
    # scripts/build_image.sh mounts this machine's pip configuration (and the paths it names)
    # into the builder stage's RUN steps only; buildah leaves mount points behind, so none of
    # them may reach the image.
    assert not (root / "etc" / "pip.conf").exists(), "the build's pip.conf is in the image"
    assert not (root / "etc" / "xdg" / "pip").exists()


def test_records_sizes(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    done = subprocess.run(["bash", str(SCRIPT), "sizes", built.image, built.base],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr
    report = done.stdout
    with capsys.disabled():
        print(f"\n{report}", end="")
    figures = []
    for pattern in (rf"^image {re.escape(built.image)}: ([\d.]+) MB",
                    rf"^  base {re.escape(built.base)}: ([\d.]+) MB",
                    r"^  added by the Dockerfile: ([\d.]+) MB"):
        found = re.search(pattern, report, re.M)
        assert found, f"{pattern} not in:\n{report}"
        figures.append(float(found.group(1)))
    image, base, added = figures
    assert abs(image - base - added) < 0.2, report
    table = report.partition("\ninstalled distributions")[2].partition("\n  all ")[0]
    installed = dict(re.findall(r"^  (\S+) \S+: ([\d.]+) MB", table, re.M))
    for name in ("footprint-exporter", "kubernetes", "grpcio", "aiohttp", "prometheus_client"):
        assert name in installed, f"{name} not measured:\n{report}"
    assert sum(float(v) for v in installed.values()) < added, report


# --- the image, run --------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _exporter_pid(buildah_pid: int) -> int:
    """The exporter's own process under `buildah run` (same PID namespace with chroot
    isolation): buildah does not pass SIGTERM on, it kills its child."""
    found = []
    for pid in _descendants(buildah_pid):  # buildah-chroot-runtime, buildah-chroot-exec, ...
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (not os.path.basename(argv[0]).startswith(b"buildah")
                and any(a.endswith(b"/footprint-exporter") for a in argv)):
            found.append(pid)
    assert len(found) == 1, f"not one exporter process under buildah run ({buildah_pid}): {found}"
    return found[0]


def _uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]



def _node(tmp_path: Path, root_only_rapl: bool) -> Path:
    """The intel-2s fixture node; with `root_only_rapl`, energy_uj mode 0400 as since Linux 5.10."""
    if not root_only_rapl:
        return FIXTURES / "intel-2s"
    node = tmp_path / "node"
    shutil.copytree(FIXTURES / "intel-2s" / "sys", node / "sys")
    for counter in (node / "sys").rglob("energy_uj"):
        counter.chmod(0o400)
    return node


def _upper_files(built: Built) -> list[str]:
    """Regular files written into the working container's own layer (overlay storage)."""
    upper = built.root.parent / "diff"
    if not upper.is_dir():  # another storage driver: nothing to look at
        return []
    return sorted(str(p.relative_to(upper)) for p in upper.rglob("*")
                  if p.is_file() or p.is_symlink())


@pytest.mark.parametrize(("user", "rapl"), [("0:0", "up"), ("65534:65534", "root-only")],
                         ids=["root", "uid65534"])
def test_serves_metrics_from_a_fixture_node(built: Built, tmp_path: Path, user: str,
                                            rapl: str) -> None:
    node = _node(tmp_path, root_only_rapl=rapl == "root-only")
    command = ["buildah", "run", "--isolation", "chroot", "--user", user,
               "-v", f"{node / 'sys'}:/host/sys:ro", "-v", f"{FIXTURES / 'proc'}:/host/proc:ro",
               built.container, "--", *built.config["Entrypoint"],
               "--path.sysfs", "/host/sys", "--path.procfs", "/host/proc",
               "--web.listen-address", "127.0.0.1:0", "--collector.interval", "1",
               "--no-collector.kubernetes", "--no-collector.nvml"]
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []
    with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        reader = threading.Thread(target=pump_lines, args=(proc.stderr, lines), daemon=True)
        reader.start()
        try:
            port = None
            deadline = time.monotonic() + 30
            while port is None:
                try:
                    line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
                except queue.Empty:
                    pytest.fail(f"no `listening on` line in 30 s: {''.join(log)}")
                log.append(line)
                found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                port = int(found.group(1)) if found else None
                assert proc.poll() is None, f"exited {proc.returncode}: {''.join(log)}"
            pid = _exporter_pid(proc.pid)
            assert _uid(pid) == int(user.split(":")[0]), f"runs as uid {_uid(pid)}"
            status, body = wait_for_metrics(port, 20)  # 503 until the first tick
            assert status == 200, (status, body[:2000], "".join(log))
            os.kill(pid, signal.SIGTERM)
            code = proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reader.join(timeout=5)
    while not lines.empty():
        log.append(lines.get())
    assert code == 0, f"exit {code} on SIGTERM:\n{''.join(log)}"
    assert not any("level=error" in line for line in log), "".join(log)

    for family in FAMILIES:
        assert re.search(rf"^# TYPE {family} ", body, re.M), f"{family} missing:\n{body[:3000]}"
    series = parse(body)
    assert value(series, "footprint_exporter_build_info", version=__version__) == 1
    if rapl == "up":  # root reads the counters
        assert value(series, "footprint_source_up", source="rapl") == 1
        assert value(series, "footprint_node_energy_joules_total", component="cpu",
                     source="rapl") >= 0
    else:  # as another uid RAPL is off, with its reason, and the estimate covers cpu and dram
        assert value(series, "footprint_source_up", source="rapl") == 0
        assert value(series, "footprint_node_energy_joules_total", component="cpu",
                     source="estimated") >= 0
        assert any("readable by root only" in line for line in log), "".join(log)
    # Nothing written at run time (readOnlyRootFilesystem works): buildah's own mount points
    # (/host/..., /run) are directories, not files.
    written = _upper_files(built)
    assert not written, f"the exporter wrote into the image's file system: {written}"
