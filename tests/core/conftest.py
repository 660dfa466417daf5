"""Fixtures of the core tests: a fresh :class:`~tests.support.core.Harness` per test."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.core import Harness


@pytest.fixture
def make() -> Callable[..., Harness]:
    return Harness


@pytest.fixture
def h() -> Harness:
    return Harness()
