#!/usr/bin/env bash
# Sets up everything the tests need and runs the whole suite: lint, types, then pytest in two
# tiers. The fast tier (`pytest -m "not slow"`: unit, property, promtool-check and in-process
# tests; what to run after each change) comes first. Then the slow tier (`-m slow`: the exporter
# as a process, the real Prometheus, Alertmanager and VictoriaMetrics, promtool's rule suites,
# pip installs and image builds, outages and soaks) on FOOTPRINT_SLOW_WORKERS (4) pytest-xdist
# workers: most of its tests wait on real clocks, not on the CPU. Both tiers always run; the
# script fails if either did. With arguments, one pytest run of those instead, e.g.
# `bash scripts/test.sh tests/test_rules.py -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/ruff check exporter tests bench dashboards scripts
.venv/bin/mypy
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
status=0
.venv/bin/python -m pytest -m "not slow" || status=$?
# --dist loadfile: a module's tests run on one worker, which makes its Prometheus, install or
# image once; --no-loadscope-reorder keeps tests/conftest.py's order, the longest modules first.
.venv/bin/python -m pytest -m slow -n "${FOOTPRINT_SLOW_WORKERS:-4}" --dist loadfile \
  --no-loadscope-reorder || status=$((status ? status : $?))
exit "$status"
