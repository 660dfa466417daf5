#!/usr/bin/env bash
# The one test command (README quick start, .ci/run): set up, lint, type-check, run every test (the core's
# under a 100 % branch-coverage gate), then the suite's fast part again against the lowest dependency
# versions pyproject.toml allows.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test-tools
.venv/bin/ruff check exporter exporter_tools deploy tests
.venv/bin/ruff format --check exporter exporter_tools deploy tests
.venv/bin/mypy
# The coverage gate: the pure core's own tests reach every branch of exporter/core/.
.venv/bin/python -m pytest -q tests/core --cov=exporter.core --cov-branch --cov-fail-under=100
# The rest of the suite (tests/core just ran).
.venv/bin/python -m pytest --ignore=tests/core "$@"
scripts/test-lowest.sh
