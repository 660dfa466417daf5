"""Takeover times of an HA pair (issue 15): two daemon processes sharing one Alpaca key, one Alpaca
simulator allowing one connection per key, one Lease API simulator.

    python -m exporter_tools.takeover --rounds 5

Each round starts a fresh pair, waits for a leader that streams, then ends its leadership one of three
ways and measures the time until the standby streams: ``graceful`` (SIGTERM: the leader closes its
stream and releases the Lease), ``crash`` (SIGKILL: no close frame, so the standby waits for the lease
to expire and then for Alpaca's zombie slot), ``partition`` (the leader cannot reach the API server: it
steps down at its renew deadline, the standby takes over when the lease expires). Timings are the
defaults scaled down by five (lease 3 s, renew deadline 2 s, retry 0.4 s); the e2e tests
(tests/e2e/test_ha.py) use the same pair.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from exporter.sim.alpaca_server import AlpacaSimulator
from exporter.sim.lease_server import LeaseSimulator
from exporter.sim.market import Market
from exporter.sim.yahoo_server import YahooSimulator
from exporter_tools.processes import Proc, clean_environ, spawn

KEY = "PKHAPAIRKEY000000001"
SECRET = "ha-secret-0123456789abcdefghijkl"  # noqa: S105 - the simulator's own credential
LEASE, DEADLINE, RETRY = 3.0, 2.0, 0.4
ZOMBIE = 5.0  # a vanished connection keeps its slot this long: longer than the lease, as the real ~90 s is
NAMESPACE, LEASE_NAME = "trading", "alpaca-exporter"
TOKENS = {"token-of-a": "system:serviceaccount:trading:alpaca-exporter", "token-of-b": "system:serviceaccount:x"}


@dataclass
class Timeline:
    """The Alpaca simulator's open connections, sampled every 10 ms: proof that they never overlap."""

    alpaca: AlpacaSimulator
    most: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            active = self.alpaca.stats.active
            self.most = max(self.most, active)
            self.samples.append((loop.time(), active))
            await asyncio.sleep(0.01)


@dataclass
class Pair:
    alpaca: AlpacaSimulator
    api: LeaseSimulator
    timeline: Timeline
    procs: dict[str, Proc]
    ports: dict[str, int]

    async def metric(self, name: str, metric: str) -> float | None:
        async with httpx.AsyncClient() as http:
            try:
                text = (await http.get(f"http://127.0.0.1:{self.ports[name]}/metrics", timeout=2)).text
            except httpx.HTTPError:
                return None
        found = re.search(rf"^{re.escape(metric)} (\S+)$", text, flags=re.MULTILINE)
        return float(found.group(1)) if found else None

    async def streaming(self, name: str) -> bool:
        return await self.metric(name, 'alpaca_connection_status{state="Connected"}') == 1.0

    async def leader(self, within: float = 10.0) -> str:
        """The replica that holds the Lease and streams (waits for one)."""
        async with asyncio.timeout(within):
            while True:
                holder = self.api.holder(NAMESPACE, LEASE_NAME)
                if holder in self.procs and await self.streaming(holder):
                    return holder
                await asyncio.sleep(0.05)

    async def wait_streaming(self, name: str, within: float) -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with asyncio.timeout(within):
            while not await self.streaming(name):  # noqa: ASYNC110 - polls another process over HTTP
                await asyncio.sleep(0.02)
        return loop.time() - start


@contextlib.asynccontextmanager
async def ha_pair(tmp_path: Path) -> AsyncIterator[Pair]:
    market = Market(["AAPL", "MSFT"], seed=11)
    alpaca = AlpacaSimulator(market, credentials=(KEY, SECRET), rate=50.0, compression=None, zombie_hold=ZOMBIE)
    yahoo = YahooSimulator(market)
    api = LeaseSimulator(tokens=TOKENS, anonymous_auth=False)
    async with alpaca, yahoo, api:
        timeline = Timeline(alpaca)
        sampler = asyncio.create_task(timeline.run())
        procs: dict[str, Proc] = {}
        try:
            for name, token in (("a", "token-of-a"), ("b", "token-of-b")):
                token_file = tmp_path / f"token-{name}"
                token_file.write_text(token + "\n")
                env = clean_environ(
                    APCA_API_KEY_ID=KEY,
                    APCA_API_SECRET_KEY=SECRET,
                    EXPORTER_SYMBOLS="AAPL,MSFT",
                    EXPORTER_ALPACA_URL=alpaca.url("/v2/iex"),
                    EXPORTER_YAHOO_URL=yahoo.url,
                    EXPORTER_YAHOO_INTERVAL_SECONDS="0.3",
                    EXPORTER_YAHOO_STANDBY_INTERVAL_SECONDS="0.5",
                    EXPORTER_HOST="127.0.0.1",
                    EXPORTER_PORT="0",
                    EXPORTER_ALPACA_BACKOFF_MAX_SECONDS="0.3",
                    EXPORTER_ALPACA_CONNECTION_LIMIT_BACKOFF_SECONDS="0.3",
                    EXPORTER_MARKET_HOURS="always",
                    EXPORTER_LEADER_ELECTION="kubernetes",
                    EXPORTER_LEADER_ELECTION_NAMESPACE=NAMESPACE,
                    EXPORTER_LEADER_ELECTION_IDENTITY=name,
                    EXPORTER_LEADER_ELECTION_LEASE_SECONDS=str(LEASE),
                    EXPORTER_LEADER_ELECTION_RENEW_DEADLINE_SECONDS=str(DEADLINE),
                    EXPORTER_LEADER_ELECTION_RETRY_PERIOD_SECONDS=str(RETRY),
                    EXPORTER_KUBERNETES_API_URL=api.url,
                    EXPORTER_KUBERNETES_TOKEN_FILE=str(token_file),
                )
                procs[name] = await spawn(env, "run")
            ports = {name: await proc.started() for name, proc in procs.items()}
            yield Pair(alpaca, api, timeline, procs, ports)
        finally:
            for proc in procs.values():
                proc.kill()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.proc.wait(), 5)
            sampler.cancel()


def other(name: str) -> str:
    return "b" if name == "a" else "a"


async def takeover(scenario: str) -> tuple[float, int, int]:
    """One round: (seconds until the standby streams, most connections at once, 406 answers)."""
    with tempfile.TemporaryDirectory() as tmp:
        async with ha_pair(Path(tmp)) as pair:
            leader = await pair.leader()
            if scenario == "graceful":
                await pair.procs[leader].terminate(sig=signal.SIGTERM)
            elif scenario == "crash":
                pair.procs[leader].kill()
            else:
                pair.api.partition(f"token-of-{leader}", mode="hang")
            taken = await pair.wait_streaming(other(leader), within=LEASE + ZOMBIE + 10)
            return taken, pair.timeline.most, pair.alpaca.stats.errors_sent[406]


SCENARIOS = ("graceful", "crash", "partition")


async def measure(rounds: int) -> None:
    print(f"lease {LEASE:g} s, renew deadline {DEADLINE:g} s, retry {RETRY:g} s, Alpaca zombie hold {ZOMBIE:g} s")
    print("| scenario | rounds | min s | median s | max s | most connections | 406s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for scenario in SCENARIOS:
        results = [await takeover(scenario) for _ in range(rounds)]
        times = [r[0] for r in results]
        print(
            f"| {scenario} | {rounds} | {min(times):.2f} | {statistics.median(times):.2f} | {max(times):.2f} "
            f"| {max(r[1] for r in results)} | {sum(r[2] for r in results)} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter_tools.takeover", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    asyncio.run(measure(max(1, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
