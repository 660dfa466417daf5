"""Fixtures of the core tests: a fresh :class:`~tests.support.core.Harness` per test."""

from __future__ import annotations

from collections.abc import Callable

import pytest

# OPEN_WALL_S, SATURDAY_WALL_S, SYMBOLS, only_transition: re-exported until the core tests import them
# from tests.support.core (then import only Harness here).
from tests.support.core import OPEN_WALL_S, SATURDAY_WALL_S, SYMBOLS, Harness, only_transition  # noqa: F401


@pytest.fixture
def make() -> Callable[..., Harness]:
    return Harness


@pytest.fixture
def h() -> Harness:
    return Harness()
