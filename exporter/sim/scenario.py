"""The demo's scripted day: normal streaming, then each fault an operator should see on /metrics.

One cycle lasts ``CYCLE_SECONDS`` and repeats; within the first cycle every catalogue metric moves.
Steps are data (time offset, what happens, the action), so the demo prints what it is doing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from exporter.sim.alpaca_server import AlpacaSimulator
from exporter.sim.yahoo_server import YahooSimulator

log = logging.getLogger("exporter.demo")
CYCLE_SECONDS = 60.0


@dataclass(frozen=True)
class Step:
    at: float
    what: str
    action: Callable[[], Awaitable[None]]


def demo_steps(alpaca: AlpacaSimulator, yahoo: YahooSimulator, symbols: list[str]) -> list[Step]:
    first, second = symbols[0], symbols[1 % len(symbols)]

    async def bad_prints() -> None:
        now_ns = time.time_ns()
        await alpaca.inject_trade(first, 0.0)  # invalid_price
        await alpaca.inject(
            [
                # A crossed quote (bid above ask) and a trade stamped a minute in the future.
                {"T": "q", "S": first, "bp": 101.0, "ap": 100.0, "bs": 1, "as": 1, "t": now_ns},
                {"T": "t", "S": first, "p": alpaca.market.price(first), "s": 5, "t": now_ns + 60_000_000_000},
                {"T": "t", "S": "ZZZZ", "p": 10.0, "s": 1, "t": now_ns},  # a symbol nobody subscribed
            ]
        )
        await alpaca.send_unknown(first)
        await alpaca.send_missing_field(first)

    async def spike() -> None:
        alpaca.spike(second, 1.5, count=3)

    async def alpaca_outage() -> None:
        # Long enough a zombie hold that the first reconnect after the outage meets a 406.
        alpaca.zombie_hold = 12.0
        alpaca.refuse_connections(503)
        await alpaca.drop_connections(hold_slot=True)

    async def alpaca_back() -> None:
        alpaca.refuse_connections(None)

    async def mute() -> None:
        alpaca.set_mute(True)

    async def unmute() -> None:
        alpaca.set_mute(False)

    async def yahoo_429() -> None:
        yahoo.rate_limit(seconds=14.0, retry_after=2)

    async def total_outage() -> None:
        yahoo.outage("503", seconds=8.0)
        alpaca.zombie_hold = 1.0
        alpaca.refuse_connections(503)
        await alpaca.drop_connections(hold_slot=False)

    async def all_back() -> None:
        alpaca.refuse_connections(None)

    return [
        Step(5, f"bad prints on {first}: zero price, crossed quote, future timestamp, unknown symbol/type", bad_prints),
        Step(8, f"price spike on {second} (x1.5): its circuit breaker trips, heals after the cooldown", spike),
        Step(14, "Alpaca outage: TCP dropped without a close frame, reconnects refused -> failover", alpaca_outage),
        Step(
            24,
            "Alpaca accepts again; the dropped slot is still held (406), then failback after hysteresis",
            alpaca_back,
        ),
        Step(34, "Alpaca goes mute while answering pings: stale stream detected -> reconnect, failover", mute),
        Step(37, "Alpaca data flows again", unmute),
        Step(40, "Yahoo answers 429 Too Many Requests with Retry-After: the poller backs off", yahoo_429),
        Step(46, "total outage: Alpaca refused and Yahoo down -> BOTH_UNAVAILABLE, /readyz 503", total_outage),
        Step(54, "both sources back: straight to PRIMARY_ACTIVE", all_back),
    ]


async def run_scenario(
    steps: list[Step], *, cycles: int | None = None, announce: Callable[[str], None] | None = None
) -> None:
    cycle = 0
    while cycles is None or cycle < cycles:
        start = time.monotonic()
        for step in steps:
            delay = start + step.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if announce:
                announce(f"[demo +{step.at:4.0f}s] {step.what}")
            try:
                await step.action()
            except Exception:  # a failed fault injection must not end the demo
                log.exception("demo step failed: %s", step.what)
        delay = start + CYCLE_SECONDS - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        cycle += 1
