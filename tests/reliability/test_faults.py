"""One test per network and upstream fault: the daemon keeps serving /metrics, the router takes the right
state within a stated bound, recovers by itself, counts exactly, and logs each episode once.

Bounds are stated in terms of the (shortened) settings of ``fast_settings`` (tests/support/stacks.py):
ping interval and timeout 0.5 s, handshake steps 1 s, reconnect backoff ≤ 0.4 s, 406 floor 0.5 s, failback 0.5 s. Each
bound carries ~1 s of slack; docs/reliability.md lists them.

The tests run on virtual loop time (``looptime``): the sockets are real, but whenever nothing but timers is
pending the loop's clock jumps to the next one. Every timer of the daemon, the simulators and the fault
proxy reads that clock, and so do the bounds (``Stack.wait_for``): a loaded machine cannot stretch them,
and waiting costs no wall time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import pytest

from exporter.core.router import State
from tests.support.stacks import Stack, records

ALPACA = "exporter.alpaca"
ROUTER = "exporter.router"
YAHOO = "exporter.yahoo"

pytestmark = pytest.mark.looptime


def transitions(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.previous_state, r.new_state) for r in records(caplog, ROUTER, "router state transition")]


def assert_one_line_per_transition(caplog: pytest.LogCaptureFixture, s: Stack) -> None:
    """The router logs each transition once: as many lines as the state actually changed."""
    seen = transitions(caplog)
    for (_a, b), (c, _d) in itertools.pairwise(seen):
        assert b == c, seen  # a chain: no transition logged twice, none missing
    assert seen[-1][1] == s.core.state.name


async def test_latency_and_jitter_keep_the_primary(rstack: Any, caplog: pytest.LogCaptureFixture) -> None:
    """120 ms ± 80 ms each way stays below the 0.5 s pong timeout: no state change, nothing lost."""
    async with rstack(proxy=True) as s:
        await s.healthy_start()
        assert s.proxy is not None
        caplog.clear()
        s.proxy.set_latency(0.12, jitter=0.08)
        before = s.core.received["alpaca"]
        await asyncio.sleep(1.2)  # more than two ping periods under latency
        await s.metrics()
        assert s.core.state is State.PRIMARY_ACTIVE
        assert s.core.received["alpaca"] > before  # data kept flowing, late
        assert s.core.errors["connection_lost"] == 0
        assert transitions(caplog) == []
        assert records(caplog, ALPACA, "alpaca connection ended") == []
        await s.settle_exact()


async def test_latency_beyond_the_pong_timeout_is_a_dead_link(rstack: Any, caplog: pytest.LogCaptureFixture) -> None:
    """1.5 s each way: a pong times out within ping interval + timeout (0.5 + 0.5 s), the link is dropped
    without a closing handshake, the router fails over within that second (plus slack), and the primary
    comes back by itself once latency is normal again."""
    async with rstack(proxy=True) as s:
        await s.healthy_start()
        assert s.proxy is not None
        caplog.clear()
        s.proxy.set_latency(1.5)
        took = await s.wait_state(State.FALLBACK_ACTIVE, timeout=5.0)
        assert took < 2.0
        await s.metrics()
        assert s.core.errors["connection_lost"] >= 1
        s.proxy.set_latency(0.0)
        await s.wait_state(State.PRIMARY_ACTIVE, timeout=8.0)
        s.assert_accounting()
        assert_one_line_per_transition(caplog, s)
        ended = records(caplog, ALPACA, "alpaca connection ended")
        assert len(ended) == s.daemon.alpaca.status.connection_attempts - 1  # one line per ended connection


async def test_bandwidth_limit_above_the_feed_rate_loses_nothing(rstack: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A 64 KB/s link carries a ~20 KB/s feed: the router stays on the primary and counts exactly."""
    async with rstack(proxy=True, rate=300.0) as s:
        await s.healthy_start()
        assert s.proxy is not None
        caplog.clear()
        s.proxy.set_bandwidth(64_000)
        await asyncio.sleep(1.5)
        await s.metrics()
        assert s.core.state is State.PRIMARY_ACTIVE
        assert transitions(caplog) == []
        await s.settle_exact()
        assert s.proxy.stats.bytes_down > 0


async def test_slow_consumer_is_disconnected_with_407_and_recovers(
    rstack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A link slower than the feed backs the server's buffer up until it gives up on us: it queues a 407
    and drops the connection. As with Alpaca ("407 may or may not be sent"), the 407 sits behind the
    backlog and is lost with it, so the client sees the connection lost: counted (slow_client if the
    frame made it, else connection_lost), failover, then recovery once the link is fast again."""
    async with rstack(
        proxy=True,
        proxy_recv_buffer=8192,
        rate=4000.0,
        batch_size=20,
        sim={"slow_client_limit": 32_000},
        alpaca_encoding="json",
        # Pongs queue behind the backlog on a saturated link: a long pong timeout lets the server's
        # verdict come first, as with Alpaca's real buffer.
        alpaca_ping_interval_seconds=5.0,
        alpaca_ping_timeout_seconds=10.0,
    ) as s:
        await s.healthy_start()
        assert s.proxy is not None
        caplog.clear()
        s.proxy.set_bandwidth(20_000)  # JSON at 4000 msg/s is ~400 KB/s: far beyond the link
        await s.wait_for(lambda: s.alpaca.stats.errors_sent[407] >= 1, 6.0, "the server gives up (407)")
        took = await s.wait_for(lambda: s.core.state is not State.PRIMARY_ACTIVE, 6.0, "failover")
        assert took < 5.0  # the proxy's backlog drains at 20 KB/s before the reset reaches us
        await s.metrics()
        assert s.core.errors["slow_client"] + s.core.errors["connection_lost"] >= 1
        s.proxy.set_bandwidth(None)
        await s.wait_state(State.PRIMARY_ACTIVE, timeout=6.0)
        s.assert_accounting()
        ended = records(caplog, ALPACA, "alpaca connection ended")
        assert len(ended) == s.daemon.alpaca.status.connection_attempts - 1  # one line per dropped connection
        assert_one_line_per_transition(caplog, s)


async def test_slow_client_error_frame_is_counted(rstack: Any, caplog: pytest.LogCaptureFixture) -> None:
    """When the 407 does arrive before the close, it is exported as slow_client and logged once."""
    async with rstack() as s:
        await s.healthy_start()
        caplog.clear()
        await s.alpaca.send_error(407, close=True)
        await s.wait_for(lambda: s.core.errors["slow_client"] == 1, 3.0, "slow_client counted")
        await s.wait_state(State.FALLBACK_ACTIVE, timeout=2.0)
        await s.metrics()
        await s.wait_state(State.PRIMARY_ACTIVE, timeout=4.0)
        assert len([r for r in records(caplog, ALPACA, "alpaca server error") if r.code == 407]) == 1
        s.assert_accounting()


async def test_tcp_reset_mid_frame(rstack: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A WebSocket frame torn in half by a TCP reset: connection_lost (not a decode error), failover in
    well under a second (the hot standby is healthy), reconnect and failback by themselves."""
    async with rstack(proxy=True, rate=1000.0, batch_size=20) as s:
        await s.healthy_start()
        assert s.proxy is not None
        caplog.clear()
        s.proxy.reset_mid_frame()
        took = await s.wait_state(State.FALLBACK_ACTIVE, timeout=3.0)
        assert took < 1.0
        await s.metrics()
        assert s.proxy.stats.resets == 1
        assert s.core.errors["connection_lost"] == 1
        assert s.core.errors["decode_error"] == 0  # the torn frame is never handed to the decoder
        await s.wait_state(State.PRIMARY_ACTIVE, timeout=4.0)
        s.assert_accounting()
        assert len(records(caplog, ALPACA, "alpaca connection ended", logging.WARNING)) == 1
        assert transitions(caplog) == [("PRIMARY_ACTIVE", "FALLBACK_ACTIVE"), ("FALLBACK_ACTIVE", "PRIMARY_ACTIVE")]
        await s.settle_exact(fresh_window=0.5)  # the new connection counts exactly, nothing twice


async def test_half_open_connection_is_detected_by_ping(rstack: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The link stops forwarding without FIN or RST (a NAT dropped it): no data, no pongs. The ping
    timeout finds it within ping_interval + ping_timeout (1 s) and drops the socket without a closing
    handshake, which could not complete: failover within 1 s (plus slack). Reconnects through the black hole time
    out in the handshake (1 s each) and count as connection_failed; the link heals and so does the
    router."""
    async with rstack(proxy=True) as s:
        await s.healthy_start()
        assert s.proxy is not None
        caplog.clear()
        s.proxy.blackhole(True)
        took = await s.wait_state(State.FALLBACK_ACTIVE, timeout=5.0)
        assert took < 2.0
        await s.metrics()
        assert s.core.errors["connection_lost"] == 1
        await s.wait_for(lambda: s.core.errors["connection_failed"] >= 1, 4.0, "a handshake through the hole")
        s.proxy.blackhole(False)
        await s.wait_state(State.PRIMARY_ACTIVE, timeout=6.0)
        assert_one_line_per_transition(caplog, s)
        assert transitions(caplog)[0] == ("PRIMARY_ACTIVE", "FALLBACK_ACTIVE")
        await s.settle_exact(fresh_window=0.3)


async def test_silent_socket_is_detected_by_the_staleness_timer(rstack: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The server answers pings but sends no data while the market is open: stale after 1 s, counted
    once per silent connection, the stream is reconnected and the router fails over; data resumes and
    the router fails back."""
    async with rstack(stale_after_seconds=1.0) as s:
        await s.healthy_start()
        caplog.clear()
        s.alpaca.set_mute(True)
        took = await s.wait_state(State.FALLBACK_ACTIVE, timeout=4.0)
        assert 0.9 < took < 2.0
        await s.metrics()
        assert s.core.errors["stale_stream"] >= 1
        await asyncio.sleep(1.5)  # silence goes on across the reconnect
        s.alpaca.set_mute(False)
        await s.wait_state(State.PRIMARY_ACTIVE, timeout=5.0)
        s.assert_accounting()
        stale_logs = records(caplog, ROUTER, "alpaca stream stale")
        assert len(stale_logs) == s.core.errors["stale_stream"]  # one line per silent connection, not per tick
        assert s.core.errors["stale_stream"] <= 3
        assert_one_line_per_transition(caplog, s)


async def test_406_storm_respects_the_connection_limit_floor(rstack: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A dropped connection's slot is held for 2.5 s: every reconnect meanwhile gets 406. The client waits
    at least the 0.5 s floor between attempts (no hot loop) and gets in once the slot is free."""
    async with rstack(alpaca_connection_limit_backoff_seconds=0.5) as s:
        await s.healthy_start()
        caplog.clear()
        s.alpaca.zombie_hold = 2.5
        await s.alpaca.drop_connections(hold_slot=True)
        await s.wait_for(lambda: s.core.errors["connection_limit_exceeded"] >= 1, 3.0, "a 406")
        await s.metrics()
        assert s.core.state is State.FALLBACK_ACTIVE
        took = await s.wait_state(State.PRIMARY_ACTIVE, timeout=8.0)
        assert took < 5.0
        n406 = s.core.errors["connection_limit_exceeded"]
        assert 1 <= n406 <= 2.5 / 0.5 + 1  # bounded by the floor
        ended = [
            r for r in records(caplog, ALPACA, "alpaca connection ended") if r.error_type == "connection_limit_exceeded"
        ]
        assert len(ended) == n406
        assert all(r.retry_in_seconds >= 0.5 for r in ended)
        s.assert_accounting()
        assert_one_line_per_transition(caplog, s)


async def test_http_429_storm_at_the_upgrade(rstack: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Every reconnect is refused with HTTP 429 (the field's reconnect-storm answer). The client waits at
    least the connection-limit floor (0.5 s here, 90 s by default) between attempts, never a hot loop."""
    async with rstack() as s:
        await s.healthy_start()
        caplog.clear()
        s.alpaca.refuse_connections(429)
        await s.alpaca.drop_connections(hold_slot=False)
        took = await s.wait_state(State.FALLBACK_ACTIVE, timeout=2.0)
        assert took < 1.0
        await asyncio.sleep(2.0)
        await s.metrics()
        refused = s.alpaca.stats.rejected[429]
        assert 1 <= refused <= 2.0 / 0.5 + 2
        s.alpaca.refuse_connections(None)
        await s.wait_state(State.PRIMARY_ACTIVE, timeout=4.0)
        ended = records(caplog, ALPACA, "alpaca connection ended")
        failed = [r for r in ended if r.error_type == "connection_failed"]
        assert len(failed) == s.alpaca.stats.rejected[429]  # one line per refused attempt...
        assert all(r.retry_in_seconds >= 0.5 for r in failed)  # ...each announcing the floor
        assert s.core.errors["connection_failed"] == s.alpaca.stats.rejected[429]
        s.assert_accounting()
        assert_one_line_per_transition(caplog, s)


@pytest.mark.parametrize("fault", ["429", "503", "html"])
async def test_yahoo_storm_backs_off_and_logs_once(rstack: Any, caplog: pytest.LogCaptureFixture, fault: str) -> None:
    """Yahoo answers 429 / 503 / an HTML outage page for 2 s while it is the active source. The poller
    backs off the whole source (0.3 s doubling to 1 s here), logs the episode once at WARNING and its end
    once at INFO; the router goes to BOTH_UNAVAILABLE within three poll periods and comes back alone."""
    async with rstack() as s:
        await s.healthy_start()
        s.alpaca.refuse_connections(503)
        await s.alpaca.drop_connections(hold_slot=False)
        await s.wait_state(State.FALLBACK_ACTIVE, timeout=2.0)
        caplog.clear()
        requests_before = len(s.yahoo.requests)
        if fault == "429":
            s.yahoo.rate_limit(seconds=2.0)
        elif fault == "503":
            s.yahoo.server_error(503, seconds=2.0)
        else:
            s.yahoo.html_outage(200, seconds=2.0)
        await s.wait_state(State.BOTH_UNAVAILABLE, timeout=3.0)
        # The fallback's health lapses three poll periods after its last success (the 0.5 s standby
        # period was in force then: the failover was a moment ago), and the router sees it on its next
        # tick (0.25 s). Timed on the core's clock from that success, so a slow test machine does not
        # move it; the upper bound leaves one more tick for a late ticker and tells 3 periods from 4.
        lapse = s.core.state_since - s.core.fallback_last_ok
        assert 3 * 0.5 < lapse <= 3 * 0.5 + 2 * 0.25
        assert (await s.http.get(s.base + "/readyz")).status_code == 503
        await s.metrics()
        await s.wait_state(State.FALLBACK_ACTIVE, timeout=4.0)
        storm_requests = len(s.yahoo.requests) - requests_before
        # Without a backoff, 3 symbols every 0.3 s would be ~25 requests in 2.5 s.
        assert storm_requests <= 14
        failing = records(caplog, YAHOO, "yahoo poll failing", logging.WARNING)
        assert len(failing) == 1
        assert len(records(caplog, YAHOO, "yahoo recovered", logging.INFO)) == 1
        kind = {"429": "rate_limited", "503": "server_error", "html": "bad_body"}[fault]
        assert failing[0].error_type == kind
        assert s.core.yahoo_errors[kind] >= 1
        s.assert_accounting()
        assert_one_line_per_transition(caplog, s)
        s.alpaca.refuse_connections(None)
        await s.wait_state(State.PRIMARY_ACTIVE, timeout=4.0)


async def test_unresolvable_host_is_a_connection_failure(rstack: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A stream host that does not resolve (DNS failure): the daemon starts anyway, serves /metrics, runs
    on the fallback, counts connection_failed with backoff (≤ 0.4 s here), and logs each attempt once."""
    async with rstack(alpaca_url="ws://alpaca-exporter-test.invalid:8765/v2/iex") as s:
        await s.wait_state(State.FALLBACK_ACTIVE, timeout=4.0)
        await asyncio.sleep(1.5)
        await s.metrics()
        attempts = s.daemon.alpaca.status.connection_attempts
        assert attempts >= 2
        assert attempts <= 1.5 / 0.2 + 4  # jittered backoff: at least base/2 between attempts
        assert s.core.errors["connection_failed"] >= attempts - 1
        ended = records(caplog, ALPACA, "alpaca connection ended")
        assert all("gaierror" in r.reason or "Name or service" in r.reason for r in ended), [r.reason for r in ended]
        assert len(ended) in (attempts - 1, attempts)
        assert s.core.failovers == 0  # it never had the primary: start-up is not a failover
        s.assert_accounting()


async def test_refused_port_then_recovery(rstack: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The endpoint stops listening (ECONNREFUSED) mid-session: failover at once, connection_failed per
    attempt, and the primary is back within backoff + failback once the port listens again."""
    async with rstack(proxy=True) as s:
        await s.healthy_start()
        assert s.proxy is not None
        caplog.clear()
        await s.proxy.refuse(True)
        await s.proxy.reset_all()
        took = await s.wait_state(State.FALLBACK_ACTIVE, timeout=2.0)
        assert took < 1.0
        await s.wait_for(lambda: s.core.errors["connection_failed"] >= 2, 3.0, "refused attempts")
        await s.metrics()
        reasons = [r.reason for r in records(caplog, ALPACA, "alpaca connection ended")]
        assert any("Connect call failed" in r or "Errno 111" in r or "refused" in r.lower() for r in reasons), reasons
        await s.proxy.refuse(False)
        took = await s.wait_state(State.PRIMARY_ACTIVE, timeout=4.0)
        assert took < 0.4 + 0.5 + 1.5
        assert_one_line_per_transition(caplog, s)
        await s.settle_exact(fresh_window=0.3)
