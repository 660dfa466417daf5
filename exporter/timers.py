"""The async side of the clock seam: what the adapters and the daemon's tasks sleep and time out on.

``core/clock.py`` stays pure (a ``Clock`` only tells the time). Everything that *waits* — the Alpaca
client's backoff, pings and handshake steps, the Yahoo poller's schedule and request deadline, the
daemon's ticker and supervisor — goes through one :class:`Timers` object instead of calling
``asyncio.sleep``/``time.monotonic`` on its own.

:class:`LoopTimers`, the one implementation, reads and waits on the running event loop's clock. That
is the clock the libraries under the adapters (websockets' open and close timeouts, httpx's, the
simulators') already use, so all timers of a process agree on one timeline — and a test loop whose
time is virtual (the ``looptime`` pytest plugin: it fast-forwards the loop's clock whenever nothing
but timers is pending, real loopback sockets included) moves every one of them at once: tests run
minutes of backoff in milliseconds without a sleep being faked. For asyncio's own loops the loop
clock *is* ``time.monotonic``, so production behaviour is unchanged.

A ``LoopTimers`` is also a :class:`~exporter.core.clock.Clock`, so the core and the adapters can
share one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["LoopTimers", "Timers"]


class Timers(Protocol):
    def monotonic(self) -> float:
        """Seconds on the timeline every sleep and timeout of this object uses."""
        ...

    def wall_ns(self) -> int:
        """Wall time in Unix nanoseconds (exchange timestamps only, never timers)."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def timeout(self, seconds: float | None) -> asyncio.Timeout:
        """``async with timers.timeout(s):`` raises ``TimeoutError`` when the block outlasts ``s``."""
        ...


class LoopTimers:
    """Timers on the running event loop's clock (``time.monotonic`` for asyncio's standard loops)."""

    __slots__ = ()

    def monotonic(self) -> float:
        loop = asyncio._get_running_loop()  # None outside a loop, where the loop clock is this one
        return time.monotonic() if loop is None else loop.time()

    def wall_ns(self) -> int:
        return time.time_ns()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def timeout(self, seconds: float | None) -> asyncio.Timeout:
        return asyncio.timeout(seconds)
