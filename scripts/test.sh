#!/usr/bin/env bash
# Sets up the machine (scripts/setup.sh) and runs the whole test suite: unit tests, integration
# tests against a real Tansu broker, chdb, Prometheus/Alertmanager and headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
mkdir -p test-artifacts
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
