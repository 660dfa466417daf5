"""Suite-wide fixtures. Their code lives in ``tests/support/``; this file only wires it into pytest."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from exporter.sim.alpaca_server import AlpacaSimulator
from exporter.sim.yahoo_server import YahooSimulator
from tests.support.pki import Pki, make_pki
from tests.support.prometheus import PrometheusFactory, PrometheusServer, running_prometheus
from tests.support.stacks import process_simulators, running_stack

_TOOLS = Path(__file__).resolve().parent.parent / ".tools" / "bin"


def pytest_configure(config: pytest.Config) -> None:
    """Put the Prometheus tools that `scripts/setup.sh --test-tools` unpacks into .tools/bin on PATH.

    Then declare "no current event loop": pytest-asyncio (1.5) asks for the current loop around the sync
    fixtures of async tests, and looptime's plugin around every test, and Python 3.11 answers that
    question by creating a loop nobody closes, until the garbage collector reports it as an unclosed
    loop (or its sockets as unclosed) in whatever test is running then (pytest-dev/pytest-asyncio#724).
    After ``set_event_loop(None)`` the question raises instead, which both expect.

    asyncio debug mode (``asyncio_debug`` in pyproject.toml) raises on calls from the wrong thread,
    adds where-created tracebacks to never-awaited coroutines and unclosed transports (errors here, as
    every warning is) and logs exceptions nobody retrieved (ERROR). Its INFO/DEBUG chatter (servers
    serving, connections accepted) and its slow-callback WARNINGs (a timing, on a shared 2-core machine)
    would land in the records of tests that read their logs, so the ``asyncio`` logger starts at ERROR.
    """
    if _TOOLS.is_dir():
        os.environ["PATH"] = f"{_TOOLS}{os.pathsep}{os.environ.get('PATH', '')}"
    asyncio.set_event_loop(None)
    logging.getLogger("asyncio").setLevel(logging.ERROR)


@pytest.fixture
def prometheus_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusFactory]:
    """`prometheus_factory(targets, **PrometheusServer kwargs)` → a started server, stopped at teardown."""
    stack = contextlib.ExitStack()

    def make(targets: Sequence[str], **kwargs: Any) -> PrometheusServer:
        workdir = tmp_path_factory.mktemp("prometheus")
        return stack.enter_context(running_prometheus(targets, workdir, **kwargs))

    with stack:
        yield make


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def rstack(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[..., Any]]:
    """``async with rstack(**knobs) as s``: :func:`~tests.support.stacks.running_stack`, with the
    exporter's DEBUG records captured for the tests that count log lines."""
    caplog.set_level(logging.DEBUG, logger="exporter")
    # The simulator's frame dumps are noise here (not caplog.set_level: that would raise the handler's
    # level for every logger).
    sim_logger = logging.getLogger("exporter.sim")
    previous = sim_logger.level
    sim_logger.setLevel(logging.WARNING)
    yield running_stack
    sim_logger.setLevel(previous)


@pytest.fixture
async def sims() -> AsyncIterator[tuple[AlpacaSimulator, YahooSimulator]]:
    """An Alpaca and a Yahoo simulator for daemons run as child processes (``process_env``)."""
    async with process_simulators() as pair:
        yield pair
