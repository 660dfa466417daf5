"""The event loop's heartbeat: a monotonic stamp a task refreshes; /healthz reads its age."""

from __future__ import annotations

import asyncio
import time

__all__ = ["Heartbeat"]


class Heartbeat:
    """A monotonic stamp refreshed by a task on the event loop; its age says whether the loop turns."""

    def __init__(self, interval: float = 0.5, timeout: float = 5.0) -> None:
        self.interval = interval
        self.timeout = timeout
        self.last = time.monotonic()

    def beat(self) -> None:
        self.last = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self.last

    def fresh(self) -> bool:
        return self.age() <= self.timeout

    async def run(self) -> None:
        while True:
            self.beat()
            await asyncio.sleep(self.interval)
