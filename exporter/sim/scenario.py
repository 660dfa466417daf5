"""The faults the simulators can stage, and the demo's scripted day made of them.

:class:`Faults` names each fault an operator should see on /metrics as one awaitable call; the demo's
script (:func:`demo_steps`, timed) and the soak's rotation (``exporter_tools.soak``) are both built
from it. One demo cycle lasts ``CYCLE_SECONDS`` and repeats; within the first cycle every catalogue
metric moves. Steps are data (time offset, what happens, the action), so the demo prints what it is doing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial

from exporter.feeds import Family
from exporter.sim.alpaca_server import AlpacaSimulator
from exporter.sim.market import family_of
from exporter.sim.yahoo_server import YahooSimulator

log = logging.getLogger("exporter.demo")
CYCLE_SECONDS = 60.0

Action = Callable[[], Awaitable[None]]


# A symbol of each family nobody subscribes (the client counts it as unknown, not as a feed error).
_UNSUBSCRIBED: dict[Family, str] = {"stocks": "ZZZZ", "crypto": "ZZZ/USD", "options": "ZZZ270115C00001000"}


class Faults:
    """Faults on the two simulators; bad prints and missing bars go to the first symbol, spikes, halts
    and crossed order books to the second."""

    def __init__(self, alpaca: AlpacaSimulator, yahoo: YahooSimulator, symbols: Sequence[str]) -> None:
        self.alpaca = alpaca
        self.yahoo = yahoo
        self.first, self.second = symbols[0], symbols[1 % len(symbols)]
        self.unsubscribed = _UNSUBSCRIBED[family_of(self.first)]

    async def partial_subscription(self, kept: int, messages: int = 1) -> None:
        """The next ``messages`` subscribe messages are applied only for the first ``kept`` symbols of
        each list (as Alpaca was seen to do with long lists): the client finds the rest missing and
        repairs it, one backed-off repair per partial answer."""
        self.alpaca.apply_partially(kept, count=messages)

    async def halt(self, on: bool = True) -> None:
        """A trading halt of the second symbol (its tape's real status code), or its resumption."""
        if on:
            await self.alpaca.halt(self.second)
        else:
            await self.alpaca.resume(self.second)

    async def missing_bar(self) -> None:
        """The first symbol's next minute bar never comes, although its trades did."""
        self.alpaca.drop_bar(self.first)

    async def bad_prints(self) -> None:
        """A zero price, a crossed quote, a trade from the future, an unsubscribed symbol, an unknown
        message type and a missing field: each rejection reason once."""
        alpaca, first = self.alpaca, self.first
        now_ns = time.time_ns()
        await alpaca.inject_trade(first, 0.0)  # invalid_price
        await alpaca.inject(
            [
                # A crossed quote (bid above ask) and a trade stamped a minute in the future.
                {"T": "q", "S": first, "bp": 101.0, "ap": 100.0, "bs": 1, "as": 1, "t": now_ns},
                {"T": "t", "S": first, "p": alpaca.market.price(first), "s": 5, "t": now_ns + 60_000_000_000},
                {"T": "t", "S": self.unsubscribed, "p": 10.0, "s": 1, "t": now_ns},  # a symbol nobody subscribed
            ]
        )
        await alpaca.send_unknown(first)
        await alpaca.send_missing_field(first)

    async def crossed_book(self) -> None:
        """The second symbol's order book crossed by one delta (a bid above the best ask)."""
        await self.alpaca.cross_book(self.second)

    async def garbage(self) -> None:
        """Frames that do not decode: random bytes and a truncated frame."""
        await self.alpaca.send_malformed("garbage")
        await self.alpaca.send_malformed("truncated")

    async def spike(self, factor: float, count: int) -> None:
        """The second symbol's next ``count`` prices times ``factor``: its circuit breaker trips."""
        self.alpaca.spike(self.second, factor, count=count)

    async def drop(self, *, hold: float | None = None, refuse: int | None = None, times: int | None = None) -> None:
        """TCP dropped without a close frame (the client sees 1006). With ``hold``, the server keeps the
        dropped slot that many seconds (a reconnect within them meets 406); with ``refuse``, reconnects
        are answered with that HTTP status (``times`` times, else until :meth:`accept`)."""
        if refuse is not None:
            self.alpaca.refuse_connections(refuse, count=times)
        if hold is not None:
            self.alpaca.zombie_hold = hold
        await self.alpaca.drop_connections(hold_slot=hold is not None)

    async def accept(self) -> None:
        """Alpaca accepts connections again."""
        self.alpaca.refuse_connections(None)

    async def mute(self, on: bool = True) -> None:
        """No data frames (pongs continue): the stream goes stale."""
        self.alpaca.set_mute(on)

    async def no_pong(self) -> None:
        """Pings unanswered: a dead socket."""
        self.alpaca.set_pong(False)

    async def close_new(self) -> None:
        """Every connection dropped and each new one closed (1011) right after the upgrade."""
        self.alpaca.close_new_connections(True)
        await self.drop()

    async def yahoo_429(self, seconds: float, retry_after: float) -> None:
        self.yahoo.rate_limit(seconds=seconds, retry_after=retry_after)

    async def yahoo_503(self, seconds: float) -> None:
        self.yahoo.server_error(503, seconds=seconds)

    async def yahoo_html(self, seconds: float) -> None:
        """Yahoo's "will be right back" HTML page, with a 200."""
        self.yahoo.html_outage(200, seconds=seconds)

    def heal(self) -> None:
        """Undo every fault (Yahoo's end by themselves, but clearing is harmless)."""
        self.alpaca.set_mute(False)
        self.alpaca.set_pong(True)
        self.alpaca.refuse_connections(None)
        self.alpaca.close_new_connections(False)
        self.alpaca.apply_partially(None)
        self.yahoo.clear_faults()


@dataclass(frozen=True)
class Step:
    at: float
    what: str
    action: Action


def demo_steps(faults: Faults, family: Family = "stocks") -> list[Step]:
    """The scripted minute on a feed of ``family``: halts and missing bars where the feed has statuses
    and bars (stocks), a crossed order book where it has order books (crypto)."""
    first, second = faults.first, faults.second

    async def alpaca_outage() -> None:
        # Long enough a zombie hold that the first reconnect after the outage meets a 406.
        await faults.drop(hold=12.0, refuse=503)

    async def total_outage() -> None:
        faults.yahoo.outage("503", seconds=8.0)
        faults.alpaca.zombie_hold = 1.0
        await faults.drop(refuse=503)

    async def alpaca_back() -> None:
        # One symbol kept per answer, three answers: the shortfall lasts through the client's backed-off
        # repairs (1 s, 2 s, 4 s), long enough for every scrape to see it.
        await faults.partial_subscription(1, messages=3)
        await faults.accept()

    stocks_only = [
        Step(3, f"{first}'s next minute bar is withheld although it traded: a missing bar", faults.missing_bar),
        # Before the outage, while the stream is surely up: a status sent while the client reconnects is
        # lost (Alpaca does not replay statuses), and on a loaded machine the reconnect after +24 s can
        # take seconds.
        Step(10, f"{second} halted (trading-status message): silence that is not staleness", faults.halt),
        Step(
            12,
            f"{second} resumes trading: its breaker takes the first price as the new reference",
            partial(faults.halt, False),
        ),
    ]
    crypto_only = [
        Step(10, f"{second}'s order book crossed by one delta (a bid above the best ask)", faults.crossed_book),
    ]
    steps = [
        Step(
            5,
            f"bad prints on {first}: zero price, crossed quote, future timestamp, unknown symbol/type",
            faults.bad_prints,
        ),
        Step(
            8,
            f"price spike on {second} (x1.5): its circuit breaker trips, heals after the cooldown",
            partial(faults.spike, 1.5, count=3),
        ),
        Step(14, "Alpaca outage: TCP dropped without a close frame, reconnects refused -> failover", alpaca_outage),
        Step(
            24,
            "Alpaca accepts again; the dropped slot is still held (406); the subscription is applied only in "
            "part and repaired; failback after hysteresis",
            alpaca_back,
        ),
        Step(34, "Alpaca goes mute while answering pings: stale stream detected -> reconnect, failover", faults.mute),
        Step(37, "Alpaca data flows again", partial(faults.mute, False)),
        Step(
            40,
            "Yahoo answers 429 Too Many Requests with Retry-After: the poller backs off",
            partial(faults.yahoo_429, 14.0, retry_after=2),
        ),
        Step(46, "total outage: Alpaca refused and Yahoo down -> BOTH_UNAVAILABLE, /readyz 503", total_outage),
        Step(54, "both sources back: straight to PRIMARY_ACTIVE", faults.accept),
    ]
    if family == "stocks":
        steps += stocks_only
    elif family == "crypto":
        steps += crypto_only
    return sorted(steps, key=lambda step: step.at)


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
