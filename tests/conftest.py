"""Suite-wide set-up: the Prometheus tools that `scripts/setup.sh --test-tools` unpacks into .tools/bin."""

from __future__ import annotations

import os
from pathlib import Path

_TOOLS = Path(__file__).resolve().parent.parent / ".tools" / "bin"
if _TOOLS.is_dir():
    os.environ["PATH"] = f"{_TOOLS}{os.pathsep}{os.environ.get('PATH', '')}"
