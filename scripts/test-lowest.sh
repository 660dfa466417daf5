#!/usr/bin/env bash
# The suite's fast part against the LOWEST runtime versions pyproject.toml allows, so its lower bounds stay
# true (a bound that only the newest versions satisfy breaks users pinned to an older library).
# Runtime dependencies: uv's `lowest-direct` resolution; test tools: the newest that fit beside them.
# Everything lives in .venv-lowest; scripts/test.sh runs this after the main suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh  # the dev environment brings uv

venv=.venv-lowest
stamp=$venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv"
  uv=(.venv/bin/uv pip install -q --python "$venv/bin/python")
  "${uv[@]}" --resolution lowest-direct -e .
  .venv/bin/uv pip freeze -q --python "$venv/bin/python" --exclude-editable >"$venv/lowest.txt"
  "${uv[@]}" --constraint "$venv/lowest.txt" -e '.[test]'
  touch "$stamp"
fi
echo "lowest runtime versions: $(grep -iE '^(prometheus.client|websockets|httpx|pydantic|pydantic.settings|msgspec|httptools|uvicorn|aiohttp|pyyaml|bcrypt|lightkube|tzdata)==' "$venv/lowest.txt" | tr '\n' ' ')"
# Not here: end-to-end and ops tests (they exercise Prometheus' tools and the image, not the library
# versions), and the tests of the tools and of the SDKs' fidelity (their extras are not in the lowest install).
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests \
  --ignore=tests/e2e --ignore=tests/ops --ignore=tests/test_bench.py --ignore=tests/sim/test_sdk_fidelity.py \
  --ignore=tests/sim/test_yfinance_fidelity.py "$@"
