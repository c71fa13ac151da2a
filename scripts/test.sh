#!/usr/bin/env bash
# Sets up everything the tests need and runs the whole suite: lint, types, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/ruff check exporter tests bench dashboards scripts
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
