#!/usr/bin/env bash
# The one demo command (README quick start): set up, then run the embedded demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/alpaca-exporter demo "$@"
