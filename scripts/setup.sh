#!/usr/bin/env bash
# Creates .venv with the exporter and its locked dependencies (requirements.lock), and, with
# --test, what the tests need: Python packages, and Debian's prometheus (promtool),
# prometheus-node-exporter, prometheus-alertmanager and victoria-metrics (the server, vmagent,
# vmalert), and buildah and mmdebstrap (tests/test_image.py builds and runs the image with
# scripts/build_image.sh) when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

apt_install() {
  # Installs the Debian packages named, once; says what to do where it cannot.
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: please install the Debian packages ${missing[*]} (sudo apt-get install ${missing[*]}), then rerun" >&2
    exit 1
  fi
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "setup: Python 3.11 or newer is needed as '$python' (set PYTHON=...)" >&2
  exit 1
fi
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
  apt_install python3-venv
fi
if [ $want_test -eq 1 ]; then
  # buildah brings uidmap and containers-common; as root, with --isolation chroot, it needs
  # neither fuse-overlayfs, nor runc or crun, nor podman (docs/container.md#building-it-here)
  apt_install prometheus prometheus-node-exporter prometheus-alertmanager victoria-metrics \
    buildah mmdebstrap
fi

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip_install() {
  # pip's exit status, without the "WARNING: Location ... is ignored" lines that a pip
  # configuration naming absent find-links directories prints
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "^WARNING: Location" >&2 || true; }
}
# The runtime dependencies first, exactly as the image has them: requirements.lock, every file
# checked against its hash (docs/container.md#locked-dependencies). Then the exporter (and the
# test extras), which keeps those pins; tests/test_lock.py fails if this environment has others.
pip_install --require-hashes --no-deps -r requirements.lock
extra=""
[ $want_test -eq 1 ] && extra="[test]"
pip_install -e ".${extra}"
.venv/bin/python -c 'import exporter' # fails loudly if the install did not work
if [ $want_test -eq 1 ]; then
  # tests/test_dashboards.py type-checks the dashboards with tsc against @grafana/schema
  # (versions pinned in dashboards/schema-check/package-lock.json)
  (cd dashboards/schema-check && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
