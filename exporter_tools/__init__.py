"""The exporter's development tools: the benchmark, the soak and the load test.

Not part of the daemon: the container image does not ship them, and the benchmark needs the ``tools``
extra (``pip install 'alpaca-exporter[tools]'`` from a checkout; the dev install has it).
"""

from __future__ import annotations

import importlib.util


def require(*modules: str) -> None:
    """Raise ModuleNotFoundError now for a dependency a tool would import only late in a run."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
