"""The event loop's heartbeat: a monotonic stamp a task refreshes; /healthz reads its age."""

from __future__ import annotations

from exporter.timers import LoopTimers, Timers

__all__ = ["Heartbeat"]


class Heartbeat:
    """A monotonic stamp refreshed by a task on the event loop; its age says whether the loop turns.

    It stamps and sleeps on the daemon's ``Timers`` like every other timer of the process."""

    def __init__(self, interval: float = 0.5, timeout: float = 5.0, timers: Timers | None = None) -> None:
        self.interval = interval
        self.timeout = timeout
        self.timers = timers or LoopTimers()
        self.last = self.timers.monotonic()

    def beat(self) -> None:
        self.last = self.timers.monotonic()

    def age(self) -> float:
        return self.timers.monotonic() - self.last

    def fresh(self) -> bool:
        return self.age() <= self.timeout

    async def run(self) -> None:
        while True:
            self.beat()
            await self.timers.sleep(self.interval)
