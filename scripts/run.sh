#!/usr/bin/env bash
# Sets up .venv and runs the exporter on this machine; extra arguments go to the exporter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/footprint-exporter "$@"
