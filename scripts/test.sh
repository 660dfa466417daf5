#!/usr/bin/env bash
# The one test command (README quick start, .ci/run): set up, lint, type-check, run every test, then the
# fast part of the suite again against the lowest dependency versions pyproject.toml allows.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test-tools
.venv/bin/ruff check exporter exporter_tools tests
.venv/bin/ruff format --check exporter exporter_tools tests
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
scripts/test-lowest.sh
