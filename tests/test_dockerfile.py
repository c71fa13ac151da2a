"""The container image (Dockerfile, .dockerignore, docs/container.md), without a Docker engine.

Two halves. The Dockerfile is parsed and held to its shape: two stages on one pinned base, the
locked dependencies (requirements.lock) downloaded and installed by hash only, a final stage
without build tools, the OCI labels, port 9835, the Helm chart's entrypoint. Then every RUN of
both stages, each one `python -m pip` command taken from the file and run exactly as written
(only the paths changed), downloads the locked wheels and builds the project's from the build
context that .dockerignore and the builder's COPY lines leave, installs them offline into a clean
virtualenv, and that install serves /metrics from a fixture node.

The install half is slow-ish (it downloads the dependencies' wheels, ~10-40 s) and is never
skipped: a Dockerfile whose install steps do not work must fail here, not at release time.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

from exporter import __version__
from tests.support import FIXTURES, REPO, pump_lines, wait_for_metrics

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
DOCS = REPO / "docs" / "container.md"
LOCK = "requirements.lock"
LOCK_IN_WHEELS = f"/wheels/{LOCK}"

OCI_LABELS = ("title", "description", "source", "licenses", "version")
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|cc|clang|make|build-essential|[\w.+-]+-dev)\b")
SHELL_OPERATORS = {"&&", "||", ";", "|", "&", ">", ">>", "<"}

BUDGET_SECONDS = 90.0
"""The whole install half (wheels, venv, install, runs) stops with a failure past this."""
INSTALL_HALF = pytest.mark.slow(seconds=15)
"""The install half's tests: pip downloads and installs (~40 s for the three)."""


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[dict[str, Any]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [i["value"] for i in self.instructions if i["instruction"] == instruction]


def parse() -> DockerfileParser:
    return DockerfileParser(path=str(DOCKERFILE), cache_content=True, env_replace=True)


def stages() -> list[Stage]:
    parser = parse()
    bases = iter(parser.parent_images)  # ARGs substituted, one per FROM
    found: list[Stage] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            words = instruction["value"].split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(name=name, base=next(bases)))
        elif found and instruction["instruction"] != "COMMENT":
            found[-1].instructions.append(instruction)
    return found


def pip_runs(stage: Stage) -> list[list[str]]:
    """Every RUN of the stage, in order, its RUN flags (--mount) dropped: each must be a single
    `python -m pip ...` command, so that the install half replays all of them as written."""
    commands = []
    for value in stage.all("RUN"):
        words = shlex.split(value)
        while words and words[0].startswith("--"):
            words.pop(0)
        assert not SHELL_OPERATORS & set(words) and not any(w.endswith(";") for w in words), (
            f"keep each RUN a single command, so the test runs it as is: {words}")
        assert words[:3] == ["python", "-m", "pip"] and len(words) > 3, (
            f"every RUN is a `python -m pip` command, which the test replays: {words}")
        commands.append(words)
    return commands


def pip_commands(stage: Stage, verb: str) -> list[list[str]]:
    return [words for words in pip_runs(stage) if words[3] == verb]


def pip_command(stage: Stage, verb: str) -> list[str]:
    """The stage's one `RUN ... python -m pip <verb> ...`."""
    runs = pip_commands(stage, verb)
    assert len(runs) == 1, f"expected one `pip {verb}` RUN in stage {stage.name}, got {runs}"
    return runs[0]


def option(words: list[str], name: str) -> str:
    """The value of `name` in the command (`--opt value` or `--opt=value`), once."""
    found = [words[i + 1] for i, w in enumerate(words[:-1]) if w == name]
    found += [w.partition("=")[2] for w in words if w.startswith(f"{name}=")]
    assert len(found) == 1, f"expected {name} once in {words}"
    return found[0]


def substitute(words: list[str], python: Path, paths: Mapping[str, Path]) -> list[str]:
    """The command as written, with the image's python and absolute paths (and the paths under
    them) replaced."""

    def replaced(word: str) -> str:
        for path, local in paths.items():
            if word == path or word.startswith(f"{path}/"):
                return str(local) + word.removeprefix(path)
        return word

    return [str(python), *(replaced(w) for w in words[1:])]


# --- .dockerignore, as Docker reads it -------------------------------------------------------


def _pattern(text: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(text):
        if text.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif text.startswith("**", i):
            out, i = out + ".*", i + 2
        elif text[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif text[i] == "?":
            out, i = out + "[^/]", i + 1
        elif text[i] == "[":
            end = text.index("]", i)
            out, i = out + text[i:end + 1], end + 1
        else:
            out, i = out + re.escape(text[i]), i + 1
    return re.compile(out)


def ignore_lines() -> list[tuple[bool, str]]:
    """(is an exception `!...`, pattern) per line, cleaned as Docker cleans them."""
    lines = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            text = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
            lines.append((line.startswith("!"), text))
    return lines


def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    return [(keep, _pattern(text)) for keep, text in ignore_lines()]


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents wins."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for keep, pattern in rules:
        if any(pattern.fullmatch(p) for p in prefixes):
            result = not keep
    return result


def build_context(dest: Path) -> None:
    """The files `docker build .` would send, copied to `dest`."""
    rules = ignore_rules()
    exceptions = [text for keep, text in ignore_lines() if keep]

    def walk_into(rel: str) -> bool:  # not ignored, or an exception may re-include below it
        return not ignored(rel, rules) or any(
            text.startswith((f"{rel}/", "*", "?", "[")) for text in exceptions)

    for root, dirs, files in os.walk(REPO):
        rel_root = Path(root).relative_to(REPO)
        dirs[:] = [d for d in dirs if walk_into((rel_root / d).as_posix())]
        for name in files:
            rel = (rel_root / name).as_posix()
            if not ignored(rel, rules):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, dest / rel)


def run_copies(stage: Stage, context: Path, root: Path) -> Path:
    """The stage's WORKDIR and COPY lines applied to `root` (the image's /); returns WORKDIR."""
    workdir = PurePosixPath("/")
    for instruction in stage.instructions:
        if instruction["instruction"] == "WORKDIR":
            workdir = workdir / instruction["value"]
            (root / workdir.relative_to("/")).mkdir(parents=True, exist_ok=True)
        elif instruction["instruction"] == "COPY":
            *sources, target = shlex.split(instruction["value"])
            assert not any(s.startswith("--") for s in sources), "builder COPYs from the context"
            into = root / (workdir / target).relative_to("/")
            for source in sources:
                assert not any(c in source for c in "*?["), source
                src = context / source
                assert src.exists(), f"COPY {source}: not in the build context (.dockerignore?)"
                if src.is_dir():
                    shutil.copytree(src, into, dirs_exist_ok=True)
                elif target.endswith("/") or len(sources) > 1:
                    into.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, into / src.name)
                else:
                    shutil.copy2(src, into)
    return root / workdir.relative_to("/")


# --- the Dockerfile's shape ------------------------------------------------------------------


def test_two_stages_on_one_pinned_base() -> None:
    found = stages()
    assert [s.name for s in found] == ["builder", None], found
    bases = {s.base for s in found}
    assert len(bases) == 1, f"builder and final stage must share one base: {bases}"
    base = bases.pop()
    image, _, digest = base.partition("@")
    name, _, tag = image.partition(":")
    assert name in ("python", "docker.io/library/python"), base
    assert re.fullmatch(r"3\.11\.\d+-slim-bookworm", tag), f"pin a full version tag: {base}"
    assert not digest or re.fullmatch(r"sha256:[0-9a-f]{64}", digest), base


def test_no_latest_tag_and_no_remote_add() -> None:
    parser = parse()
    text = DOCKERFILE.read_text()
    assert not re.search(r":latest\b", text)
    for base in parser.parent_images:
        assert ":" in base.partition("@")[0], f"untagged base means latest: {base}"
    for instruction in parser.structure:
        if instruction["instruction"] == "ADD":
            assert not re.search(r"\b(https?|git)://|git@", instruction["value"]), instruction
    for stage in stages():
        for run in stage.all("RUN"):
            assert not re.search(r"\b(curl|wget)\b", run), f"nothing fetched by hand: {run}"


def test_builder_downloads_the_locked_wheels_by_hash() -> None:
    builder, _ = stages()
    copies = [shlex.split(v) for v in builder.all("COPY")]
    assert [LOCK, "/wheels/"] in copies, f"the builder copies {LOCK} into /wheels: {copies}"
    download = pip_command(builder, "download")
    assert {"--require-hashes", "--no-deps", "--only-binary=:all:"} <= set(download), download
    assert option(download, "--dest") == "/wheels", download
    assert option(download, "-r") == LOCK_IN_WHEELS, download
    assert [w for w in download if not w.startswith("-")] == [
        "python", "pip", "download", "/wheels", LOCK_IN_WHEELS], f"only the lock: {download}"
    # The project alone: every dependency comes from the lock, none from resolving pyproject.
    wheel = pip_command(builder, "wheel")
    assert "--no-deps" in wheel and option(wheel, "--wheel-dir") == "/wheels", wheel
    assert wheel[-1] == ".", wheel
    runs = pip_runs(builder)
    assert runs.index(download) < runs.index(wheel), "the lock's layer first (cached)"


def test_final_stage_installs_the_lock_by_hash_then_the_project() -> None:
    _, final = stages()
    assert not final.all("ADD") and not final.all("COPY"), "the final stage copies nothing in"
    for run in final.all("RUN"):
        assert "apt-get" not in run and "apk " not in run, run
        assert not BUILD_TOOLS.search(run), run
    runs = pip_runs(final)
    assert [words[3] for words in runs] == ["install", "install", "check"], runs
    locked, project, _ = runs
    for install in (locked, project):
        assert {"--no-index", "--no-cache-dir", "--no-deps"} <= set(install), install
        assert option(install, "--find-links") == "/wheels", install
    assert "--require-hashes" in locked and option(locked, "-r") == LOCK_IN_WHEELS, locked
    assert locked[-2:] == ["-r", LOCK_IN_WHEELS], locked
    assert project[-1] == "footprint-exporter", project
    mounts = [run for run in final.all("RUN") if "pip install" in " ".join(run.split())]
    assert all("from=builder" in run and "target=/wheels" in run for run in mounts), mounts


def test_final_stage_environment_labels_port_and_entrypoint() -> None:
    parser = parse()
    _, final = stages()
    assert parser.envs.get("PYTHONDONTWRITEBYTECODE") == "1", parser.envs
    assert parser.envs.get("PYTHONUNBUFFERED") == "1", parser.envs
    labels = parser.labels
    for key in OCI_LABELS:
        assert labels.get(f"org.opencontainers.image.{key}"), f"label {key} missing: {labels}"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.title"] == "footprint-exporter"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert labels["org.opencontainers.image.version"] == project["version"] == __version__
    assert final.all("EXPOSE") == ["9835"]
    assert final.all("ENTRYPOINT") == ['["footprint-exporter"]']
    assert not final.all("CMD"), "the chart passes the flags; the image's defaults need none"
    assert not final.all("USER"), "runs as whatever uid the pod asks for (docs/container.md)"
    assert "HEALTHCHECK" not in {i["instruction"] for i in parser.structure}, (
        "Kubernetes probes /healthz and /readyz; HEALTHCHECK is not used there")


def test_dockerignore_keeps_the_context_small() -> None:
    rules = ignore_rules()
    for path in (".venv/bin/python", ".git/HEAD", "tests/test_server.py", "bench/out.json",
                 ".pytest_cache/v", ".mypy_cache/x", ".ruff_cache/x", ".hypothesis/x",
                 "exporter/__pycache__/cli.cpython-311.pyc", "footprint_exporter.egg-info/x",
                 "build/lib/x", "dist/x.whl", "docs/metrics.md", "Dockerfile"):
        assert ignored(path, rules), f"{path} would be sent to the Docker daemon"
    for path in ("pyproject.toml", LOCK, "README.md", "exporter/cli.py", "exporter/py.typed",
                 "exporter/kube/podresources_pb2.py"):
        assert not ignored(path, rules), f"{path} is needed by the builder stage"


def test_docs_say_how_to_build_and_pin() -> None:
    text = DOCS.read_text()
    assert "docker build -t footprint-exporter ." in text
    base = stages()[0].base.partition("@")[0]
    assert base in text, f"docs/container.md should name the base {base}"
    assert "sha256" in text and "9835" in text


# --- the install steps, for real ------------------------------------------------------------


@dataclass
class Installed:
    venv: Path
    wheels: Path
    env: dict[str, str]
    deadline: float
    files_before_run: set[Path]

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        assert left > 0, f"the install half ran past its {BUDGET_SECONDS:g} s budget"
        return left


def _run(command: list[str], *, env: Mapping[str, str], cwd: Path, timeout: float,
         what: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, env=dict(env), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False, umask=0o022)
    assert done.returncode == 0, (
        f"{what} failed ({done.returncode}): {shlex.join(command)}\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    deadline = time.monotonic() + BUDGET_SECONDS
    tmp = tmp_path_factory.mktemp("image")
    builder, final = stages()
    context, root, venv = tmp / "context", tmp / "builder", tmp / "venv"
    wheels = root / "wheels"  # the builder's /wheels, which its COPY of the lock creates
    build_context(context)
    workdir = run_copies(builder, context, root)

    # Builder: its RUNs in order (the locked wheels, then the project's) with this venv's pip,
    # in WORKDIR.
    outside = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    for words in pip_runs(builder):
        command = substitute(words, Path(sys.executable), {"/wheels": wheels})
        _run(command, env={**outside, **stage_env(builder)}, cwd=workdir,
             what=f"pip {words[3]}", timeout=deadline - time.monotonic())
    assert any(wheels.glob(f"footprint_exporter-{__version__}-*.whl")), sorted(wheels.iterdir())
    assert not list(wheels.glob("*.tar.gz")), "binary wheels only"

    # Final stage: a clean venv, then the install command as written, with no pip config
    # (an index or find-links of this machine) that the image would not have either.
    _run([sys.executable, "-m", "venv", str(venv)], env=outside, cwd=tmp, what="venv",
         timeout=deadline - time.monotonic())
    env = {"PATH": f"{venv / 'bin'}{os.pathsep}{os.defpath}", "HOME": str(tmp),
           "LANG": "C.UTF-8", "PIP_CONFIG_FILE": os.devnull, **stage_env(final)}
    for words in pip_runs(final):  # the lock by hash, the project, `pip check`
        command = substitute(words, venv / "bin" / "python", {"/wheels": wheels})
        _run(command, env=env, cwd=tmp, what=f"pip {words[3]}",
             timeout=deadline - time.monotonic())
    yield Installed(venv=venv, wheels=wheels, env=env, deadline=deadline,
                    files_before_run=set(venv.rglob("*")))


def stage_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in stage.all("ENV"):
        for word in shlex.split(value):
            key, sep, val = word.partition("=")
            assert sep, f"ENV in KEY=value form: {value}"
            env[key] = val
    return env


@INSTALL_HALF
def test_installed_script_prints_its_version_and_help(installed: Installed) -> None:
    script = str(installed.venv / "bin" / "footprint-exporter")
    done = _run([script, "--version"], env=installed.env, cwd=installed.venv, what="--version",
                timeout=installed.left())
    assert done.stdout.strip() == f"footprint-exporter {__version__}"
    done = _run([script, "--help"], env=installed.env, cwd=installed.venv, what="--help",
                timeout=installed.left())
    assert "--web.listen-address" in done.stdout
    where = _run([str(installed.venv / "bin" / "python"), "-c",
                  "import exporter; print(exporter.__file__)"],
                 env=installed.env, cwd=installed.venv, what="import", timeout=installed.left())
    assert Path(where.stdout.strip()).is_relative_to(installed.venv), where.stdout


@INSTALL_HALF
def test_installed_files_are_world_readable(installed: Installed) -> None:
    site = next(installed.venv.glob("lib/python3*/site-packages"))
    files = [p for p in site.rglob("*") if p.is_file()
             and (p.is_relative_to(site / "exporter") or "footprint_exporter" in p.parts[-2])]
    assert len(files) > 20, files
    for path in files:
        assert path.stat().st_mode & 0o004, f"{path} is not world-readable"
    script = installed.venv / "bin" / "footprint-exporter"
    assert script.stat().st_mode & 0o005 == 0o005, "the script must run for any uid"



@INSTALL_HALF
def test_installed_exporter_serves_metrics_and_stops_on_sigterm(installed: Installed) -> None:
    command = [str(installed.venv / "bin" / "footprint-exporter"),
               "--path.sysfs", str(FIXTURES / "intel-2s" / "sys"),
               "--path.procfs", str(FIXTURES / "proc"),
               "--web.listen-address", "127.0.0.1:0",
               "--no-collector.kubernetes", "--no-collector.nvml"]
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []
    with subprocess.Popen(command, env=installed.env, cwd=installed.venv, text=True,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stderr is not None
        reader = threading.Thread(target=pump_lines, args=(proc.stderr, lines), daemon=True)
        reader.start()
        try:
            port = None
            while port is None:
                try:
                    line = lines.get(timeout=min(installed.left(), 15))
                except queue.Empty:
                    pytest.fail(f"no `listening on` line: {log}")
                log.append(line)
                found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                port = int(found.group(1)) if found else None
                assert proc.poll() is None, f"exited {proc.returncode}: {log}"
            # 503 until the first tick
            status, body = wait_for_metrics(port, min(installed.left(), 15))
            assert status == 200, (status, body)
            assert "footprint_node_energy_joules_total" in body, body[:2000]
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=min(installed.left(), 20))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reader.join(timeout=5)
    while not lines.empty():
        log.append(lines.get())
    assert code == 0, "".join(log)
    assert not any("level=error" in line for line in log), "".join(log)
    written = set(installed.venv.rglob("*")) - installed.files_before_run
    assert not written, f"the image must write nothing at run time: {sorted(written)}"
