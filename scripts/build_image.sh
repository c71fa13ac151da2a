#!/usr/bin/env bash
# Builds the footprint-exporter image from the project's Dockerfile, unchanged, with buildah, on
# a machine that cannot pull python:3.11.15-slim-bookworm: on a stand-in for that base, Debian
# bookworm's Python 3.11 made by mmdebstrap (docs/container.md#building-it-here).
#
#   bash scripts/build_image.sh [--tag NAME] [--base IMAGE] [--rebuild]
#       Both stages of the Dockerfile; prints `base=...` and `image=...` on stdout at the end
#       (everything else goes to stderr). --tag: the image's name (localhost/footprint-exporter:
#       <version>); --base: build on IMAGE instead of the stand-in (python:3.11.15-slim-bookworm
#       where a registry is reachable); --rebuild: build even if an image of the same name was
#       built from the same inputs.
#   bash scripts/build_image.sh base
#       Only the stand-in base; prints its name.
#   bash scripts/build_image.sh sizes IMAGE BASE
#       IMAGE's size, BASE's, the layers the Dockerfile adds, and what each installed
#       distribution costs.
#
# Needs root, buildah and mmdebstrap (bash scripts/setup.sh --test installs them). The stand-in's
# tarball is cached in .cache/image/, keyed by everything that makes it; delete it to pick up
# Debian's security updates.
set -euo pipefail
self=$(readlink -f "${BASH_SOURCE[0]}")
cd "$(dirname "$self")/.."

python=${PYTHON:-}  # the Python (and pip) whose configuration the build takes; .venv's by default
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
cache=.cache/image

die() { echo "build_image: $*" >&2; exit 1; }

need() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] || die "${missing[*]} not found: bash scripts/setup.sh --test installs them (Debian packages buildah, mmdebstrap)"
}

image_id() { buildah inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null; }

# --- the stand-in base -------------------------------------------------------------------------
#
# What the official python:3.11-slim-bookworm has, from Debian's packages: Debian 12 (minbase:
# apt, dpkg, bash, coreutils; merged /usr), Python 3.11 with pip, ca-certificates, netbase and
# tzdata, no documentation, man pages or translations (as debian:bookworm-slim), no Recommends
# (so no compiler). `python` is /usr/local/bin/python, as there, and `python -m pip install` as
# root installs into /usr/local/lib/python3.11/dist-packages: Debian's EXTERNALLY-MANAGED marker
# (PEP 668) is removed, in the stand-in only.
# shellcheck disable=SC2016,SC2054  # hooks run by mmdebstrap's sh with $1; commas in --include
standin_args=(
  --variant=minbase
  --include=python3,python3-pip,ca-certificates,netbase,tzdata
  --aptopt='APT::Install-Recommends "false"'
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED'
  --customize-hook='ln -s /usr/bin/python3 "$1"/usr/local/bin/python'
  bookworm
)

standin() {
  # Prints the stand-in's image name; makes its tarball and imports it when missing.
  need buildah mmdebstrap
  local key tar name ctr
  key=$({ mmdebstrap --version; dpkg --print-architecture; printf '%s\n' "${standin_args[@]}"; } \
        | sha256sum | cut -c1-16)
  tar=$cache/standin-$key.tar
  name=localhost/footprint-python-standin:3.11-bookworm-$key
  if image_id "$name" >/dev/null; then
    echo "$name"
    return
  fi
  mkdir -p "$cache"
  if [ ! -f "$tar" ]; then
    echo "build_image: making the stand-in base with mmdebstrap (about a minute): $tar" >&2
    find "$cache" -maxdepth 1 -name 'standin-*.tar*' -delete  # other keys' tarballs
    mmdebstrap --format=tar "${standin_args[@]}" "$tar.part" >&2 ||
      { rm -f "$tar.part"; die "mmdebstrap failed"; }
    mv "$tar.part" "$tar"
  fi
  echo "build_image: importing $tar as $name" >&2
  ctr=$(buildah from --quiet scratch)
  if ! { buildah add --quiet "$ctr" "$tar" / >/dev/null &&
         buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
           --env LANG=C.UTF-8 --cmd '["python3"]' "$ctr" &&
         buildah commit --quiet --rm "$ctr" "$name" >/dev/null; }; then
    buildah rm "$ctr" >/dev/null 2>&1 || true
    die "importing $tar failed"
  fi
  echo "$name"
}

# --- this machine's pip configuration, for the builder stage -----------------------------------
#
# Behind a TLS-intercepting proxy, or with a private index, the builder's `pip download` and
# `pip wheel` need what pip on this machine is configured with. Read from pip itself (`pip config
# list`: its configuration files and PIP_* variables, the variables winning, as in pip), only
# where packages come from and how to reach them; into one pip.conf, mounted as the container's
# /etc/pip.conf, with every local file it names (the CA bundle, find-links directories, file://
# indexes) mounted read-only at the same path. When pip names no CA bundle, the one it would take
# from REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE or SSL_CERT_FILE. Proxy variables (https_proxy, ...)
# reach the RUN steps anyway (buildah's --http-proxy, on by default).
pip_mounts() {
  # $1: a directory for pip.conf; prints one `host:container:ro` per line for buildah's -v
  "$python" - "$1" <<'EOF'
import ast
import os
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

KEYS = {"index-url", "extra-index-url", "find-links", "no-index", "trusted-host", "cert",
        "client-cert", "proxy", "timeout", "default-timeout", "retries"}
LISTS = {"extra-index-url", "find-links", "trusted-host"}
done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                      text=True, check=False)
if done.returncode != 0:
    print(f"build_image: no pip configuration read ({sys.executable} -m pip config list: "
          f"{done.stderr.strip()[-200:]})", file=sys.stderr)
    sys.exit(0)
sections: dict[str, dict[str, str]] = {}
from_env: dict[str, str] = {}
for line in done.stdout.splitlines():
    name, sep, raw = line.partition("=")
    section, _, key = name.partition(".")
    if not sep or key not in KEYS:
        continue
    value = str(ast.literal_eval(raw))
    if section == ":env:":  # PIP_* variables: over every section of every file
        from_env[key] = value
    else:
        sections.setdefault(section, {})[key] = value
for key, value in from_env.items():
    for values in sections.values():
        values.pop(key, None)
    sections.setdefault("global", {})[key] = value
if not any("cert" in values for values in sections.values()):
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        if os.path.isfile(os.environ.get(var, "")):
            sections.setdefault("global", {})["cert"] = os.environ[var]
            break
if not sections:
    sys.exit(0)

mounts: list[Path] = []
for values in sections.values():
    for key, value in values.items():
        for item in value.split() if key in LISTS else [value]:
            if key in ("cert", "client-cert"):
                path = Path(item)
            elif key in ("index-url", "extra-index-url", "find-links"):
                url = urllib.parse.urlsplit(item)
                if url.scheme not in ("", "file"):
                    continue
                path = Path(urllib.parse.unquote(url.path))
                if url.scheme == "file" and path.name == "simple":
                    path = path.parent  # a PEP 503 tree: its pages link to files beside simple/
            else:
                continue
            if path.is_absolute() and path.exists():  # at the path pip is given, links and all
                mounts.append(path)
conf = Path(sys.argv[1]) / "pip.conf"
conf.write_text("".join(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                        for section, values in sections.items()))
kept: list[Path] = []
for path in sorted(set(mounts), key=lambda p: len(p.parts)):
    if not any(path.is_relative_to(k) for k in kept):
        kept.append(path)
for host, container in [(conf, Path("/etc/pip.conf")), *((p, p) for p in kept)]:
    if any(c in str(host) for c in ":,\n"):
        print(f"build_image: not mounting {host} (':' or ',' in its path)", file=sys.stderr)
        continue
    print(f"{host}:{container}:ro")
shown = re.sub(r"(://[^\s/@:]+):[^\s/@]+@", r"\1:***@", conf.read_text())  # no passwords
print(f"build_image: the builder's pip configuration, from this machine's:\n{shown}",
      file=sys.stderr)
EOF
}

# --- the image ---------------------------------------------------------------------------------

context_key() {
  # Everything the build depends on: the Dockerfile, .dockerignore, the files it lets into the
  # build context (an allow-list: `*` then `!path` lines), this script, buildah, the base.
  local paths
  paths=$(sed -n 's/^!//p' .dockerignore)
  [ -n "$paths" ] || return 1
  # shellcheck disable=SC2086  # the allow-list's paths, one word each
  {
    buildah --version
    echo "base $1 $(image_id "$1")"
    sha256sum Dockerfile .dockerignore "$self"
    find $paths -type f ! -path '*/__pycache__/*' ! -name '*.py[cod]' ! -path '*.egg-info/*' \
      ! -path '*/.mypy_cache/*' ! -path '*/.pytest_cache/*' ! -path '*/.ruff_cache/*' \
      ! -path '*/.hypothesis/*' -print0 | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-32
}

build() {
  local tag="" base="" rebuild=0
  while [ $# -gt 0 ]; do
    case $1 in
      --tag) tag=$2; shift 2 ;;
      --base) base=$2; shift 2 ;;
      --rebuild) rebuild=1; shift ;;
      *) die "unknown argument $1 (see the top of $0)" ;;
    esac
  done
  need buildah
  local pull=--pull=never  # the stand-in and the builder stage's image are local
  if [ -z "$base" ]; then
    base=$(standin)
  else
    pull=--pull=false  # pulled when not here
  fi
  if [ -z "$tag" ]; then
    tag=localhost/footprint-exporter:$("$python" -c \
      'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
  fi

  local key="" record old
  record=$cache/built-$(echo "$tag" | tr -c 'A-Za-z0-9._\n-' '_')
  old=$(image_id "$tag" || true)
  if key=$(context_key "$base"); then
    if [ $rebuild -eq 0 ] && [ -n "$old" ] && [ "$(cat "$record" 2>/dev/null)" = "$key $old" ]; then
      echo "build_image: $tag was built from these same inputs; not building it again (--rebuild)" >&2
      printf 'base=%s\nimage=%s\n' "$base" "$tag"
      return
    fi
  fi

  local work builder
  work=$(mktemp -d)
  builder=localhost/footprint-exporter-builder:tmp-$$
  # shellcheck disable=SC2064  # expanded now, on purpose
  trap "buildah rmi '$builder' >/dev/null 2>&1 || true; rm -rf '$work'" EXIT
  local volumes=()
  while IFS= read -r mount; do volumes+=(-v "$mount"); done < <(pip_mounts "$work")

  # Two `buildah bud` runs of the same Dockerfile. The builder stage alone first, with this
  # machine's pip configuration mounted into its RUN steps: buildah leaves the mount points of
  # -v volumes (here /etc/pip.conf, and every path that pip.conf names that the base lacks)
  # behind as empty files and directories in the layer, which may happen in the builder, never
  # shipped, but not in the image. Then the whole file, without volumes, with the first run's
  # result as the build context named `builder` (buildah takes a named build context before a
  # stage of the same name): the final stage's RUN --mount=...,from=builder reads /wheels from
  # it, offline, as with Docker. Not --layers: buildah 1.28 can mount a stale or partial stage
  # for from=<stage> when that stage's layers come from its cache (buildah#4375, #4522).
  local common=(--isolation chroot --layers=false "$pull" --build-arg "PYTHON_IMAGE=$base")
  echo "build_image: building the builder stage on $base" >&2
  buildah bud "${common[@]}" "${volumes[@]}" --target builder --tag "$builder" . >&2
  echo "build_image: building the image $tag" >&2
  buildah bud "${common[@]}" --build-context "builder=container-image://$builder" --tag "$tag" . >&2

  local new
  new=$(image_id "$tag")
  if [ -n "$old" ] && [ "$old" != "$new" ]; then
    buildah rmi "$old" >/dev/null 2>&1 || true  # the one this tag named before, unless in use
  fi
  if [ -n "$key" ]; then
    mkdir -p "$cache"
    echo "$key $new" > "$record"
  fi
  printf 'base=%s\nimage=%s\n' "$base" "$tag"
}

# --- sizes -------------------------------------------------------------------------------------

sizes() {
  [ $# -eq 2 ] || die "usage: $0 sizes IMAGE BASE"
  need buildah
  "$python" - "$1" "$2" <<'EOF'
import json
import re
import subprocess
import sys
from pathlib import Path

image, base = sys.argv[1:]
INSIDE = r"""
import importlib.metadata, json, os, sysconfig
purelib = sysconfig.get_paths()["purelib"]
dists = []
for dist in importlib.metadata.distributions(path=[purelib]):
    size = pyc = 0
    for file in dist.files or []:
        try:
            n = os.lstat(file.locate()).st_size
        except OSError:
            continue
        size += n
        pyc += n if file.suffix == ".pyc" else 0
    dists.append([dist.metadata["Name"], dist.version, size, pyc])
dirs = {}
for top in os.scandir(purelib):
    if top.is_dir() and not top.name.endswith(".dist-info"):
        for sub in [top, *(e for e in os.scandir(top.path) if e.is_dir())]:
            dirs[os.path.relpath(sub.path, purelib)] = sum(
                os.lstat(os.path.join(d, f)).st_size
                for d, _, fs in os.walk(sub.path) for f in fs)
print(json.dumps({"purelib": purelib, "dists": dists, "dirs": dirs}))
"""


def buildah(*args: str) -> str:
    return subprocess.run(["buildah", *args], capture_output=True, text=True,
                          check=True).stdout


def layers(name: str) -> list[tuple[str, int]]:
    """(diff id, uncompressed size) of each layer."""
    found = json.loads(buildah("inspect", "--type", "image", name))
    sizes = [layer["size"] for layer in json.loads(found["Manifest"])["layers"]]
    return list(zip(found["OCIv1"]["rootfs"]["diff_ids"], sizes, strict=True))


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


ours, theirs = layers(image), layers(base)
if ours[:len(theirs)] != theirs:
    sys.exit(f"build_image: {image} is not built on {base}")
added = [size for _, size in ours[len(theirs):]]
print(f"image {image}: {mb(sum(s for _, s in ours))} in {len(ours)} layer(s), uncompressed")
print(f"  base {base}: {mb(sum(s for _, s in theirs))} in {len(theirs)} layer(s)")
print(f"  added by the Dockerfile: {mb(sum(added))} in {len(added)} layer(s): "
      + ", ".join(mb(n) for n in added))

ctr = buildah("from", "--quiet", "--pull=never", image).strip()
try:
    found = json.loads(buildah("run", "--isolation", "chroot", ctr, "--", "python", "-c", INSIDE))
finally:
    buildah("rm", ctr)
lock = {norm(m) for m in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==",
                                    Path("requirements.lock").read_text(), re.M)}
dists = sorted(found["dists"], key=lambda d: -d[2])
print(f"installed distributions in {found['purelib']} (their files' sizes, of which .pyc):")
for name, version, size, pyc in dists:
    what = "" if norm(name) in lock | {"footprint-exporter"} else "  (the base's, not the lock's)"
    print(f"  {name} {version}: {mb(size)} (.pyc {mb(pyc)}){what}")
print(f"  all {len(dists)}: {mb(sum(d[2] for d in dists))} (.pyc {mb(sum(d[3] for d in dists))})")
print("largest directories there:")
for path, size in sorted(found["dirs"].items(), key=lambda kv: -kv[1])[:10]:
    print(f"  {path}: {mb(size)}")
EOF
}

command=build
case ${1:-} in
  build|base|sizes) command=$1; shift ;;
  ""|-*) ;;
  *) die "unknown command $1 (see the top of $0)" ;;
esac
if [ "$command" = sizes ]; then
  sizes "$@"
else
  mkdir -p "$cache"
  exec 9>"$cache/lock"
  flock 9  # one build at a time: a second waits, then finds the base (and maybe the image) made
  if [ "$command" = base ]; then standin; else build "$@"; fi
fi
