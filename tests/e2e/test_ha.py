"""An HA pair: two real daemon processes, one Alpaca simulator that allows one connection per key, one
Lease API simulator. Only the leader may hold the stream; takeovers never overlap two connections.

The pair is the takeover tool's (exporter_tools/takeover.py): timings are the defaults (15 s lease, 10 s
renew deadline, 2 s retry) scaled down by five, keeping their ratios.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest
import yaml

from exporter_tools.takeover import DEADLINE, LEASE, LEASE_NAME, NAMESPACE, RETRY, ZOMBIE, ha_pair, other
from tests.support import REPO
from tests.support.prometheus import running_prometheus
from tests.support.promql import RULE_FILES

pytestmark = pytest.mark.timeout(60)


async def test_exactly_one_leader_holds_the_stream_and_the_standby_serves(tmp_path: Path) -> None:
    async with ha_pair(tmp_path) as pair:
        leader = await pair.leader()
        standby = other(leader)
        await asyncio.sleep(4 * RETRY)  # several renewals and standby attempts
        assert await pair.metric(leader, "alpaca_exporter_leader") == 1.0
        assert await pair.metric(standby, "alpaca_exporter_leader") == 0.0
        assert not await pair.streaming(standby)
        # The standby serves its metrics with a warm fallback: Yahoo prices for both symbols.
        assert await pair.metric(standby, 'datasource_router_last_price{source="yahoo",symbol="AAPL"}') is not None
        async with httpx.AsyncClient() as http:
            status = (await http.get(f"http://127.0.0.1:{pair.ports[standby]}/status")).json()
        assert status["leader_election"]["role"] == "standby"
        assert status["leader_election"]["holder"] == leader
        assert "token" not in str(status["leader_election"]).lower()
        assert pair.timeline.most == 1
        assert pair.alpaca.stats.errors_sent[406] == 0
        holders = [c.holder for c in pair.api.holders(NAMESPACE, LEASE_NAME)]
        assert holders == [leader]


async def test_sigterm_of_the_leader_hands_over_within_the_retry_period_without_406(tmp_path: Path) -> None:
    async with ha_pair(tmp_path) as pair:
        leader = await pair.leader()
        standby = other(leader)
        await pair.procs[leader].terminate(sig=signal.SIGTERM)
        taken = await pair.wait_streaming(standby, within=LEASE)
        # The lease is released, so the standby needs one (jittered) retry period, not the lease duration.
        assert taken < RETRY * 2.2 + 1.0
        assert pair.alpaca.stats.errors_sent[406] == 0
        assert pair.alpaca.stats.last_client_close_code == 1000  # the leader closed its stream properly
        assert pair.timeline.most == 1
        holders = [c.holder for c in pair.api.holders(NAMESPACE, LEASE_NAME)]
        assert holders == [leader, "", standby]


async def test_sigkill_of_the_leader_the_standby_takes_over_after_the_lease_and_the_406_floor(
    tmp_path: Path,
) -> None:
    async with ha_pair(tmp_path) as pair:
        leader = await pair.leader()
        standby = other(leader)
        pair.procs[leader].kill()
        taken = await pair.wait_streaming(standby, within=LEASE + ZOMBIE + 5)
        # The lease expires first; then the dead stream's slot is still held (406) until the zombie
        # hold ends: the standby waits that out on the fallback, never holding a second connection.
        assert ZOMBIE <= taken <= ZOMBIE + 1.5
        assert pair.alpaca.stats.errors_sent[406] >= 1
        assert pair.timeline.most == 1
        assert [c.holder for c in pair.api.holders(NAMESPACE, LEASE_NAME)] == [leader, standby]


async def test_a_leader_cut_off_from_the_api_steps_down_before_its_lease_expires(tmp_path: Path) -> None:
    async with ha_pair(tmp_path) as pair:
        leader = await pair.leader()
        standby = other(leader)
        loop = asyncio.get_running_loop()
        pair.api.partition(f"token-of-{leader}", mode="hang")
        cut = loop.time()
        taken = await pair.wait_streaming(standby, within=LEASE + 5)
        # The leader closed its stream at its renew deadline, before the standby could take the lease.
        stepped = pair.procs[leader].events("leader_stepped_down")
        assert [e["reason"] for e in stepped] == ["renew deadline passed"]
        closed_at = next(t for t, active in pair.timeline.samples if t > cut and active == 0)
        change = pair.api.holders(NAMESPACE, LEASE_NAME)[-1]
        assert change.holder == standby
        assert closed_at < change.at
        assert DEADLINE - RETRY - 0.2 <= closed_at - cut <= DEADLINE + 0.5
        assert taken <= LEASE + RETRY * 2.2 + 1.5
        assert pair.alpaca.stats.errors_sent[406] == 0
        assert pair.timeline.most == 1
        assert await pair.metric(leader, "alpaca_exporter_leader") == 0.0
        assert await pair.metric(leader, "alpaca_exporter_leader_transitions_total") == 2.0


async def test_with_the_api_down_for_both_the_leader_streams_only_until_its_deadline(tmp_path: Path) -> None:
    async with ha_pair(tmp_path) as pair:
        leader = await pair.leader()
        standby = other(leader)
        loop = asyncio.get_running_loop()
        await pair.api.refuse(True)
        cut = loop.time()
        await asyncio.sleep(LEASE + 2.0)
        closed_at = next(t for t, active in pair.timeline.samples if t > cut and active == 0)
        assert closed_at - cut <= DEADLINE + 0.5
        assert not await pair.streaming(leader)
        assert not await pair.streaming(standby)
        assert pair.alpaca.stats.authenticated == 1  # nobody reconnected
        # The API returns: one of them leads again and streams.
        await pair.api.refuse(False)
        assert await pair.leader(within=LEASE + 3) in ("a", "b")
        assert pair.timeline.most == 1


async def test_a_prometheus_scraping_the_pair_sees_one_leader_and_no_symptom_of_the_standby(tmp_path: Path) -> None:
    """The pair scraped by a real Prometheus with the rules loaded: every alert expression, evaluated
    live without its `for`, names no standby, although the standby really is disconnected and on the
    fallback (the ungated expression finds it)."""
    alerts = [r for g in yaml.safe_load((REPO / "config/alerts.yml").read_text())["groups"] for r in g["rules"]]
    async with ha_pair(tmp_path) as pair:
        leader = await pair.leader()
        standby = f"127.0.0.1:{pair.ports[other(leader)]}"
        targets = [f"127.0.0.1:{port}" for port in pair.ports.values()]
        with running_prometheus(targets, tmp_path / "prom", rule_files=RULE_FILES) as prom:
            query = prom.query

            async def value(expr: str) -> list[dict[str, object]]:
                return await asyncio.to_thread(query, expr)  # the simulators run on this loop

            async with asyncio.timeout(30):
                # Both targets scraped, and the standby on its fallback.
                while not (
                    await value("count(alpaca_exporter_leader) == 2")
                    and await value('datasource_router_state{state="FALLBACK_ACTIVE"} == 1')
                ):
                    await asyncio.sleep(0.5)
            assert [s["metric"]["instance"] for s in await value("alpaca_exporter_leader == 0")] == [standby]
            assert float((await value("sum(alpaca_exporter_leader)"))[0]["value"][1]) == 1.0
            ungated = await value('alpaca_connection_status{state="Connected"} == 0')
            assert standby in {s["metric"]["instance"] for s in ungated}
            for rule in alerts:
                fired = await value(rule["expr"])
                assert standby not in {s["metric"].get("instance") for s in fired}, rule["alert"]
                if rule["alert"] in ("AlpacaExporterNoLeader", "AlpacaExporterSplitBrain"):
                    assert fired == [], rule["alert"]


async def test_the_takeover_tool_measures_a_round() -> None:
    from exporter_tools.takeover import takeover

    taken, most, refused = await takeover("graceful")
    assert 0 < taken < RETRY * 2.2 + 1.0
    assert (most, refused) == (1, 0)
