"""Test support: the one home of code shared by test modules (harnesses, the daemon stack, the
Prometheus harness, PromQL helpers, a throw-away PKI, fuzz strategies).

Rules: test modules and conftest files import from here, never from each other; conftest files only
turn this code into fixtures. It lives under tests/, not in the package: the exporter is an application,
nobody builds on it, and what its own tools need at run time (simulators, fault proxy, fake clock) is
already in the package (``exporter.sim``, ``exporter.core.clock.FakeClock``).
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
