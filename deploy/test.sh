#!/usr/bin/env bash
# Run the checks and the test suite on real services (a real Mosquitto, a real
# InfluxDB, a real speed server, started on free loopback ports by the tests).
# Arguments go to pytest, e.g. `bash deploy/test.sh -k speedtest -x`.
# Needs root for the network-namespace tests (ip netns).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh --dev
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
