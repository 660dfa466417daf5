"""The Yahoo poller against the Yahoo simulator, over real HTTP on 127.0.0.1, with short periods.

The tests run on virtual loop time (``looptime``): the sockets are real, but whenever nothing but timers
is pending the loop's clock jumps to the next one, so periods, backoffs and timeouts cost no wall time.
Every time here is the loop's (``now()``: the poller's and the simulator's clock), and the poller's wall
clock moves with it.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from exporter.app import yahoo_config
from exporter.core.events import (
    YAHOO_ERROR_TYPES,
    DependencyLatency,
    Event,
    FallbackPoll,
    FallbackPrice,
)
from exporter.settings import load_settings
from exporter.sim.market import Market
from exporter.sim.yahoo_server import CHART_CONTENT_TYPE, RATE_LIMIT_BODY, YahooSimulator
from exporter.sources.yahoo import YahooPoller, YahooPollerConfig, YahooPollerStatus

pytestmark = pytest.mark.looptime
# The few tests that open a new connection for request after request run in real time: httpx looks every
# new connection's host up in a resolver thread, and looptime (0.9) does not always see that thread
# finish, so the virtual loop can stall.
REAL_TIME = pytest.mark.looptime(False)

# 2026-03-10 10:34:27 EDT (session open) and 19:30 EDT (after the close), a Tuesday.
T_OPEN = 1773153267
T_CLOSED = int(datetime(2026, 3, 10, 23, 30, tzinfo=UTC).timestamp())
# Arrival-time noise at the simulator: a new connection costs a few ms, and on a loaded 2-core machine the
# process can stall for tens of ms between a request's dispatch and its arrival.
EPS = 0.04


def now() -> float:
    return asyncio.get_running_loop().time()


def shifted_wall(t0: float) -> Callable[[], float]:
    """A wall clock that starts at ``t0`` and runs with the loop's clock (for the session-based rules)."""
    base = now()
    return lambda: t0 + (now() - base)


@pytest.fixture
def market() -> Market:
    return Market(["AAPL", "MSFT", "SPY", "QQQ", "IWM", "^GSPC", "BRK-B"], seed=3)


@pytest.fixture
async def sim(market: Market) -> AsyncIterator[YahooSimulator]:
    async with YahooSimulator(market) as s:
        yield s


class Harness:
    """A poller wired to the simulator, recording every event it emits."""

    def __init__(self, sim: YahooSimulator, symbols: Iterable[str], **overrides: Any) -> None:
        self.wall: Callable[[], float] = overrides.pop("wall_clock", None) or shifted_wall(time.time())
        fields: dict[str, Any] = {
            "base_url": sim.url,
            "symbols": tuple(symbols),
            "standby_interval": 0.2,
            "active_interval": 0.05,
            "connect_timeout": 0.5,
            "read_timeout": 0.3,
            "write_timeout": 0.5,
            "pool_timeout": 0.5,
            "total_timeout": 1.0,
            "backoff_initial": 0.1,
            "backoff_max": 0.4,
            "backoff_jitter": 0.0,
            "unknown_retry": 0.5,
        }
        fields.update(overrides)
        self.sim = sim
        self.events: list[Event] = []
        self.statuses: list[YahooPollerStatus] = []  # a snapshot after every FallbackPoll
        self.poller = YahooPoller(YahooPollerConfig(**fields), self._emit, rng=random.Random(42), wall_clock=self.wall)

    def _emit(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, FallbackPoll):
            self.statuses.append(self.poller.status())

    @property
    def polls(self) -> list[FallbackPoll]:
        return [e for e in self.events if isinstance(e, FallbackPoll)]

    def prices(self, symbol: str | None = None) -> list[FallbackPrice]:
        return [e for e in self.events if isinstance(e, FallbackPrice) and symbol in (None, e.symbol)]

    def errors(self) -> list[str | None]:
        return [p.error for p in self.polls]

    def times(self, symbol: str | None = None) -> list[float]:
        return [r.at for r in self.sim.requests if symbol in (None, r.symbol)]

    @asynccontextmanager
    async def running(self) -> AsyncIterator[YahooPoller]:
        task = asyncio.create_task(self.poller.run())
        try:
            yield self.poller
        finally:
            # Stop between requests so every request sent has been answered and counted.
            deadline = now() + 3.0
            while self.poller.status().in_flight and now() < deadline:
                await asyncio.sleep(0.002)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await self.poller.aclose()

    async def until(self, predicate: Callable[[], bool], within: float = 3.0) -> None:
        deadline = now() + within
        while not predicate():
            assert now() < deadline, f"timed out; errors so far: {self.errors()}"
            await asyncio.sleep(0.005)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# ---------------------------------------------------------------------------------------- happy path


async def test_prices_latency_and_polls(sim: YahooSimulator, market: Market) -> None:
    wall = shifted_wall(T_OPEN)
    sim.clock = wall  # in the session regularMarketTime is "now" (outside it, the last session's close)
    h = Harness(sim, ["AAPL", "MSFT"], wall_clock=wall)
    async with h.running():
        await h.until(lambda: len(h.prices("AAPL")) >= 2 and len(h.prices("MSFT")) >= 2)
    assert all(p.ok and p.error is None and p.period_s == 0.2 for p in h.polls)
    latencies = [e for e in h.events if isinstance(e, DependencyLatency)]
    # Exact counting: one latency, one poll outcome, one price per request the server saw.
    assert len(latencies) == len(h.polls) == len(h.prices()) == len(sim.requests)
    assert all(e.dependency == "yahoo" and e.method == "poll" and 0 <= e.seconds < 1 for e in latencies)
    now_ns = int(wall() * 1e9)
    for price in h.prices():
        assert price.price > 0
        assert 0 <= now_ns - price.ts_ns < 5 * 10**9  # regularMarketTime in ns, not receipt time
        assert price.ts_ns % 10**9 == 0
    # Both simulators draw on one market: the poller's price is the market's (within one tick).
    assert h.prices("AAPL")[-1].price == pytest.approx(market.price("AAPL"), rel=0.01)
    status = h.poller.status()
    assert status.consecutive_failures == 0
    assert status.backoff_until is None
    assert status.last_success_at
    assert status.requests_total == len(sim.requests)
    assert status.in_flight == 0


async def test_browser_headers_params_and_encoded_symbols(sim: YahooSimulator) -> None:
    h = Harness(sim, ["^GSPC", "BRK-B"])
    async with h.running():
        await h.until(lambda: len(h.prices()) >= 2)
    assert {p.symbol for p in h.prices()} == {"^GSPC", "BRK-B"}
    raw = {r.raw_path.split("?")[0] for r in sim.requests}
    assert raw == {"/v8/finance/chart/%5EGSPC", "/v8/finance/chart/BRK-B"}
    for request in sim.requests:
        assert request.params == {"interval": "1m", "range": "1d"}
        ua = request.headers["User-Agent"]
        assert ua.startswith("Mozilla/5.0")
        assert "Chrome/" in ua
        assert "python" not in json.dumps(request.headers).lower()
        assert "application/json" in request.headers["Accept"]
        assert request.headers["Accept-Language"].startswith("en-US")


async def test_connection_reuse(sim: YahooSimulator) -> None:
    h = Harness(sim, ["AAPL"], standby_interval=0.03)
    async with h.running():
        await h.until(lambda: len(sim.requests) >= 6)
    assert len({r.peer for r in sim.requests}) == 1


def test_config_rejects_library_user_agent_and_nonsense() -> None:
    with pytest.raises(ValueError, match="User-Agent"):
        YahooPollerConfig(user_agent="python-httpx/0.28.1")
    with pytest.raises(ValueError, match="concurrency"):
        YahooPollerConfig(concurrency=0)
    with pytest.raises(ValueError, match="backoff"):
        YahooPollerConfig(backoff_initial=10, backoff_max=5)
    cfg = YahooPollerConfig()
    assert (cfg.timeout.connect, cfg.timeout.read, cfg.timeout.write, cfg.timeout.pool) == (5, 10, 5, 5)
    assert (cfg.standby_interval, cfg.active_interval, cfg.backoff_initial, cfg.backoff_max) == (60, 5, 5, 300)
    assert cfg.unknown_retry == 600


# ---------------------------------------------------------------------------------------- pacing


async def test_requests_spread_never_a_burst(sim: YahooSimulator) -> None:
    symbols = ["AAPL", "MSFT", "SPY", "QQQ", "IWM"]
    period = 0.25
    h = Harness(sim, symbols, standby_interval=period)
    async with h.running():
        await h.until(lambda: all(len(h.times(s)) >= 3 for s in symbols))
    slot = period / len(symbols)
    # The first round is spread over the period (4 slots between first and last), not sent at once.
    first_round = h.times()[: len(symbols)]
    assert {r.symbol for r in sim.requests[: len(symbols)]} == set(symbols)
    assert first_round[-1] - first_round[0] >= 3 * slot
    # Starts are kept apart globally (the pacer keeps at least half a slot)...
    assert min(gaps(h.times())) >= slot / 2 - EPS
    # ...and each symbol is asked once per period: the schedule allows P minus the forward jitter (0.3 slot);
    # the margin below that is for arrival-time noise of a loaded machine, far from a double request.
    for symbol in symbols:
        assert min(gaps(h.times(symbol))) >= 0.75 * period
        assert max(gaps(h.times(symbol))) <= period + 0.3 * slot + 0.06


async def test_rate_switch_is_immediate_both_ways(sim: YahooSimulator) -> None:
    h = Harness(sim, ["AAPL", "MSFT"], standby_interval=5.0, active_interval=0.2)
    async with h.running() as poller:
        await h.until(lambda: len(sim.requests) == 1)  # the first symbol goes at once
        await asyncio.sleep(0.15)
        assert len(sim.requests) == 1  # the other waits for its slot, 2.5 s later
        switched = now()
        poller.set_active(True)
        await h.until(lambda: {r.symbol for r in sim.requests[1:]} == {"AAPL", "MSFT"}, within=1.0)
        assert max(h.times()) - switched < 0.35  # both within about one active period, no 5 s wait
        await h.until(lambda: len(sim.requests) >= 6)
        assert poller.status().active
        assert poller.status().period_s == 0.2
        poller.set_active(False)
        count = len(sim.requests)
        await asyncio.sleep(0.25)
        in_flight = poller.status().in_flight
        assert len(sim.requests) - count <= in_flight  # back to standby: nothing new is started
    assert [p.period_s for p in h.polls][1:4] == [0.2, 0.2, 0.2]
    for symbol in ("AAPL", "MSFT"):
        active = [t for t in h.times(symbol) if t > switched]
        assert min(gaps(active)) >= 0.2 * 0.7 - EPS


async def test_concurrency_is_bounded(sim: YahooSimulator) -> None:
    symbols = ["AAPL", "MSFT", "SPY", "QQQ", "IWM", "^GSPC", "BRK-B"]
    sim.slow(0.15)
    h = Harness(sim, symbols, standby_interval=0.1, concurrency=2)
    peak = 0
    async with h.running() as poller:
        deadline = now() + 0.5
        while now() < deadline:
            peak = max(peak, poller.status().in_flight)
            await asyncio.sleep(0.003)
        sim.clear_faults()  # lets the lanes drain so the harness can stop between requests
    assert peak == 2
    arrivals = [r.at for r in sim.requests if r.at < deadline]
    # With 2 lanes and 0.15 s answers, no 0.12 s window holds more than 2 arrivals.
    assert all(sum(1 for t in arrivals if a <= t < a + 0.12) <= 2 for a in arrivals)
    assert len(h.polls) == len(sim.requests)


# ---------------------------------------------------------------------------------------- body shapes


@pytest.mark.parametrize(
    "shape", ["null_price", "missing_price", "zero_price", "nan_price", "chart_null", "result_null", "result_empty"]
)
async def test_shapes_without_a_price(sim: YahooSimulator, shape: Any) -> None:
    sim.set_shape("AAPL", shape)
    h = Harness(sim, ["AAPL", "MSFT"], standby_interval=0.06)
    async with h.running() as poller:
        await h.until(lambda: len(h.times("AAPL")) >= 3 and len(h.prices("MSFT")) >= 2)
        assert poller.status().backoff_level == 0  # the source answered: no backoff
    assert not h.prices("AAPL")
    assert h.errors().count("no_price") == len(h.times("AAPL"))
    assert h.errors().count(None) == len(h.times("MSFT"))
    assert min(gaps(h.times("AAPL"))) >= 0.06 - 0.3 * 0.03 - EPS  # no retry storm on a no-data symbol


@pytest.mark.parametrize("shape", ["no_bars", "null_last_bar"])
async def test_shapes_with_a_price_in_meta(sim: YahooSimulator, shape: Any) -> None:
    sim.set_shape("AAPL", shape)
    h = Harness(sim, ["AAPL"])
    async with h.running():
        await h.until(lambda: len(h.prices("AAPL")) >= 1)
    assert h.errors() == [None]


# ---------------------------------------------------------------------------------------- faults

SOURCE_FAULTS: list[tuple[str, Callable[[YahooSimulator], None], str]] = [
    ("429", lambda s: s.rate_limit(requests=1), "rate_limited"),
    ("403", lambda s: s.forbidden(requests=1), "forbidden"),
    ("500", lambda s: s.server_error(500, requests=1), "server_error"),
    ("503", lambda s: s.server_error(503, requests=1), "server_error"),
    ("html", lambda s: s.html_outage(requests=1), "bad_body"),
    ("html-503", lambda s: s.html_outage(503, requests=1), "server_error"),
    ("empty", lambda s: s.empty_body(requests=1), "bad_body"),
    ("not-json", lambda s: s.fail(200, b"{chart: nope", content_type=CHART_CONTENT_TYPE, requests=1), "bad_body"),
    (
        "json-as-text",
        lambda s: s.fail(200, b'{"chart":{"result":[]}}', content_type="text/plain", requests=1),
        "bad_body",
    ),
    ("json-array", lambda s: s.fail(200, b"[1,2]", content_type=CHART_CONTENT_TYPE, requests=1), "bad_body"),
    ("redirect", lambda s: s.fail(302, b"", headers={"Location": "https://guce.yahoo.com/"}, requests=1), "bad_body"),
    (
        "bad-gzip",
        lambda s: s.fail(
            200, b"not gzip at all", content_type=CHART_CONTENT_TYPE, headers={"Content-Encoding": "gzip"}, requests=1
        ),
        "bad_body",
    ),
    ("slow", lambda s: s.slow(1.5, requests=1), "timeout"),
    ("dropped", lambda s: s.outage("close", requests=1), "connection_failed"),
]


@pytest.mark.parametrize(
    ("fault", "expected"), [(f, e) for _, f, e in SOURCE_FAULTS], ids=[i for i, _, _ in SOURCE_FAULTS]
)
async def test_source_faults_back_off_and_recover(
    sim: YahooSimulator, fault: Callable[[YahooSimulator], None], expected: str
) -> None:
    fault(sim)
    h = Harness(sim, ["AAPL"], standby_interval=0.05)
    async with h.running():
        await h.until(lambda: len(h.prices()) >= 2)
    assert expected in YAHOO_ERROR_TYPES
    assert h.errors()[:3] == [expected, None, None]
    assert len(h.polls) == len(sim.requests)
    first, retry = sim.requests[0], sim.requests[1]
    answered_at = first.at + (0.3 if expected == "timeout" else 0.0)  # read timeout of the harness
    assert retry.at - answered_at >= 0.1 - EPS  # backoff_initial, not the 0.05 s period
    assert h.statuses[0].backoff_level == 1
    assert h.statuses[0].consecutive_failures == 1
    assert h.statuses[1].backoff_level == 0
    assert h.statuses[1].consecutive_failures == 0


@REAL_TIME
async def test_connection_refused(sim: YahooSimulator) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    h = Harness(sim, ["AAPL"], base_url=f"http://127.0.0.1:{port}")
    async with h.running():
        await h.until(lambda: len(h.polls) >= 2)
    assert set(h.errors()) == {"connection_failed"}
    assert h.statuses[1].backoff_level == 2


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (
            422,
            b'{"chart":{"result":null,"error":{"code":"Unprocessable Entity","description":"Invalid input"}}}',
            CHART_CONTENT_TYPE,
        ),
        (400, b"Bad Request", "text/plain"),
        (404, b"<html>Not Found</html>", "text/html"),  # no chart.error: a wrong base URL
        (404, b'{"finance":{"result":null,"error":{"code":"Not Found","description":"HTTP 404 Not Found"}}}', None),
    ],
)
async def test_our_bugs_are_loud_and_do_not_back_off(
    sim: YahooSimulator, caplog: pytest.LogCaptureFixture, status: int, body: bytes, content_type: str | None
) -> None:
    caplog.set_level(logging.DEBUG, logger="exporter.yahoo")
    sim.fail(status, body, content_type=content_type or CHART_CONTENT_TYPE, requests=2)
    h = Harness(sim, ["AAPL"], standby_interval=0.05)
    async with h.running():
        await h.until(lambda: len(h.prices()) >= 1)
    assert h.errors()[:3] == ["bad_request", "bad_request", None]
    assert all(s.backoff_level == 0 for s in h.statuses)
    assert sim.requests[2].at - sim.requests[0].at < 0.2  # two periods, no backoff
    records = [
        r for r in caplog.records if r.name == "exporter.yahoo" and getattr(r, "error_type", "") == "bad_request"
    ]
    assert [r.levelno for r in records] == [logging.ERROR, logging.DEBUG]  # loud once, then quiet
    assert getattr(records[0], "status", None) == status


async def test_backoff_grows_caps_and_resets(sim: YahooSimulator) -> None:
    sim.rate_limit(requests=4)
    h = Harness(sim, ["AAPL"], standby_interval=0.03, backoff_initial=0.05, backoff_max=0.15)
    async with h.running():
        await h.until(lambda: len(h.prices()) >= 3)
    assert h.errors()[:7] == ["rate_limited"] * 4 + [None] * 3
    spacing = gaps(h.times())
    for got, want in zip(spacing, [0.05, 0.1, 0.15, 0.15], strict=False):
        assert want - EPS <= got <= want + 0.08
    assert max(spacing[4:6]) < 0.03 + 0.03  # reset: back to the period
    assert [s.backoff_level for s in h.statuses[:5]] == [1, 2, 3, 4, 0]
    assert [s.consecutive_failures for s in h.statuses[:5]] == [1, 2, 3, 4, 0]
    assert h.statuses[0].backoff_until is not None
    assert h.statuses[4].backoff_until is None


@REAL_TIME
async def test_backoff_survives_a_thousand_source_failures_in_a_row(sim: YahooSimulator) -> None:
    """Past 1,024 failures in a row (85 h at the 300 s cap) ``2 ** n`` no longer fits a float: the backoff
    must stay at its cap and every failure be counted as what it is, not as a crash of ours."""
    sim.outage("503")
    h = Harness(sim, ["AAPL"], standby_interval=0.001, active_interval=0.001, backoff_initial=1e-6, backoff_max=1e-5)
    async with h.running():
        await h.until(lambda: len(h.statuses) >= 1_030, within=60.0)  # one status per poll, and cheap to count
    assert set(h.errors()) <= {"server_error", "timeout"}  # a loaded machine may time one out: also the source's
    assert [s.backoff_level for s in h.statuses] == list(range(1, len(h.statuses) + 1))


@REAL_TIME
async def test_backoff_jitter_stays_within_bounds(sim: YahooSimulator) -> None:
    sim.rate_limit(requests=4)
    h = Harness(sim, ["AAPL"], standby_interval=0.05, backoff_initial=0.1, backoff_max=0.1, backoff_jitter=0.5)
    async with h.running():
        await h.until(lambda: len(h.prices()) >= 1)
    spacing = gaps(h.times())[:4]
    assert all(0.05 - EPS <= g <= 0.15 + 0.08 for g in spacing)
    assert max(spacing) - min(spacing) > 0.005  # jittered, not a fixed beat


@REAL_TIME
async def test_backoff_is_source_wide_with_a_single_probe(sim: YahooSimulator) -> None:
    symbols = ["AAPL", "MSFT", "SPY"]
    h = Harness(sim, symbols, standby_interval=0.09, backoff_initial=0.05)
    async with h.running():
        await h.until(lambda: len(h.prices()) >= 3)
        sim.rate_limit(requests=3)
        await h.until(lambda: h.errors().count("rate_limited") == 3 and len(h.prices()) >= 6)
    statuses = [r.status for r in sim.requests]
    first_429 = statuses.index(429)
    limited = sim.requests[first_429 : first_429 + 4]
    assert [r.status for r in limited] == [429, 429, 429, 200]
    # Every symbol waits during the backoff; one probe at a time.
    for got, want in zip(gaps([r.at for r in limited]), [0.05, 0.1, 0.2], strict=True):
        assert got >= want - EPS
    assert h.errors().count("rate_limited") == 3


async def test_concurrent_failures_grow_the_backoff_once(sim: YahooSimulator) -> None:
    # Three requests are in flight together and all come back 429: one step of backoff, not three.
    sim.fail(429, RATE_LIMIT_BODY, requests=3, delay=0.15)
    h = Harness(sim, ["AAPL", "MSFT", "SPY"], standby_interval=0.06)
    async with h.running():
        await h.until(lambda: len(h.prices()) >= 1)
    assert h.errors()[:4] == ["rate_limited"] * 3 + [None]
    assert max(s.backoff_level for s in h.statuses) == 1
    assert [s.consecutive_failures for s in h.statuses[:4]] == [1, 2, 3, 0]


async def test_retry_after_seconds_is_a_floor(sim: YahooSimulator) -> None:
    sim.rate_limit(requests=1, retry_after="0.5")  # Yahoo would send whole seconds; the floor is the same
    h = Harness(sim, ["AAPL"], standby_interval=0.05, backoff_initial=0.05)
    async with h.running():
        await h.until(lambda: len(h.prices()) >= 1)
    assert h.errors()[:2] == ["rate_limited", None]
    assert 0.5 - EPS <= gaps(h.times())[0] < 0.8


async def test_retry_after_http_date_is_a_floor(sim: YahooSimulator) -> None:
    h = Harness(sim, ["AAPL"], standby_interval=0.05, backoff_initial=0.05)
    until = round(h.wall() + 1.0)  # HTTP dates have whole seconds: 0.5-1.5 s from now
    sim.server_error(503, requests=1, retry_after=email.utils.formatdate(until, usegmt=True))
    async with h.running():
        await h.until(lambda: len(h.prices()) >= 1)
    assert h.errors()[:2] == ["server_error", None]
    first, retry = sim.requests[:2]
    first_wall = h.wall() - (now() - first.at)
    assert retry.at - first.at >= until - first_wall - EPS  # not before the date
    assert retry.at - first.at < until - first_wall + 0.3


async def test_garbage_retry_after_is_ignored(sim: YahooSimulator) -> None:
    sim.rate_limit(requests=1, retry_after="soon-ish")
    h = Harness(sim, ["AAPL"], standby_interval=0.05)
    async with h.running():
        await h.until(lambda: len(h.prices()) >= 1)
    assert 0.1 - EPS <= gaps(h.times())[0] < 0.3  # the plain backoff


async def test_set_active_does_not_bypass_backoff(sim: YahooSimulator) -> None:
    sim.rate_limit(requests=1, retry_after=1)
    h = Harness(sim, ["AAPL"], standby_interval=0.05)
    async with h.running() as poller:
        await h.until(lambda: len(h.polls) == 1)
        poller.set_active(True)
        await asyncio.sleep(0.3)
        assert len(sim.requests) == 1
        assert poller.status().backoff_until is not None


# ---------------------------------------------------------------------------------------- unknown symbols


async def test_unknown_symbol_parked_and_retried_rarely(sim: YahooSimulator, market: Market) -> None:
    h = Harness(sim, ["AAPL", "NOPE"], standby_interval=0.04, unknown_retry=0.25)
    async with h.running() as poller:
        await h.until(lambda: len(h.times("NOPE")) >= 3, within=2.0)
        assert poller.status().parked_symbols.keys() == {"NOPE"}
        assert poller.parked_symbols == {"NOPE"}
        market.add_symbol("NOPE")  # it comes into existence
        await h.until(lambda: len(h.prices("NOPE")) >= 2, within=2.0)
        assert not poller.status().parked_symbols
    nope = h.times("NOPE")
    assert [r.status for r in sim.requests_for("NOPE")][:3] == [404, 404, 404]
    assert min(gaps(nope[:3])) >= 0.25 - EPS  # at most once per unknown_retry
    assert len(h.times("AAPL")) > 3 * len(nope[:3])  # the known symbol kept its own rate
    assert h.errors().count("unknown_symbol") == 3 + sum(1 for r in sim.requests_for("NOPE")[3:] if r.status == 404)
    assert all(s.backoff_level == 0 for s in h.statuses)  # an unknown symbol is not a source problem


async def test_parked_symbol_stays_parked_when_its_retry_fails(sim: YahooSimulator) -> None:
    h = Harness(sim, ["NOPE"], unknown_retry=0.2, backoff_initial=0.05)
    async with h.running():
        await h.until(lambda: len(h.polls) == 1)
        sim.rate_limit(requests=1)  # the retry meets a 429: it proves nothing about the symbol
        await h.until(lambda: len(h.polls) == 3)
    assert h.errors() == ["unknown_symbol", "rate_limited", "unknown_symbol"]
    spacing = gaps(h.times())
    assert spacing[0] >= 0.2 - EPS
    assert spacing[1] >= 0.2 - EPS  # not at the end of the 0.05 s backoff: still once per unknown_retry


async def test_oversized_body_is_refused(sim: YahooSimulator) -> None:
    h = Harness(sim, ["AAPL"], max_body_bytes=500)  # a chart answer is a few kB
    async with h.running():
        await h.until(lambda: len(h.polls) >= 1)
    assert h.errors()[0] == "bad_body"


async def test_millisecond_market_time_is_understood(sim: YahooSimulator) -> None:
    wall = shifted_wall(T_CLOSED)
    sim.clock = wall
    sim.freeze_time("AAPL", (T_CLOSED - 100) * 1000)  # ms where seconds belong
    h = Harness(sim, ["AAPL"], wall_clock=wall)
    async with h.running():
        await h.until(lambda: len(h.prices()) >= 1)
    assert h.prices()[0].ts_ns == (T_CLOSED - 100) * 10**9


async def test_unknown_symbol_only_is_not_a_success(sim: YahooSimulator) -> None:
    h = Harness(sim, ["NOPE"])
    async with h.running():
        await h.until(lambda: len(h.polls) >= 1)
    assert h.polls[0] == FallbackPoll(ok=False, period_s=0.2, error="unknown_symbol")
    assert h.poller.status().last_success_at is None


# ---------------------------------------------------------------------------------------- staleness


async def test_stale_price_in_session_not_emitted(sim: YahooSimulator) -> None:
    wall = shifted_wall(T_OPEN)
    sim.clock = wall  # the simulator serves the same (shifted) day as the poller sees
    sim.freeze_time("AAPL", T_OPEN - 3600)
    h = Harness(sim, ["AAPL", "MSFT"], standby_interval=0.1, stale_bound=120, wall_clock=wall)
    async with h.running():
        await h.until(lambda: len(h.times("AAPL")) >= 2 and len(h.prices("MSFT")) >= 2)
    assert not h.prices("AAPL")
    assert h.errors().count("stale_price") == len(h.times("AAPL"))
    assert all(s.backoff_level == 0 for s in h.statuses)
    assert h.prices("MSFT")[0].ts_ns // 10**9 >= T_OPEN


async def test_recent_enough_price_in_session_is_emitted(sim: YahooSimulator) -> None:
    wall = shifted_wall(T_OPEN)
    sim.clock = wall
    sim.freeze_time("AAPL", T_OPEN - 60)  # within max(2 x period, 120 s)
    h = Harness(sim, ["AAPL"], stale_bound=120, wall_clock=wall)
    async with h.running():
        await h.until(lambda: len(h.prices("AAPL")) >= 1)
    assert h.prices("AAPL")[0].ts_ns == (T_OPEN - 60) * 10**9


async def test_static_time_outside_session_is_normal(sim: YahooSimulator) -> None:
    wall = shifted_wall(T_CLOSED)
    sim.clock = wall
    sim.freeze_time("AAPL", T_CLOSED - 3 * 3600)  # the close, hours ago
    h = Harness(sim, ["AAPL"], wall_clock=wall)
    async with h.running():
        await h.until(lambda: len(h.prices("AAPL")) >= 1)
    assert h.errors()[0] is None
    assert h.prices("AAPL")[0].ts_ns == (T_CLOSED - 3 * 3600) * 10**9


# ---------------------------------------------------------------------------------------- feeds (CONTRACT §12)

# Sunday 2026-03-15 03:00 EDT: every stock session is closed, crypto trades on.
T_SUNDAY_NIGHT = int(datetime(2026, 3, 15, 7, 0, tzinfo=UTC).timestamp())
T_SESSION_START = int(datetime(2026, 3, 10, 13, 30, tzinfo=UTC).timestamp())  # the open of T_OPEN's session
OCC = "AAPL250117C00150000"


@pytest.fixture
async def feed_sim() -> AsyncIterator[YahooSimulator]:
    """A Yahoo simulator that knows Yahoo's spellings of a crypto pair and an option, and a stock."""
    async with YahooSimulator(Market(["BTC-USD", OCC, "AAPL"], seed=5)) as s:
        yield s


async def test_alpaca_symbols_are_asked_in_yahoos_spelling_and_emitted_in_alpacas(feed_sim: YahooSimulator) -> None:
    wall = shifted_wall(T_SUNDAY_NIGHT)
    feed_sim.clock = wall
    feed_sim.freeze_time("BTC-USD", T_SUNDAY_NIGHT - 5)
    h = Harness(feed_sim, ["BTC/USD"], yahoo_symbols={"BTC/USD": "BTC-USD"}, family="crypto", wall_clock=wall)
    async with h.running():
        await h.until(lambda: len(h.prices()) >= 2)
    assert {r.path for r in feed_sim.requests} == {"/v8/finance/chart/BTC-USD"}
    assert {p.symbol for p in h.prices()} == {"BTC/USD"}
    assert h.poller.status().symbols == ("BTC/USD",)
    assert set(h.errors()) == {None}


async def test_the_simulators_crypto_quote_is_fresh_at_3am_on_a_sunday() -> None:
    # No frozen quote: the simulator's own 24/7 crypto session keeps regularMarketTime moving at night.
    wall = shifted_wall(T_SUNDAY_NIGHT)
    async with YahooSimulator(Market(["BTC/USD"], seed=5), clock=wall) as sim:
        h = Harness(sim, ["BTC/USD"], yahoo_symbols={"BTC/USD": "BTC-USD"}, family="crypto", wall_clock=wall)
        async with h.running():
            await h.until(lambda: len(h.prices()) >= 1)
        assert {r.symbol for r in sim.requests} == {"BTC-USD"}
    assert h.errors()[0] is None
    assert abs(h.prices()[0].ts_ns / 1e9 - wall()) < 60


async def test_unmapped_symbols_are_asked_as_they_are(feed_sim: YahooSimulator) -> None:
    h = Harness(feed_sim, ["AAPL", OCC], yahoo_symbols={"MSFT": "MSFT.MX"})
    async with h.running():
        await h.until(lambda: {r.symbol for r in feed_sim.requests} >= {"AAPL", OCC})
    assert {r.symbol for r in feed_sim.requests} == {"AAPL", OCC}


@pytest.mark.parametrize("family", ["crypto", "stocks"])
async def test_a_fresh_price_at_night_on_a_sunday_is_emitted(feed_sim: YahooSimulator, family: str) -> None:
    wall = shifted_wall(T_SUNDAY_NIGHT)
    feed_sim.clock = wall
    feed_sim.freeze_time("BTC-USD", T_SUNDAY_NIGHT - 30)
    h = Harness(feed_sim, ["BTC/USD"], yahoo_symbols={"BTC/USD": "BTC-USD"}, family=family, wall_clock=wall)
    async with h.running():
        await h.until(lambda: len(h.polls) >= 1)
    assert h.errors()[0] is None
    assert h.prices()[0].ts_ns == (T_SUNDAY_NIGHT - 30) * 10**9


async def test_crypto_is_never_closed_an_old_price_at_night_is_stale(feed_sim: YahooSimulator) -> None:
    """Crypto trades 24/7: a price an hour old at 3 am on a Sunday is stale, where a stock's is the close."""
    wall = shifted_wall(T_SUNDAY_NIGHT)
    feed_sim.clock = wall
    feed_sim.freeze_time("BTC-USD", T_SUNDAY_NIGHT - 3600)
    crypto = Harness(feed_sim, ["BTC/USD"], yahoo_symbols={"BTC/USD": "BTC-USD"}, family="crypto", wall_clock=wall)
    async with crypto.running():
        await crypto.until(lambda: len(crypto.polls) >= 2)
    assert not crypto.prices()
    assert set(crypto.errors()) == {"stale_price"}
    assert all(s.backoff_level == 0 for s in crypto.statuses)  # a stale answer is not a sick source
    stocks = Harness(feed_sim, ["BTC-USD"], family="stocks", wall_clock=wall)
    async with stocks.running():
        await stocks.until(lambda: len(stocks.polls) >= 1)
    assert stocks.errors()[0] is None


@pytest.mark.parametrize(
    ("last_trade", "error"),
    [
        (T_OPEN - 3600, None),  # an hour ago, but in this session: an option's last trade
        (T_SESSION_START + 1, None),
        (T_SESSION_START - 60, "stale_price"),  # before the open: yesterday's price
        (T_SESSION_START - 20 * 3600, "stale_price"),
    ],
)
async def test_an_option_is_fresh_when_it_traded_in_this_session(
    feed_sim: YahooSimulator, last_trade: int, error: str | None
) -> None:
    wall = shifted_wall(T_OPEN)
    feed_sim.clock = wall
    feed_sim.freeze_time(OCC, last_trade)
    h = Harness(feed_sim, [OCC], family="options", wall_clock=wall)
    async with h.running():
        await h.until(lambda: len(h.polls) >= 1)
    assert h.errors()[0] == error
    assert [p.ts_ns for p in h.prices()] == ([] if error else [last_trade * 10**9])


async def test_an_option_out_of_session_is_emitted(feed_sim: YahooSimulator) -> None:
    wall = shifted_wall(T_CLOSED)
    feed_sim.clock = wall
    feed_sim.freeze_time(OCC, T_CLOSED - 20 * 3600)
    h = Harness(feed_sim, [OCC], family="options", wall_clock=wall)
    async with h.running():
        await h.until(lambda: len(h.polls) >= 1)
    assert h.errors()[0] is None


@pytest.mark.parametrize(
    ("feed", "symbols", "override", "family", "spelled"),
    [
        ("crypto", "BTC/USD,ETH/USD", "ETH/USD=ETH-USDT", "crypto", {"BTC/USD": "BTC-USD", "ETH/USD": "ETH-USDT"}),
        ("opra", OCC, "", "options", {OCC: OCC}),
        ("iex", "AAPL,BRK.B", "BRK.B=BRK-B", "stocks", {"AAPL": "AAPL", "BRK.B": "BRK-B"}),
    ],
)
def test_the_daemon_configures_the_poller_for_its_feed(
    feed: str, symbols: str, override: str, family: str, spelled: dict[str, str]
) -> None:
    settings = load_settings(env_file=None, alpaca_feed=feed, symbols=symbols, yahoo_symbols=override)
    config = yahoo_config(settings)
    assert (config.family, dict(config.yahoo_symbols), config.symbols) == (family, spelled, tuple(spelled))


# ---------------------------------------------------------------------------------------- counting, logs


@REAL_TIME
async def test_exact_counting_under_mixed_faults(sim: YahooSimulator) -> None:
    sim.add_unknown("SPY")
    sim.set_shape("MSFT", "null_price")
    h = Harness(sim, ["AAPL", "MSFT", "SPY"], standby_interval=0.06, backoff_initial=0.05, unknown_retry=0.3)
    async with h.running():
        await h.until(lambda: len(h.prices("AAPL")) >= 2)
        sim.rate_limit(requests=2)
        sim.server_error(502, requests=2)
        await h.until(lambda: len(h.prices("AAPL")) >= 4)
    by_status: dict[int, int] = {}
    for r in sim.requests:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    errors = h.errors()
    assert len(errors) == len(sim.requests) == h.poller.status().requests_total
    assert errors.count("rate_limited") == by_status[429] == 2
    assert errors.count("server_error") == by_status[502] == 2
    assert errors.count("unknown_symbol") == by_status[404]
    assert errors.count("no_price") == sum(1 for r in sim.requests_for("MSFT") if r.status == 200)
    assert errors.count(None) == len(h.prices()) == sum(1 for r in sim.requests_for("AAPL") if r.status == 200)
    assert sum(1 for e in h.events if isinstance(e, DependencyLatency)) == len(sim.requests)


async def test_logs_once_per_episode_without_cookies(sim: YahooSimulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="exporter")
    cookie = "A3=d=SECRETCOOKIEVALUE123&S=AQAAA; Path=/"
    sim.fail(429, RATE_LIMIT_BODY, headers={"Set-Cookie": cookie}, requests=3)
    h = Harness(sim, ["AAPL"], standby_interval=0.05, backoff_initial=0.03)
    async with h.running():
        await h.until(lambda: len(h.prices()) >= 2)
    ours = [r for r in caplog.records if r.name.startswith("exporter")]
    failing = [r for r in ours if r.getMessage() == "yahoo poll failing"]
    assert [r.levelno for r in failing] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert getattr(failing[0], "error_type", None) == "rate_limited"
    assert getattr(failing[0], "status", None) == 429
    assert getattr(failing[0], "symbol", None) == "AAPL"
    recovered = [r for r in ours if r.getMessage() == "yahoo recovered"]
    assert len(recovered) == 1
    assert recovered[0].levelno == logging.INFO
    assert getattr(recovered[0], "failures", None) == 3
    # The cookie came back on later requests, but no log line carries it or any header.
    assert "SECRETCOOKIEVALUE123" in sim.requests[-1].headers.get("Cookie", "")
    for record in ours:
        dump = repr(record.__dict__) + record.getMessage()
        assert "SECRETCOOKIEVALUE123" not in dump
        assert "Mozilla" not in dump


async def test_a_broken_consumer_does_not_stop_polling(sim: YahooSimulator, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Event] = []

    def emit(event: Event) -> None:
        seen.append(event)
        raise RuntimeError("consumer bug")

    config = YahooPollerConfig(base_url=sim.url, symbols=("AAPL",), standby_interval=0.03)
    poller = YahooPoller(config, emit)
    task = asyncio.create_task(poller.run())
    deadline = now() + 3
    while len(sim.requests) < 3:
        assert now() < deadline
        await asyncio.sleep(0.005)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await poller.aclose()
    assert sum(isinstance(e, FallbackPrice) for e in seen) >= 2
    assert any(r.getMessage() == "yahoo event consumer failed" for r in caplog.records)


async def test_run_can_be_cancelled_mid_request_and_restarted(sim: YahooSimulator) -> None:
    sim.slow(0.3, requests=2)
    h = Harness(sim, ["AAPL", "MSFT"], standby_interval=0.04, backoff_initial=0.05)
    first = asyncio.create_task(h.poller.run())
    await h.until(lambda: h.poller.status().in_flight == 2 and len(sim.requests) == 2)
    first.cancel()  # as a supervisor would, with requests in flight
    await asyncio.gather(first, return_exceptions=True)
    assert h.poller.status().in_flight == 0
    async with h.running():  # restarted: polls again, no phantom in-flight request
        await h.until(lambda: len(h.prices("AAPL")) >= 2 and len(h.prices("MSFT")) >= 2)
    assert not [p for p in h.polls if not p.ok]  # the cancelled requests were not counted as failures


async def test_no_symbols_idles_until_cancelled(sim: YahooSimulator) -> None:
    h = Harness(sim, [])
    async with h.running():
        await asyncio.sleep(0.1)
    assert not sim.requests
    assert not h.events


async def test_config_is_frozen_and_replaceable(sim: YahooSimulator) -> None:
    cfg = YahooPollerConfig(base_url=sim.url, symbols=("AAPL", "AAPL", " MSFT "))
    with pytest.raises(AttributeError):
        cfg.concurrency = 9  # type: ignore[misc]
    poller = YahooPoller(replace(cfg, concurrency=2), lambda e: None)
    assert poller.status().symbols == ("AAPL", "MSFT")  # trimmed, de-duplicated
    await poller.aclose()
    await poller.aclose()  # idempotent
