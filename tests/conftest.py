"""Suite-wide set-up: the Prometheus tools that `scripts/setup.sh --test-tools` unpacks into .tools/bin."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

_TOOLS = Path(__file__).resolve().parent.parent / ".tools" / "bin"
if _TOOLS.is_dir():
    os.environ["PATH"] = f"{_TOOLS}{os.pathsep}{os.environ.get('PATH', '')}"

# A sync test has no event loop; looptime's plugin still asks the policy for one, and Python 3.11's policy
# then creates a loop nobody closes (its sockets leak into the next test as ResourceWarnings). Once
# set_event_loop() has been called, the policy raises instead, which the plugin expects.
asyncio.get_event_loop_policy().set_event_loop(None)
