"""Records the chart as released, in charts/footprint-exporter/RELEASED, and checks against it.

    .venv/bin/python scripts/gen_released.py            # when cutting a release: write RELEASED
    .venv/bin/python scripts/gen_released.py --check    # exit 1: changed with no version bump
    python3 scripts/gen_released.py --is-release 0.5.0  # the release workflow, at tag v0.5.0

RELEASED holds the chart's version at the last release and the digest of what the chart
deploys: the sha256 of `sha256sum`'s listing of templates/, files/, values.yaml and
values.schema.json (paths relative to the chart, sorted bytewise), so the same digest comes
from
    cd charts/footprint-exporter && find templates files values.yaml values.schema.json \\
      -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum
When the chart's digest differs from the recorded one, Chart.yaml's version must be greater
than the recorded version (tests/test_release.py runs --check). `--is-release VERSION` says
whether RELEASED records this very chart at VERSION, as a release commit must.
Standard library only: the release workflow runs it with the runner's python3.
docs/releasing.md has the whole procedure.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "footprint-exporter"
RECORD = "RELEASED"
CONTENT = ("templates", "files", "values.yaml", "values.schema.json")
"""What the chart deploys, relative to the chart: a change to any of it is a change of the
chart. Chart.yaml (which holds the version itself), README.md and ci/ are left out."""
SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")
HEADER = (
    "# The chart as last released, written by scripts/gen_released.py when a release is cut\n"
    "# (docs/releasing.md): its version, and the digest of its templates/, files/, values.yaml\n"
    "# and values.schema.json. tests/test_release.py fails when the chart's digest differs from\n"
    "# this one while Chart.yaml's version is not greater than this version.\n")


def listing(files: dict[str, bytes]) -> str:
    """`sha256sum`'s output for files (path relative to the chart -> content), sorted."""
    return "".join(f"{hashlib.sha256(data).hexdigest()}  {path}\n"
                   for path, data in sorted(files.items(), key=lambda item: item[0].encode()))


def chart_files(chart: Path) -> dict[str, bytes]:
    """The chart's content (CONTENT), by path relative to the chart."""
    out = {}
    for name in CONTENT:
        top = chart / name
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in paths:
            out[path.relative_to(chart).as_posix()] = path.read_bytes()
    return out


def digest(files: dict[str, bytes]) -> str:
    return "sha256:" + hashlib.sha256(listing(files).encode()).hexdigest()


def chart_version(chart: Path) -> str:
    """Chart.yaml's `version` (a top-level key; quotes dropped)."""
    text = (chart / "Chart.yaml").read_text(encoding="utf-8")
    match = re.search(r"^version:\s*[\"']?([^\"'\s#]+)", text, re.MULTILINE)
    if not match:
        raise SystemExit(f"gen_released: no version in {chart / 'Chart.yaml'}")
    return match[1]


def read_record(chart: Path) -> dict[str, str]:
    """RELEASED's `key: value` lines (version, digest, tag)."""
    record = {}
    for line in (chart / RECORD).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition(":")
            record[key.strip()] = value.strip()
    return record


def write_record(chart: Path, tag: str) -> str:
    text = (HEADER + f"version: {chart_version(chart)}\n"
            f"digest: {digest(chart_files(chart))}\n" + f"tag: {tag}\n")
    (chart / RECORD).write_text(text, encoding="utf-8")
    return text


def semver_key(version: str) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
    """A sort key with SemVer 2.0's precedence: a pre-release sorts before its release, its
    numeric identifiers numerically and before alphanumeric ones; build metadata is ignored."""
    match = SEMVER.match(version)
    if not match:
        raise ValueError(f"{version!r} is not a SemVer version (MAJOR.MINOR.PATCH[-pre])")
    major, minor, patch, pre = int(match[1]), int(match[2]), int(match[3]), match[4]
    identifiers = tuple((0, int(p)) if p.isdigit() else (1, p)
                        for p in (pre.split(".") if pre else ()))
    return major, minor, patch, 0 if pre else 1, identifiers


def problem(chart: Path, record: dict[str, str] | None = None) -> str | None:
    """Why the chart at chart may not stand as it is against its record, or None."""
    record = read_record(chart) if record is None else record
    version, current = chart_version(chart), digest(chart_files(chart))
    released = record["version"]
    if semver_key(version) < semver_key(released):
        return f"Chart.yaml's version {version} is lower than the released {released}"
    if current != record["digest"] and semver_key(version) <= semver_key(released):
        return (f"the chart changed since release {released} (digest {current}, released "
                f"{record['digest']}) but Chart.yaml's version is still {version}: raise it "
                "(docs/releasing.md)")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when the chart changed with no version bump")
    parser.add_argument("--is-release", metavar="VERSION",
                        help="write nothing; exit 1 unless RELEASED records this chart at VERSION")
    parser.add_argument("--tag", help="the release's tag, recorded (default v<version>)")
    parser.add_argument("--chart", type=Path, default=CHART, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check:
        reason = problem(args.chart)
        if reason:
            print(f"gen_released: {reason}", file=sys.stderr)
            return 1
        return 0
    if args.is_release:
        record = read_record(args.chart)
        want = {"version": args.is_release, "digest": digest(chart_files(args.chart))}
        got = {"version": record.get("version"), "digest": record.get("digest")}
        if chart_version(args.chart) != args.is_release or got != want:
            print(f"gen_released: RELEASED records {got} and Chart.yaml says version "
                  f"{chart_version(args.chart)}, not this chart at {args.is_release} ({want}): "
                  "run scripts/gen_released.py in the release commit (docs/releasing.md)",
                  file=sys.stderr)
            return 1
        return 0
    print(write_record(args.chart, args.tag or f"v{chart_version(args.chart)}"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
