"""The Lease adapter (exporter/lease.py) against the Lease API simulator, in process: races, tokens, faults.

Timings are the defaults scaled down by five (lease 3 s, renew deadline 2 s, retry 0.4 s), on real time:
httpx resolves and connects in worker threads that a virtual clock would not wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exporter.lease import LeaseConfig, LeaseElector
from exporter.sim.lease_server import LeaseSimulator
from exporter.timers import LoopTimers

NS, NAME = "trading", "alpaca-exporter"
LEASE, DEADLINE, RETRY = 3.0, 2.0, 0.4

pytestmark = pytest.mark.timeout(30)


class Replica:
    """One elector with the daemon's two callbacks, recording what it was told to do."""

    def __init__(self, api: LeaseSimulator, identity: str, token_file: Path) -> None:
        config = LeaseConfig(api.url, NS, NAME, identity, LEASE, DEADLINE, RETRY, token_file)
        self.calls: list[str] = []
        self.elector = LeaseElector(config, LoopTimers(), self._leading, self._standby)
        self.task: asyncio.Task[None] | None = None

    def _leading(self) -> None:
        self.calls.append("lead")

    async def _standby(self, reason: str) -> None:
        self.calls.append(f"standby: {reason}")

    @property
    def leading(self) -> bool:
        return self.elector.election.is_leader


@contextlib.asynccontextmanager
async def replicas(api: LeaseSimulator, tmp_path: Path, *names: str) -> AsyncIterator[list[Replica]]:
    out = [Replica(api, name, tmp_path / f"token-{name}") for name in names]
    for replica in out:
        replica.task = asyncio.create_task(replica.elector.run())
    try:
        yield out
    finally:
        for replica in out:
            assert replica.task is not None
            replica.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replica.task
            await replica.elector.aclose()


async def until(predicate: object, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_of_two_racing_replicas_exactly_one_leads_and_the_loser_got_a_conflict_or_waited(
    tmp_path: Path,
) -> None:
    async with LeaseSimulator() as api, replicas(api, tmp_path, "a", "b") as (a, b):
        await until(lambda: a.leading or b.leading)
        await asyncio.sleep(5 * RETRY)
        assert [a.leading, b.leading].count(True) == 1
        leader = a if a.leading else b
        assert api.holder(NS, NAME) == leader.elector.config.identity
        assert leader.calls == ["lead"]
        assert [c.holder for c in api.holders(NS, NAME)] == [leader.elector.config.identity]


async def test_a_release_hands_over_at_the_next_retry(tmp_path: Path) -> None:
    async with LeaseSimulator() as api, replicas(api, tmp_path, "a") as (a,):
        await until(lambda: a.leading)
        assert a.task is not None
        a.task.cancel()
        await a.elector.release()
        assert api.lease(NS, NAME)["spec"]["holderIdentity"] == ""  # type: ignore[index]
        assert api.lease(NS, NAME)["spec"]["leaseDurationSeconds"] == 1  # type: ignore[index]
        async with replicas(api, tmp_path, "b") as (b,):
            await until(lambda: b.leading, within=RETRY * 2.2 + 0.5)
        assert api.lease(NS, NAME)["spec"]["leaseTransitions"] == 1  # type: ignore[index]


async def test_the_bearer_token_is_sent_from_the_file_and_none_without_one(tmp_path: Path) -> None:
    async with LeaseSimulator(tokens={"s3cr3t-token": "sa"}, anonymous_auth=False) as api:
        async with replicas(api, tmp_path, "nofile") as (nofile,):
            await asyncio.sleep(3 * RETRY)
            assert not nofile.leading
            assert nofile.elector.errors["http_401"] >= 1
        (tmp_path / "token-a").write_text("s3cr3t-token\n")
        async with replicas(api, tmp_path, "a") as (a,):
            await until(lambda: a.leading)
            assert "s3cr3t-token" not in str(a.elector.status())


async def test_a_rotated_token_file_is_read_again_at_once(tmp_path: Path) -> None:
    # The API still accepts the old token: only a re-read on change, not one on a 401, picks up the new.
    async with LeaseSimulator(tokens={"old": "old-user", "new": "new-user"}, anonymous_auth=False) as api:
        (tmp_path / "token-a").write_text("old")
        async with replicas(api, tmp_path, "a") as (a,):
            await until(lambda: a.leading)
            (tmp_path / "token-a").write_text("new-token-is-longer")
            api.tokens = {"old": "old-user", "new-token-is-longer": "new-user"}
            await until(lambda: api.stats.log[-1].user == "new-user", within=3 * RETRY + 1)
            assert a.leading
            assert a.calls == ["lead"]


async def test_a_rotated_token_is_read_again_after_a_401(tmp_path: Path) -> None:
    async with LeaseSimulator(tokens={"old": "sa"}, anonymous_auth=False) as api:
        (tmp_path / "token-a").write_text("old")
        async with replicas(api, tmp_path, "a") as (a,):
            await until(lambda: a.leading)
            (tmp_path / "token-a").write_text("new")
            assert api.tokens is not None
            api.tokens = {"new": "sa"}  # the kubelet rotated it; the old one is refused from now on
            await asyncio.sleep(DEADLINE + RETRY)
            assert a.leading
            assert a.calls == ["lead"]  # never stepped down


async def test_a_slow_api_makes_the_leader_step_down_at_its_deadline(tmp_path: Path) -> None:
    async with LeaseSimulator() as api, replicas(api, tmp_path, "a") as (a,):
        await until(lambda: a.leading)
        loop = asyncio.get_running_loop()
        api.slow(5.0)
        start = loop.time()
        await until(lambda: not a.leading, within=DEADLINE + 1.0)
        assert loop.time() - start <= DEADLINE + 0.3
        assert a.calls == ["lead", "standby: renew deadline passed"]
        assert a.elector.errors["timeout"] >= 1


async def test_server_errors_are_counted_and_survived(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "exporter.leader")
    async with LeaseSimulator() as api:
        api.fail(500, requests=3)
        async with replicas(api, tmp_path, "a") as (a,):
            await until(lambda: a.leading)
            assert a.elector.errors["http_500"] == 3
    lines = [r.getMessage() for r in caplog.records if "http_500" in r.getMessage()]
    assert len(lines) == 1  # once per episode, not per attempt


async def test_a_leader_whose_lease_was_taken_steps_down(tmp_path: Path) -> None:
    async with LeaseSimulator() as api, replicas(api, tmp_path, "a") as (a,):
        await until(lambda: a.leading)
        api.put_lease(NS, NAME, {"holderIdentity": "intruder", "leaseDurationSeconds": 60})
        await until(lambda: not a.leading, within=RETRY * 3)
        assert a.calls == ["lead", "standby: lease taken by intruder"]


async def test_a_whole_second_acquire_time_is_written_back_in_a_form_the_server_parses(tmp_path: Path) -> None:
    # The server stores MicroTimes with six digits; lightkube would write `...:00Z` back for this one.
    async with LeaseSimulator() as api:
        spec = {"holderIdentity": "a", "leaseDurationSeconds": 3, "acquireTime": "2026-12-06T23:00:00.000000Z"}
        api.put_lease(NS, NAME, spec)
        async with replicas(api, tmp_path, "a") as (a,):
            await until(lambda: a.leading)
            assert a.elector.errors["http_400"] == 0
        assert api.lease(NS, NAME)["spec"]["acquireTime"] == "2026-12-06T23:00:00.000001Z"  # type: ignore[index]


async def test_an_answer_that_is_not_a_kubernetes_object_is_a_failed_attempt(tmp_path: Path) -> None:
    from aiohttp import web

    async def proxy_error(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>Bad Gateway</html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy_error)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        config = LeaseConfig(f"http://127.0.0.1:{port}", NS, NAME, "a", LEASE, DEADLINE, RETRY, tmp_path / "none")
        calls: list[str] = []

        async def standby(reason: str) -> None:
            calls.append(reason)

        elector = LeaseElector(config, LoopTimers(), lambda: calls.append("lead"), standby)
        task = asyncio.create_task(elector.run())
        await until(lambda: elector.errors["http_502"] >= 2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await elector.aclose()
        assert calls == []
        assert not elector.election.is_leader
    finally:
        await runner.cleanup()
