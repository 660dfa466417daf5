"""The benchmark command: ``alpaca-exporter bench [--quick] [--out DIR]`` (method: docs/performance.md).

One process — this one, the *driver* — pre-generates the feeds, runs the product's Alpaca simulator on
loopback and streams the feeds; every contender runs in a fresh interpreter (a *worker*:
``python -m exporter_tools.bench --worker SPEC``), so its imports, RSS and warm-up are its own and the
simulator's sending cost lands on the driver's core, not the contender's.

Contenders (throughput: the same pre-generated feed, streamed as fast as the consumer reads):

- ``exporter_msgpack`` / ``exporter_json``: the real :class:`~exporter.app.Daemon` — client, decode,
  EventQueue, router task, core (validation, breaker, routing, every catalogue metric), web server;
- ``exporter_msgpack_nometrics``: the same with ``CoreConfig(metrics=False)`` (what monitoring costs);
- ``exporter_msgpack_scraped``: the same while the driver scrapes ``/metrics`` every second;
- ``sdk_default`` / ``sdk_raw``: alpaca-py's ``StockDataStream`` with a no-op handler, parsed models
  and ``raw_data=True``.

The crypto run (``crypto_exporter_msgpack`` vs ``crypto_sdk_raw``, alpaca-py's ``CryptoDataStream`` with
``raw_data=True``) streams a crypto feed on the crypto path: one order book snapshot per pair, then trades
(fractional sizes, taker sides) and order book deltas (levels set and removed), msgpack.

Contenders run interleaved (rotated each repetition); every ratio is taken within one repetition and
the table shows medians. Then: scrape cost at 50/500/5,000 symbols (render CPU of our renderer and of
the client library's generic ``generate_latest``, HTTP round trip, body size) and per-message latency
with the feed paced at half of the measured maximum rate.

Measurement hooks in the exporter workers wrap ``Core.handle`` (one call per frame): the first data
frame's socket-read time starts the clock, the frame completing the feed stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import random
import statistics
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from exporter.core.messages import EPOCH
from exporter_tools import require

# The SDK worker imports alpaca-py and the charts need matplotlib, both late in a run: fail at the start.
require("alpaca", "matplotlib")

# The driver's own imports stay light; workers import what their contender needs.

KEY, SECRET = "PKBENCHMARK000000001", "bench-secret-not-a-real-one"
BATCH = 100
THROUGHPUT_SYMBOLS = 500
SCRAPE_SYMBOL_COUNTS = (50, 500, 5000)
# Prometheus' 1 s. The feed lasts ~0.6 s at the exporter's rate, and the first scrape comes at a quarter
# of the interval, so every scraped run holds exactly one scrape: its cost is measured as that of ~1.6
# scrapes a second, an upper bound on the 1 s interval's.
SCRAPE_INTERVAL_S = 1.0

EXPORTER_CONTENDERS = (
    "exporter_msgpack",
    "exporter_json",
    "exporter_msgpack_nometrics",
    "exporter_msgpack_scraped",
)
SDK_CONTENDERS = ("sdk_raw", "sdk_default")
CONTENDERS = EXPORTER_CONTENDERS + SDK_CONTENDERS
CRYPTO_CONTENDERS = ("crypto_exporter_msgpack", "crypto_sdk_raw")
CRYPTO_PATH = "/v1beta3/crypto/us"
CRYPTO_PAIRS = 50
CRYPTO_TRADE_SHARE = 0.3  # the rest are order book deltas, the bulk of a crypto stream

# The targets, as (description, ratio/limit) pairs checked in ``_targets``.
TARGETS = {
    "msgpack_vs_sdk_raw": 1.5,
    "msgpack_vs_sdk_default": 5.0,
    "json_vs_msgpack": 0.8,
    "metrics_on_vs_off": 0.9,
    "scraped_vs_unscraped": 0.95,
    "scrape_cpu_ms_500": 10.0,
    "scrape_5000_s": 1.0,
    "rss_mib_500": 50.0,
    "p99_processing_us": 100.0,
}


@dataclass(frozen=True)
class Plan:
    n_messages: int
    repetitions: int
    scrape_counts: tuple[int, ...]
    scrape_renders: int
    latency_messages: int
    worker_timeout: float
    quick: bool
    contenders: tuple[str, ...] = CONTENDERS
    crypto_messages: int = 0  # 0: no crypto run


def plan_for(quick: bool) -> Plan:
    if quick:
        return Plan(
            n_messages=3_000,
            repetitions=1,
            scrape_counts=(50,),
            scrape_renders=3,
            latency_messages=2_000,
            worker_timeout=60.0,
            quick=True,
            crypto_messages=2_000,
        )
    return Plan(
        n_messages=500_000,
        repetitions=5,
        scrape_counts=SCRAPE_SYMBOL_COUNTS,
        scrape_renders=21,
        latency_messages=200_000,
        worker_timeout=300.0,
        quick=False,
        crypto_messages=300_000,
    )


def bench_symbols(n: int) -> list[str]:
    """``n`` distinct ticker-like symbols (deterministic), like a real watch list of that size."""
    rng = random.Random(n)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out: dict[str, None] = {}
    while len(out) < n:
        out["".join(rng.choice(letters) for _ in range(rng.choice((3, 4, 4, 4))))] = None
    return list(out)


def crypto_pairs(n: int) -> list[str]:
    """``n`` distinct crypto pairs against USD (deterministic): ``ABC/USD``."""
    return [f"{base}/USD" for base in bench_symbols(n)]


# ==================================================================================================
# Worker side: one contender in a fresh interpreter. Talks to the driver in JSON lines on stdout.


def _say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB, from /proc (Linux)."""
    now = peak = 0.0
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                now = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return now, peak


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[k])


@dataclass
class _Meter:
    """Counts data messages as frames complete; timestamps the first frame and the last."""

    expected: int
    count: int = 0
    t0: float | None = None
    t1: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    processing_us: array[float] = field(default_factory=lambda: array("d"))  # per message, per frame
    frame_latency_us: array[float] = field(default_factory=lambda: array("d"))  # socket read -> routed

    def result(self) -> dict[str, Any]:
        assert self.t0 is not None
        assert self.t1 is not None
        seconds = self.t1 - self.t0
        out: dict[str, Any] = {
            "messages": self.count,
            "seconds": seconds,
            "rate": self.count / seconds if seconds > 0 else float("nan"),
        }
        if self.processing_us:
            proc = sorted(self.processing_us)
            lat = sorted(self.frame_latency_us)
            out["processing_us"] = {"p50": _percentile(proc, 0.5), "p99": _percentile(proc, 0.99)}
            out["frame_latency_us"] = {"p50": _percentile(lat, 0.5), "p99": _percentile(lat, 0.99)}
        return out


async def _exporter_worker(spec: dict[str, Any]) -> None:
    from exporter.app import Daemon, quiet_libraries
    from exporter.core.events import Event, PrimaryData
    from exporter.core.router import Core, State
    from exporter.metrics import build_registry
    from exporter.settings import load_settings

    quiet_libraries()
    symbols: list[str] = spec["symbols"]
    settings = load_settings(
        env_file=None,
        apca_api_key_id=KEY,
        apca_api_secret_key=SECRET,
        symbols=",".join(symbols),
        alpaca_url=spec["url"],
        alpaca_feed=spec.get("feed", "iex"),
        alpaca_channels=spec.get("channels", "trades,quotes"),
        alpaca_encoding=spec["encoding"],
        yahoo_enabled=False,
        stale_after_seconds=0,
        market_hours="always",
        max_symbol_series=max(500, len(symbols)),
        host="127.0.0.1",
        port=0,
        log_level="WARNING",
    )
    # The feed was generated before the run; replaying it as if live keeps its timestamps fresh (the
    # age check passes as it would on a live stream, latencies are queueing delays, not the feed's age):
    # each frame re-anchors the clock so that the frame was read the instant its newest message was
    # stamped. (Anchoring once at the start let ages grow with the gap between the feed's nominal rate
    # and the consumer's, to hundreds of ms — not what a live stream looks like.)
    clock = ReplayClock()
    daemon = Daemon(settings, clock=clock)
    if not spec.get("metrics", True):
        daemon.core = Core(dataclasses.replace(daemon.core.config, metrics=False), daemon.clock)
        daemon.registry = build_registry(daemon.core, daemon.queue.stats)
    core = daemon.core
    meter = _Meter(spec["expected"])
    record_latency = bool(spec.get("latency", False))
    anchoring = False  # from the feed's start on
    handle = core.handle
    monotonic = time.monotonic
    proc, lat = meter.processing_us, meter.frame_latency_us

    def measured_handle(event: Event) -> Any:
        if type(event) is not PrimaryData:
            return handle(event)
        assert isinstance(event, PrimaryData)
        if anchoring and event.messages:
            newest = getattr(event.messages[-1], "t", None)
            if newest is not None:
                clock.anchor(newest, event.received_at)
        started = monotonic()
        effects = handle(event)
        n = len(event.messages)
        if record_latency:
            ended = monotonic()
            proc.append((event.decode_seconds + ended - started) * 1e6 / n)
            lat.append((ended - event.received_at) * 1e6)
        if meter.t0 is None:
            meter.t0 = event.received_at
        meter.count += n
        if meter.count >= meter.expected and meter.t1 is None:
            meter.t1 = monotonic()
            meter.done.set()
        return effects

    setattr(core, "handle", measured_handle)  # noqa: B010 - an instance attribute shadows the method
    runner = asyncio.create_task(daemon.run())
    await daemon.wait_started()
    async with asyncio.timeout(30):
        while core.state is not State.PRIMARY_ACTIVE:  # noqa: ASYNC110 - the core has no event to await
            await asyncio.sleep(0.01)
    clock.replay_from(spec["feed_start_ns"])
    anchoring = True
    _say(ready=True, port=daemon.port)
    async with asyncio.timeout(spec["timeout"]):
        await meter.done.wait()
    result = meter.result()
    result["rss_mib"], result["peak_rss_mib"] = _rss_mib()
    result["latency_histogram"] = _latency_summary(core)
    result["accounting"] = core.accounting()["alpaca"]
    result["rejected"] = {k: v for k, v in core.rejected.items() if v}
    result["dropped_frames"] = daemon.queue.dropped
    if spec.get("scrape_renders"):
        result["scrape"] = await _measure_scrapes(daemon, spec["scrape_renders"])
    _say(result=result)
    daemon.stop()
    async with asyncio.timeout(10):
        await runner


_MICROSECOND = timedelta(microseconds=1)


class ReplayClock:
    """The system clock, with wall time shifted so that a pre-generated feed reads as live from
    :meth:`replay_from` on (monotonic time is untouched)."""

    def __init__(self) -> None:
        self.offset_ns = 0

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ns(self) -> int:
        return time.time_ns() - self.offset_ns

    def replay_from(self, feed_start_ns: int) -> None:
        self.offset_ns = time.time_ns() - feed_start_ns

    def anchor(self, stamped: datetime, read_at_monotonic: float) -> None:
        """Shift wall time so that ``stamped`` is the wall time at ``read_at_monotonic``."""
        stamped_ns = (stamped - EPOCH) // _MICROSECOND * 1000
        read_at_ns = time.time_ns() - int((time.monotonic() - read_at_monotonic) * 1e9)
        self.offset_ns = read_at_ns - stamped_ns


def _latency_summary(core: Any) -> dict[str, Any]:
    """The exporter's own alpaca_message_latency_seconds, summed over symbols (a sanity check)."""
    counts = [0] * (len(core.other.latency.counts))
    total = 0.0
    for series in (*core.series.values(), core.other):
        hist = series.latency_histogram()
        for i, n in enumerate(hist.counts):
            counts[i] += n
        total += hist.sum
    return {"bounds": list(core.other.latency.bounds), "counts": counts, "sum": total}


async def _measure_scrapes(daemon: Any, renders: int) -> dict[str, Any]:
    """Render CPU of our /metrics (both formats), of the library's generic exposition, and HTTP GETs."""
    import httpx
    from prometheus_client import generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as untyped_openmetrics

    generate_openmetrics = cast(Callable[[Any], bytes], untyped_openmetrics)

    def cpu_ms(fn: Callable[[], bytes], repeat: int) -> tuple[float, float, int]:
        cpu: list[float] = []
        wall: list[float] = []
        size = 0
        for _ in range(repeat):
            c, w = time.process_time(), time.perf_counter()
            size = len(fn())
            cpu.append((time.process_time() - c) * 1000)
            wall.append((time.perf_counter() - w) * 1000)
        return statistics.median(cpu), statistics.median(wall), size

    text = "text/plain; version=0.0.4"
    om = "application/openmetrics-text; version=1.0.0"
    out: dict[str, Any] = {}
    for name, fn in (
        ("text", lambda: daemon.render_metrics(text)[0]),
        ("openmetrics", lambda: daemon.render_metrics(om)[0]),
        ("generic_text", lambda: generate_latest(daemon.registry)),
        ("generic_openmetrics", lambda: generate_openmetrics(daemon.registry)),
    ):
        # The generic encoders take ~1 s at 5,000 symbols: fewer repeats keep the run short.
        cpu, wall, size = cpu_ms(fn, renders if not name.startswith("generic") else max(3, renders // 4))
        out[name] = {"cpu_ms": cpu, "wall_ms": wall, "bytes": size}
    samples = sum(
        1 for line in daemon.render_metrics(text)[0].decode().splitlines() if line and not line.startswith("#")
    )
    out["samples"] = samples
    http_ms: list[float] = []
    from exporter.app import METRICS_CACHE_SECONDS

    async with httpx.AsyncClient() as client:
        for _ in range(min(renders, 7)):
            # Past the shared-render window, so every GET renders (what a real scrape interval sees).
            await asyncio.sleep(METRICS_CACHE_SECONDS + 0.05)
            started = time.perf_counter()
            response = await client.get(f"http://127.0.0.1:{daemon.port}/metrics", headers={"Accept": text})
            http_ms.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    out["http_ms"] = statistics.median(http_ms)
    return out


async def _sdk_worker(spec: dict[str, Any]) -> None:
    from alpaca.data.live.crypto import CryptoDataStream
    from alpaca.data.live.stock import StockDataStream

    crypto = spec.get("feed") == "crypto"
    stream: StockDataStream | CryptoDataStream
    if crypto:
        stream = CryptoDataStream(KEY, SECRET, raw_data=spec["raw"], url_override=spec["url"])
    else:
        stream = StockDataStream(KEY, SECRET, raw_data=spec["raw"], url_override=spec["url"])
    meter = _Meter(spec["expected"])
    monotonic = time.monotonic

    async def on_message(_message: Any) -> None:  # the no-op handler, plus the meter
        if meter.t0 is None:
            meter.t0 = monotonic()
        meter.count += 1
        if meter.count >= meter.expected:
            meter.t1 = monotonic()
            meter.done.set()

    stream.subscribe_trades(on_message, *spec["symbols"])
    if isinstance(stream, CryptoDataStream):
        stream.subscribe_orderbooks(on_message, *spec["symbols"])
    else:
        stream.subscribe_quotes(on_message, *spec["symbols"])
    task = asyncio.create_task(stream._run_forever())
    _say(ready=True, port=None)
    async with asyncio.timeout(spec["timeout"]):
        await meter.done.wait()
    result = meter.result()
    result["rss_mib"], result["peak_rss_mib"] = _rss_mib()
    _say(result=result)
    # alpaca-py only notices stop_ws() after its next frame, and with its task cancelled asyncio.run's
    # shutdown still waits ~10 s on its websocket: leave at once instead (its socket and threads go with
    # the process, the driver closes the server's side); nothing of ours is pending.
    task.cancel()
    os._exit(0)


def worker_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    if spec["kind"] == "sdk":
        asyncio.run(_sdk_worker(spec))  # leaves the process with os._exit
    asyncio.run(_exporter_worker(spec))
    return 0


# ==================================================================================================
# Driver side.


@dataclass
class Run:
    contender: str
    repetition: int
    result: dict[str, Any]
    scrapes: list[dict[str, float]] = field(default_factory=list)


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr: list[str] = []
        assert proc.stderr is not None
        self._drain = asyncio.create_task(self._drain_stderr(proc.stderr))

    async def _drain_stderr(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            if len(self.stderr) < 200:
                self.stderr.append(line.decode(errors="replace").rstrip())

    async def message(self, limit: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(limit):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    tail = "\n".join(self.stderr[-20:])
                    raise RuntimeError(f"worker ended without an answer (rc {await self.proc.wait()}):\n{tail}")
                with contextlib.suppress(ValueError):
                    msg = json.loads(line)
                    if isinstance(msg, dict):
                        return msg

    async def finish(self, limit: float = 15.0) -> None:
        try:
            async with asyncio.timeout(limit):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()  # only this worker, which we started
            await self.proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self._drain


class Driver:
    def __init__(self, plan: Plan, log: Callable[[str], None]) -> None:
        self.plan = plan
        self.log = log

    async def run(self) -> dict[str, Any]:
        from exporter.sim.alpaca_server import AlpacaSimulator, generate_feed
        from exporter.sim.market import Market

        plan = self.plan
        symbols = bench_symbols(THROUGHPUT_SYMBOLS)
        started = time.perf_counter()
        # Every feed starts at this wall time; exporter workers replay it as live (ReplayClock).
        self.feed_start_ns = t0 = time.time_ns()
        feeds = {
            enc: generate_feed(
                symbols, plan.n_messages, batch=BATCH, encoding=enc, trade_ratio=0.5, seed=7, start_ns=t0
            )
            for enc in ("msgpack", "json")
        }
        scrape_symbols = {n: bench_symbols(n) for n in plan.scrape_counts}
        scrape_feeds = {
            n: generate_feed(syms, max(10_000, 20 * n), batch=BATCH, encoding="msgpack", seed=11, start_ns=t0)
            for n, syms in scrape_symbols.items()
        }
        latency_feed = (
            feeds["msgpack"]
            if plan.latency_messages >= plan.n_messages
            else generate_feed(symbols, plan.latency_messages, batch=BATCH, encoding="msgpack", seed=13, start_ns=t0)
        )
        self.log(f"feeds generated in {time.perf_counter() - started:.1f}s")
        sim = AlpacaSimulator(
            Market(symbols, seed=7),
            credentials=(KEY, SECRET),
            rate=0,
            compression=None,  # permessage-deflate costs the sender ~7x; both consumers read plain frames
            connection_limit=1,
            zombie_hold=0,
            ping_interval=None,
            ping_timeout=None,
            max_size=2**22,
        )
        runs: list[Run] = []
        async with sim:
            self.sim = sim
            for rep in range(plan.repetitions):
                names = plan.contenders
                order = list(names[rep % len(names) :] + names[: rep % len(names)])
                for contender in order:
                    run = await self._throughput(contender, rep, symbols, feeds)
                    runs.append(run)
                    self.log(
                        f"rep {rep + 1}/{plan.repetitions} {contender:28s} "
                        f"{run.result['rate']:>10,.0f} msg/s  rss {run.result['rss_mib']:.1f} MiB"
                    )
                for n in plan.scrape_counts:
                    run = await self._scrape_sizes(n, rep, scrape_symbols[n], scrape_feeds[n])
                    runs.append(run)
                    s = run.result["scrape"]
                    self.log(
                        f"rep {rep + 1}/{plan.repetitions} scrape {n:>5} symbols: "
                        f"{s['text']['cpu_ms']:.2f} ms cpu (generic {s['generic_text']['cpu_ms']:.1f} ms), "
                        f"{s['text']['bytes']:,} bytes"
                    )
            max_rate = statistics.median(r.result["rate"] for r in runs if r.contender == "exporter_msgpack")
            for rep in range(plan.repetitions):
                run = await self._latency(rep, symbols, latency_feed, max_rate / 2)
                runs.append(run)
                r = run.result
                self.log(
                    f"rep {rep + 1}/{plan.repetitions} latency at {max_rate / 2:,.0f} msg/s: processing p50 "
                    f"{r['processing_us']['p50']:.2f} µs p99 {r['processing_us']['p99']:.2f} µs"
                )
            if plan.crypto_messages:
                await self._crypto_runs(runs)
        return summarise(plan, runs, feeds, max_rate)

    async def _crypto_runs(self, runs: list[Run]) -> None:
        plan = self.plan
        pairs = crypto_pairs(CRYPTO_PAIRS)
        from exporter.sim.alpaca_server import generate_feed

        feed = generate_feed(
            pairs,
            plan.crypto_messages,
            batch=BATCH,
            encoding="msgpack",
            trade_ratio=CRYPTO_TRADE_SHARE,
            seed=17,
            start_ns=self.feed_start_ns,
        )
        for rep in range(plan.repetitions):
            names = CRYPTO_CONTENDERS
            for contender in names[rep % len(names) :] + names[: rep % len(names)]:
                common = {"path": CRYPTO_PATH, "feed": "crypto", "channel": "orderbooks"}
                if contender == "crypto_sdk_raw":
                    spec = self._spec("sdk", pairs, feed.messages, raw=True, **common)
                else:
                    spec = self._spec(
                        "exporter", pairs, feed.messages, encoding="msgpack", channels="trades,orderbooks", **common
                    )
                result, _ = await self._consume(spec, feed)
                result["feed_counts"] = dict(feed.counts)
                runs.append(Run(contender, rep, result))
                self.log(
                    f"rep {rep + 1}/{plan.repetitions} {contender:28s} "
                    f"{result['rate']:>10,.0f} msg/s  rss {result['rss_mib']:.1f} MiB"
                )

    # ---- one worker ----------------------------------------------------------------------------
    async def _spawn(self, spec: dict[str, Any]) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "exporter_tools.bench",
            "--worker",
            json.dumps(spec),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        return _Worker(proc)

    async def _subscribed(self, symbols: Sequence[str], channel: str) -> None:
        sim = self.sim
        wanted = set(symbols)

        def ready() -> bool:
            sessions = sim.sessions
            return len(sessions) == 1 and sessions[0].authenticated and set(sessions[0].subs.get(channel, {})) == wanted

        async with asyncio.timeout(60):
            await sim.wait_until(ready)

    async def _sessions_gone(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self.sim.wait_until(lambda: not self.sim.sessions)
        for session in self.sim.sessions:  # a consumer that exited without closing (alpaca-py)
            with contextlib.suppress(Exception):
                await session.conn.close()

    async def _consume(
        self,
        spec: dict[str, Any],
        frames: Sequence[str | bytes],
        *,
        pace: float | None = None,
        scrape: bool = False,
    ) -> tuple[dict[str, Any], list[dict[str, float]]]:
        await self._sessions_gone()
        worker = await self._spawn(spec)
        scrapes: list[dict[str, float]] = []
        try:
            ready = await worker.message(60)
            await self._subscribed(spec["symbols"], spec["channel"])
            sender = asyncio.create_task(self._send(frames, pace))
            scraper = asyncio.create_task(self._scraper(ready["port"], scrapes)) if scrape else None
            answer = await worker.message(self.plan.worker_timeout)
            if scraper is not None:
                scraper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scraper
            async with asyncio.timeout(30):
                await sender
        finally:
            await worker.finish()
            await self._sessions_gone()
        if "result" not in answer:
            raise RuntimeError(f"unexpected worker answer: {answer}")
        result: dict[str, Any] = answer["result"]
        return result, scrapes

    async def _send(self, frames: Sequence[str | bytes], pace: float | None) -> None:
        sim = self.sim
        if pace is None:
            await sim.send_feed(frames)
            return
        # Paced: every ~0.5 ms, send the frames that are due (messages per second = pace).
        loop = asyncio.get_running_loop()
        per_frame = BATCH / pace
        start = loop.time()
        sent = 0
        while sent < len(frames):
            due = min(len(frames), int((loop.time() - start) / per_frame) + 1)
            if due > sent:
                await sim.send_feed(list(frames[sent:due]))
                sent = due
            await asyncio.sleep(0.0005)

    async def _scraper(self, port: int, scrapes: list[dict[str, float]]) -> None:
        import httpx

        async with httpx.AsyncClient() as client:
            await asyncio.sleep(SCRAPE_INTERVAL_S / 4)
            while True:
                started = time.perf_counter()
                response = await client.get(
                    f"http://127.0.0.1:{port}/metrics",
                    headers={"Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"},
                )
                took = time.perf_counter() - started
                scrapes.append({"seconds": took, "bytes": len(response.content), "status": response.status_code})
                await asyncio.sleep(max(0.0, SCRAPE_INTERVAL_S - took))

    # ---- the three kinds of run ----------------------------------------------------------------
    def _spec(
        self, kind: str, symbols: Sequence[str], expected: int, *, path: str = "/v2/iex", **extra: Any
    ) -> dict[str, Any]:
        return {
            "kind": kind,
            "url": self.sim.url(path),
            "channel": "quotes",  # the last one subscribed: the driver starts the feed once it is
            "symbols": list(symbols),
            "expected": expected,
            "timeout": self.plan.worker_timeout,
            "feed_start_ns": self.feed_start_ns,
            **extra,
        }

    async def _throughput(self, contender: str, rep: int, symbols: Sequence[str], feeds: dict[str, Any]) -> Run:
        encoding = "json" if contender == "exporter_json" else "msgpack"
        feed = feeds[encoding]
        n = feed.messages
        if contender.startswith("sdk"):
            spec = self._spec("sdk", symbols, n, raw=contender == "sdk_raw")
        else:
            spec = self._spec(
                "exporter", symbols, n, encoding=encoding, metrics=contender != "exporter_msgpack_nometrics"
            )
        result, scrapes = await self._consume(spec, feed, scrape=contender == "exporter_msgpack_scraped")
        return Run(contender, rep, result, scrapes)

    async def _scrape_sizes(self, n: int, rep: int, symbols: Sequence[str], feed: Any) -> Run:
        spec = self._spec(
            "exporter", symbols, feed.messages, encoding="msgpack", scrape_renders=self.plan.scrape_renders
        )
        result, _ = await self._consume(spec, feed)
        return Run(f"scrape_{n}", rep, result)

    async def _latency(self, rep: int, symbols: Sequence[str], feed: Any, rate: float) -> Run:
        spec = self._spec("exporter", symbols, feed.messages, encoding="msgpack", latency=True)
        result, _ = await self._consume(spec, feed, pace=rate)
        result["offered_rate"] = rate
        return Run("latency_half_load", rep, result)


# ==================================================================================================
# Summary, table, files.


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(plan: Plan, runs: list[Run], feeds: dict[str, Any], max_rate: float) -> dict[str, Any]:
    by: dict[str, list[Run]] = {}
    for run in runs:
        by.setdefault(run.contender, []).append(run)

    def per_rep(name: str, key: str) -> dict[int, float]:
        return {r.repetition: float(r.result[key]) for r in by.get(name, [])}

    contenders: dict[str, Any] = {}
    for name in CONTENDERS:
        rates = [r.result["rate"] for r in by.get(name, [])]
        rss = [r.result["rss_mib"] for r in by.get(name, [])]
        contenders[name] = {
            "rate_median": _median(rates),
            "rates": rates,
            "rss_mib_median": _median(rss),
            "peak_rss_mib_median": _median([r.result["peak_rss_mib"] for r in by.get(name, [])]),
        }
    for name in EXPORTER_CONTENDERS:
        runs_of = by.get(name, [])
        contenders[name]["accounting"] = runs_of[-1].result.get("accounting") if runs_of else None
        contenders[name]["rejected"] = runs_of[-1].result.get("rejected") if runs_of else None
        contenders[name]["dropped_frames"] = max((r.result.get("dropped_frames", 0) for r in runs_of), default=0)
    scrapes_during = [s for r in by.get("exporter_msgpack_scraped", []) for s in r.scrapes]
    contenders["exporter_msgpack_scraped"]["scrapes"] = len(scrapes_during)
    contenders["exporter_msgpack_scraped"]["scrape_seconds_median"] = _median([s["seconds"] for s in scrapes_during])

    def ratio(a: str, b: str) -> dict[str, Any]:
        ra, rb = per_rep(a, "rate"), per_rep(b, "rate")
        values = [ra[k] / rb[k] for k in sorted(ra) if k in rb and rb[k] > 0]
        return {"median": _median(values), "per_repetition": values}

    ratios = {
        "msgpack_vs_sdk_raw": ratio("exporter_msgpack", "sdk_raw"),
        "msgpack_vs_sdk_default": ratio("exporter_msgpack", "sdk_default"),
        "json_vs_msgpack": ratio("exporter_json", "exporter_msgpack"),
        "json_vs_sdk_raw": ratio("exporter_json", "sdk_raw"),
        "metrics_on_vs_off": ratio("exporter_msgpack", "exporter_msgpack_nometrics"),
        "scraped_vs_unscraped": ratio("exporter_msgpack_scraped", "exporter_msgpack"),
        "sdk_raw_vs_sdk_default": ratio("sdk_raw", "sdk_default"),
    }

    scrape: dict[str, Any] = {}
    for n in plan.scrape_counts:
        rs = [r.result["scrape"] for r in by.get(f"scrape_{n}", [])]
        if not rs:
            continue
        entry: dict[str, Any] = {"samples": rs[-1]["samples"], "http_ms": _median([s["http_ms"] for s in rs])}
        for fmt in ("text", "openmetrics", "generic_text", "generic_openmetrics"):
            entry[fmt] = {
                "cpu_ms": _median([s[fmt]["cpu_ms"] for s in rs]),
                "wall_ms": _median([s[fmt]["wall_ms"] for s in rs]),
                "bytes": rs[-1][fmt]["bytes"],
            }
        scrape[str(n)] = entry

    lat_runs = by.get("latency_half_load", [])
    latency = {
        "offered_rate": max_rate / 2,
        "achieved_rate_median": _median([r.result["rate"] for r in lat_runs]),
        "processing_us_p50": _median([r.result["processing_us"]["p50"] for r in lat_runs]),
        "processing_us_p99": _median([r.result["processing_us"]["p99"] for r in lat_runs]),
        "frame_latency_us_p50": _median([r.result["frame_latency_us"]["p50"] for r in lat_runs]),
        "frame_latency_us_p99": _median([r.result["frame_latency_us"]["p99"] for r in lat_runs]),
        "rss_mib_median": _median([r.result["rss_mib"] for r in lat_runs]),
    }
    summary: dict[str, Any] = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "method": {
            "messages_per_feed": feeds["msgpack"].messages,
            "frame_messages": BATCH,
            "symbols": THROUGHPUT_SYMBOLS,
            "trade_share": 0.5,
            "repetitions": plan.repetitions,
            "quick": plan.quick,
            "scrape_interval_s": SCRAPE_INTERVAL_S,
            "feed_bytes": {enc: sum(len(f) for f in feed) for enc, feed in feeds.items()},
        },
        "contenders": contenders,
        "ratios": ratios,
        "scrape": scrape,
        "latency": latency,
    }
    crypto_runs = {name: by.get(name, []) for name in CRYPTO_CONTENDERS}
    if any(crypto_runs.values()):
        crypto_rates = {name: per_rep(name, "rate") for name in CRYPTO_CONTENDERS}
        ours, theirs = crypto_rates["crypto_exporter_msgpack"], crypto_rates["crypto_sdk_raw"]
        per_rep_ratio = [ours[k] / theirs[k] for k in sorted(ours) if k in theirs and theirs[k] > 0]
        exporter_runs = crypto_runs["crypto_exporter_msgpack"]
        summary["crypto"] = {
            "pairs": CRYPTO_PAIRS,
            "messages_per_feed": plan.crypto_messages + CRYPTO_PAIRS,
            "feed_counts": next((r.result["feed_counts"] for runs_ in crypto_runs.values() for r in runs_), {}),
            "contenders": {
                name: {
                    "rate_median": _median([r.result["rate"] for r in rs]),
                    "rates": [r.result["rate"] for r in rs],
                    "rss_mib_median": _median([r.result["rss_mib"] for r in rs]),
                }
                for name, rs in crypto_runs.items()
            },
            "exporter_vs_sdk_raw": {"median": _median(per_rep_ratio), "per_repetition": per_rep_ratio},
            "accounting": exporter_runs[-1].result.get("accounting") if exporter_runs else None,
            "rejected": exporter_runs[-1].result.get("rejected") if exporter_runs else None,
        }
    summary["targets"] = _targets(summary)
    return summary


def _targets(s: dict[str, Any]) -> list[dict[str, Any]]:
    r = s["ratios"]
    out: list[dict[str, Any]] = []

    def add(name: str, what: str, value: float, limit: float, higher_is_better: bool) -> None:
        met = value >= limit if higher_is_better else value <= limit
        out.append({"name": name, "target": what, "value": value, "limit": limit, "met": bool(met)})

    add("msgpack_vs_sdk_raw", "exporter msgpack ≥ 1.5× alpaca-py raw", r["msgpack_vs_sdk_raw"]["median"], 1.5, True)
    add(
        "msgpack_vs_sdk_default",
        "exporter msgpack ≥ 5× alpaca-py default",
        r["msgpack_vs_sdk_default"]["median"],
        5.0,
        True,
    )
    add("json_vs_msgpack", "JSON within 20 % of msgpack (≥ 0.8×)", r["json_vs_msgpack"]["median"], 0.8, True)
    add("metrics_on_vs_off", "metrics on ≥ 0.9× metrics off", r["metrics_on_vs_off"]["median"], 0.9, True)
    add("scraped_vs_unscraped", "scrapes every second cost ≤ 5 %", r["scraped_vs_unscraped"]["median"], 0.95, True)
    if "500" in s["scrape"]:
        add("scrape_cpu_ms_500", "scrape at 500 symbols ≤ 10 ms CPU", s["scrape"]["500"]["text"]["cpu_ms"], 10.0, False)
    if "5000" in s["scrape"]:
        worst = max(s["scrape"]["5000"]["text"]["wall_ms"], s["scrape"]["5000"]["http_ms"])
        add("scrape_5000_s", "scrape at 5,000 symbols well inside 1 s (ms)", worst, 1000.0, False)
    add(
        "rss_mib_500",
        "RSS with 500 symbols ≤ 50 MiB",
        s["contenders"]["exporter_msgpack"]["rss_mib_median"],
        50.0,
        False,
    )
    add(
        "p99_processing_us",
        "p99 per-message processing at half load < 100 µs",
        s["latency"]["processing_us_p99"],
        100.0,
        False,
    )
    return out


LABELS = {
    "exporter_msgpack": "exporter, msgpack",
    "exporter_json": "exporter, JSON",
    "exporter_msgpack_nometrics": "exporter, msgpack, metrics off",
    "exporter_msgpack_scraped": "exporter, msgpack, scraped 1/s",
    "sdk_raw": "alpaca-py raw_data=True",
    "sdk_default": "alpaca-py default (models)",
    "crypto_exporter_msgpack": "exporter, crypto, msgpack",
    "crypto_sdk_raw": "alpaca-py CryptoDataStream raw_data=True",
}


def render_table(s: dict[str, Any]) -> str:
    """The Markdown table of medians and same-run ratios (printed, and embedded in docs/performance.md)."""
    c = s["contenders"]
    raw = s["ratios"]
    lines = [
        "| contender | msgs/s (median) | × alpaca-py raw | × alpaca-py default | RSS MiB (end) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in CONTENDERS:
        per_raw = _ratio_of(s, name, "sdk_raw")
        per_default = _ratio_of(s, name, "sdk_default")
        lines.append(
            f"| {LABELS[name]} | {c[name]['rate_median']:,.0f} | {per_raw:.2f} | {per_default:.2f} "
            f"| {c[name]['rss_mib_median']:.1f} |"
        )
    lines += [
        "",
        "| same-run ratio (median of per-repetition ratios) | value |",
        "|---|---:|",
    ]
    for key, value in raw.items():
        lines.append(f"| {key.replace('_', ' ')} | {value['median']:.3f} |")
    if s["scrape"]:
        lines += [
            "",
            "| symbols | samples | body bytes (text) | our render CPU ms | OpenMetrics CPU ms "
            "| generic generate_latest CPU ms | generic OpenMetrics CPU ms | HTTP GET ms |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n, e in s["scrape"].items():
            lines.append(
                f"| {int(n):,} | {e['samples']:,} | {e['text']['bytes']:,} | {e['text']['cpu_ms']:.2f} "
                f"| {e['openmetrics']['cpu_ms']:.2f} | {e['generic_text']['cpu_ms']:.2f} "
                f"| {e['generic_openmetrics']['cpu_ms']:.2f} | {e['http_ms']:.2f} |"
            )
    if "crypto" in s:
        cr = s["crypto"]
        counts = cr["feed_counts"]
        lines += [
            "",
            f"Crypto ({cr['pairs']} pairs, {cr['messages_per_feed']:,} messages: {counts.get('t', 0):,} trades, "
            f"{counts.get('o', 0):,} order book updates incl. one snapshot per pair; msgpack):",
            "",
            "| contender | msgs/s (median) | × alpaca-py raw | RSS MiB (end) |",
            "|---|---:|---:|---:|",
        ]
        for name, c_ in cr["contenders"].items():
            per_raw = cr["exporter_vs_sdk_raw"]["median"] if name == "crypto_exporter_msgpack" else 1.0
            lines.append(f"| {LABELS[name]} | {c_['rate_median']:,.0f} | {per_raw:.2f} | {c_['rss_mib_median']:.1f} |")
    lat = s["latency"]
    lines += [
        "",
        f"Half load ({lat['offered_rate']:,.0f} msgs/s offered): per-message processing p50 "
        f"{lat['processing_us_p50']:.2f} µs, p99 {lat['processing_us_p99']:.2f} µs; whole frame "
        f"({BATCH} messages) from socket read to routed p50 {lat['frame_latency_us_p50']:.0f} µs, "
        f"p99 {lat['frame_latency_us_p99']:.0f} µs.",
        "",
        "| target | value | met |",
        "|---|---:|:---:|",
    ]
    for t in s["targets"]:
        lines.append(f"| {t['target']} | {t['value']:.3g} | {'yes' if t['met'] else '**no**'} |")
    return "\n".join(lines)


def _ratio_of(s: dict[str, Any], a: str, b: str) -> float:
    ca, cb = s["contenders"][a]["rates"], s["contenders"][b]["rates"]
    values = [x / y for x, y in zip(ca, cb, strict=False) if y > 0]
    return _median(values)


def write_outputs(s: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "results.json", out_dir / "throughput.png", out_dir / "scrape.png"]
    written[0].write_text(json.dumps(s, indent=2, sort_keys=False) + "\n", encoding="utf-8")

    c = s["contenders"]
    names = list(CONTENDERS)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    medians = [c[n]["rate_median"] / 1000 for n in names]
    colours = ["#1f77b4" if n.startswith("exporter") else "#999999" for n in names]
    ax.barh([LABELS[n] for n in names], medians, color=colours)
    for i, n in enumerate(names):
        for rate in c[n]["rates"]:
            ax.plot(rate / 1000, i, "k.", markersize=3)
        right = max([medians[i], *(r / 1000 for r in c[n]["rates"])])
        ax.text(right, i, f"  {medians[i]:,.0f}k", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("thousand messages per second (median; dots: repetitions)")
    ax.set_title(f"Throughput over loopback WebSocket, {s['method']['symbols']} symbols, frames of {BATCH}")
    fig.tight_layout()
    fig.savefig(written[1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    counts = [int(n) for n in s["scrape"]]
    for key, label, style in (
        ("text", "exporter /metrics (text 0.0.4)", "o-"),
        ("openmetrics", "exporter /metrics (OpenMetrics)", "s-"),
        ("generic_text", "prometheus_client generate_latest", "o--"),
        ("generic_openmetrics", "prometheus_client OpenMetrics", "s--"),
    ):
        ax.plot(counts, [s["scrape"][str(n)][key]["cpu_ms"] for n in counts], style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("symbols")
    ax.set_ylabel("render CPU per scrape, ms (median)")
    ax.axhline(10, color="red", linewidth=0.8, linestyle=":", label="10 ms target at 500 symbols")
    ax.legend(fontsize=8)
    ax.set_title("Scrape cost by symbol count")
    fig.tight_layout()
    fig.savefig(written[2], dpi=110)
    plt.close(fig)
    return written


def run_bench(*, quick: bool, out: str | None, plan: Plan | None = None, repetitions: int | None = None) -> int:
    """Run the benchmark; print the table; write results.json and the charts (default: docs/performance/).

    ``plan`` overrides the full or quick plan (the test suite's smoke run uses a smaller one);
    ``repetitions`` overrides the full run's 5.
    """
    plan = plan or plan_for(quick)
    if repetitions is not None and not plan.quick:
        plan = dataclasses.replace(plan, repetitions=repetitions)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    summary = asyncio.run(Driver(plan, log).run())
    print(render_table(summary))
    out_dir = Path(out) if out is not None else Path("docs/performance")
    for path in write_outputs(summary, out_dir):
        log(f"wrote {path}")
    return 0


def run_core_bench(
    *, messages: int = 1_000_000, symbols: int = 500, batch: int = 100, seed: int = 0
) -> dict[str, float]:
    """The pure core alone: synthetic trades for ``symbols`` symbols through validation, breakers, routing and
    every metric's bookkeeping, then one scrape. No sockets, no decoding: what the core costs per message."""
    import random

    from exporter.core.clock import SystemClock
    from exporter.core.events import PrimaryAuthenticated, PrimaryConnection, PrimaryData, PrimarySubscribed
    from exporter.core.messages import Trade, utc_from_ns
    from exporter.core.router import Core, CoreConfig, State
    from exporter.metrics import build_registry, render_metrics

    names = bench_symbols(symbols)
    clock = SystemClock()
    core = Core(CoreConfig(symbols=tuple(names), stale_after_s=0, max_symbol_series=max(500, symbols)), clock)
    core.handle(PrimaryConnection("Connected"))
    core.handle(PrimaryAuthenticated(True))
    core.handle(PrimarySubscribed(frozenset(names)))
    assert core.state is State.PRIMARY_ACTIVE
    rng = random.Random(seed)
    price = {name: 20.0 + rng.random() * 400.0 for name in names}
    now = utc_from_ns(clock.wall_ns())
    frames: list[PrimaryData] = []
    for start in range(0, messages, batch):
        frame = []
        for _ in range(min(batch, messages - start)):
            name = names[rng.randrange(symbols)]
            price[name] *= 1.0 + rng.gauss(0.0, 0.0005)
            frame.append(Trade(S=name, p=round(price[name], 2), t=now, s=100))
        frames.append(PrimaryData(frame, clock.monotonic()))
    handle = core.handle
    started = time.perf_counter()
    for frame_event in frames:
        handle(frame_event)
    elapsed = time.perf_counter() - started
    accounting = core.accounting()["alpaca"]
    assert accounting["received"] == messages, accounting
    registry = build_registry(core)
    render_started = time.process_time()
    body, _ = render_metrics(registry, "text/plain")
    scrape_ms = (time.process_time() - render_started) * 1000.0
    return {
        "messages": float(messages),
        "symbols": float(symbols),
        "msgs_per_s": messages / elapsed,
        "ns_per_msg": elapsed / messages * 1e9,
        "headroom_vs_100k": messages / elapsed / 100_000.0,
        "scrape_cpu_ms": scrape_ms,
        "scrape_bytes": float(len(body)),
    }


def run_core(*, messages: int) -> int:
    result = run_core_bench(messages=messages)
    print(
        f"core: {result['messages']:,.0f} trades, {result['symbols']:.0f} symbols: "
        f"{result['msgs_per_s']:,.0f} msgs/s, {result['ns_per_msg']:.0f} ns/msg "
        f"({result['headroom_vs_100k']:.1f}x a 100k msgs/s feed); "
        f"scrape {result['scrape_cpu_ms']:.1f} ms CPU, {result['scrape_bytes']:,.0f} bytes"
    )
    return 0


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter_tools.bench")
    parser.add_argument("--worker", required=True, help="internal: run one contender (JSON spec)")
    args = parser.parse_args(argv)
    return worker_main(args.worker)


if __name__ == "__main__":
    sys.exit(_main())
