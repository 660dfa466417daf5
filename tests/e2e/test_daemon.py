"""The daemon over real sockets: failover, failback, total outage, exact counting, endpoints.

The daemon runs as configured, its own Yahoo poller included (``yahoo_backoff=None``)."""

from __future__ import annotations

import asyncio

import pytest

from exporter.core.router import State
from exporter.core.stats import MESSAGE_TYPES
from tests.support.stacks import running_stack


async def test_failover_within_seconds_and_failback_after_hysteresis() -> None:
    async with running_stack(failback_after_seconds=1.0, yahoo_backoff=None) as stack:
        await stack.wait_state(State.PRIMARY_ACTIVE)
        await stack.wait_for(lambda: stack.daemon.core.fallback_healthy(stack.daemon.core.clock.monotonic()))
        stack.alpaca.refuse_connections(503)
        await stack.alpaca.drop_connections(hold_slot=False)
        took = await stack.wait_state(State.FALLBACK_ACTIVE, timeout=3.0)
        assert took < 2.0
        core = stack.daemon.core
        assert core.failovers == 1
        assert core.errors["connection_lost"] >= 1
        assert (await stack.http.get(stack.base + "/readyz")).status_code == 200
        # Yahoo now polls at the active rate and its prices are routed.
        await stack.wait_for(lambda: core.routed["yahoo"] > 0, timeout=3.0)

        stack.alpaca.refuse_connections(None)
        await stack.wait_for(lambda: core.primary_healthy(core.clock.monotonic()), timeout=5.0)
        healthy_at = core.clock.monotonic()
        await stack.wait_state(State.PRIMARY_ACTIVE, timeout=5.0)
        assert core.clock.monotonic() - healthy_at >= 0.95  # the hysteresis held
        assert core.failovers == 1

        status = (await stack.http.get(stack.base + "/status")).json()
        assert status["router"]["state"] == "PRIMARY_ACTIVE"
        assert set(status["symbols"]) == {"AAPL", "MSFT", "SPY"}


async def test_both_unavailable_then_recovery() -> None:
    async with running_stack(yahoo_backoff=None) as stack:
        await stack.wait_state(State.PRIMARY_ACTIVE)
        core = stack.daemon.core
        # A healthy standby first: otherwise a poll still in flight when the outage starts can succeed
        # after the check below, and the primary's drop is then a failover, not a total outage.
        await stack.wait_for(lambda: core.fallback_healthy(core.clock.monotonic()))
        stack.yahoo.outage("503", seconds=30)
        # The fallback's health lapses three standby periods after its last success.
        await stack.wait_for(lambda: not core.fallback_healthy(core.clock.monotonic()), 4)
        stack.alpaca.refuse_connections(503)
        await stack.alpaca.drop_connections(hold_slot=False)
        await stack.wait_state(State.BOTH_UNAVAILABLE, timeout=3.0)
        assert (await stack.http.get(stack.base + "/readyz")).status_code == 503
        assert (await stack.http.get(stack.base + "/healthz")).status_code == 200
        metrics = (await stack.http.get(stack.base + "/metrics")).text
        assert 'datasource_router_state{state="BOTH_UNAVAILABLE"} 2.0' in metrics

        stack.alpaca.refuse_connections(None)
        await stack.wait_state(State.PRIMARY_ACTIVE, timeout=5.0)
        assert (await stack.http.get(stack.base + "/readyz")).status_code == 200
        assert core.failovers == 0  # never reached the fallback during this outage


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
async def test_exact_counting_end_to_end(encoding: str) -> None:
    async with running_stack(rate=3000.0, batch_size=20, alpaca_encoding=encoding, yahoo_backoff=None) as stack:
        core = stack.daemon.core
        await stack.wait_state(State.PRIMARY_ACTIVE)
        await stack.wait_for(lambda: core.received["alpaca"] > 2000, timeout=5.0)
        stack.alpaca.set_mute(True)
        sent = stack.alpaca.stats.messages_sent
        await stack.wait_for(lambda: core.received["alpaca"] >= sent, timeout=3.0)
        await asyncio.sleep(0.1)
        counts = core.message_counts()
        data = sum(n for kind, n in counts.items() if kind not in ("control", "unknown"))
        assert data == stack.alpaca.stats.messages_sent == core.received["alpaca"]
        acc = core.accounting()["alpaca"]
        assert acc["routed"] + acc["standby"] + acc["rejected"] == acc["received"]
        assert stack.daemon.queue.dropped == 0
        # Control messages: connected, authenticated and the subscription ack at least.
        assert counts["control"] >= 3
        assert sum(counts[k] for k in MESSAGE_TYPES if k in ("trade", "quote")) == data


async def test_endpoints_and_metrics_content_negotiation() -> None:
    async with running_stack(yahoo_backoff=None) as stack:
        await stack.wait_state(State.PRIMARY_ACTIVE)
        text = await stack.http.get(stack.base + "/metrics")
        assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "alpaca_messages_received_total" in text.text
        om = await stack.http.get(stack.base + "/metrics", headers={"Accept": "application/openmetrics-text"})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.rstrip().endswith("# EOF")
        landing = await stack.http.get(stack.base + "/")
        assert "/metrics" in landing.text


async def test_a_crashing_task_is_logged_counted_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    async with running_stack(yahoo_backoff=None) as stack:
        await stack.wait_state(State.PRIMARY_ACTIVE)
        calls = 0
        restarted = asyncio.Event()

        async def flaky() -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("boom")
            restarted.set()
            await asyncio.Event().wait()

        supervised = asyncio.create_task(stack.daemon._supervise("probe", flaky))
        try:
            await asyncio.wait_for(restarted.wait(), 5)
        finally:
            supervised.cancel()
            await asyncio.gather(supervised, return_exceptions=True)
        assert stack.daemon.task_restarts["probe"] == 1
        crash = [r for r in caplog.records if "task probe crashed" in r.getMessage()]
        assert len(crash) == 1
        assert crash[0].exc_info is not None
        # The rest of the daemon never noticed.
        assert stack.daemon.core.state is State.PRIMARY_ACTIVE
