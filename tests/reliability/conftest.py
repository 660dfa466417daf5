"""The fault-injection stack is the suite-wide ``rstack`` fixture (tests/conftest.py, code in
tests/support/stacks.py)."""

from __future__ import annotations

# Re-exported until the reliability tests import these from tests.support.stacks (then delete this file).
from tests.support.stacks import SYMBOLS, Stack, fast_settings, records  # noqa: F401

RStack = Stack
