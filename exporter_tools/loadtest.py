"""Load on the endpoints while the feed runs: ``python -m exporter_tools.loadtest`` (needs ``wrk``, Debian
package ``wrk``). Figures go to docs/reliability.md.

1. The simulators run in this process; the exporter runs as its own process (``alpaca-exporter run``),
   as in production; ``wrk`` is a third process. All on 127.0.0.1.
2. The pipeline's maximum: the simulator streams as fast as it can for ``probe_seconds`` and the
   exporter's own counter (``datasource_router_messages_total{source="alpaca"}``) gives what it
   sustained. Two feeds (``--feed``): ``live``, the simulator's own generator (its rate knob; the
   generator, in Python, is then the bottleneck), and ``paced`` (default), a pre-generated feed of
   100-message frames (``generate_feed``, as the benchmark uses) replayed in 10 ms ticks, which drives
   the exporter itself to its limit. Replayed timestamps repeat, so the message-age bound is raised
   for this run (nothing is rejected as stale; every message is validated and routed).
3. The feed is set to half that rate; a baseline ingestion rate is measured without HTTP load.
4. For /healthz and /metrics at 10 and 50 connections, ``wrk`` runs for ``seconds`` while the ingestion
   rate is measured over the same window. Reported: requests/s, p99 latency, errors and timeouts (wrk
   counts a request slower than ``--timeout`` as a timeout), and ingestion kept = rate under load /
   baseline. The run passes when no request failed or timed out and ingestion kept >= 90 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from exporter.sim.alpaca_server import AlpacaSimulator, generate_feed
from exporter.sim.demo import DEMO_KEY, DEMO_SECRET, DEMO_SYMBOLS
from exporter.sim.market import Market
from exporter.sim.yahoo_server import YahooSimulator

_COUNTER = re.compile(r'^datasource_router_messages_total\{(?=[^}]*source="alpaca")[^}]*\} (\S+)$', re.M)
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass
class LoadResult:
    path: str
    connections: int
    requests_per_second: float
    p99_ms: float
    errors: int
    timeouts: int
    non_2xx: int
    ingest_rate: float
    ingestion_kept_percent: float
    offered_rate: float | None  # what the paced sender managed to send meanwhile (it shares the CPUs)
    exporter_cpu_percent: float  # of one core, during the window


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _received(http: httpx.AsyncClient, base: str) -> float:
    text = (await http.get(base + "/metrics")).text
    return sum(float(v) for v in _COUNTER.findall(text))


async def _rate(http: httpx.AsyncClient, base: str, seconds: float) -> float:
    start_n, start_t = await _received(http, base), time.monotonic()
    await asyncio.sleep(seconds)
    return (await _received(http, base) - start_n) / (time.monotonic() - start_t)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if match is None:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, float]:
    """Requests/s, p99 (s), socket errors, timeouts and non-2xx answers from ``wrk --latency`` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if rps is None or p99 is None:
        raise ValueError(f"unexpected wrk output:\n{output}")
    connect, read, write, timeout = (int(g) for g in errors.groups()) if errors else (0, 0, 0, 0)
    return {
        "rps": float(rps.group(1)),
        "p99": _seconds(p99.group(1)),
        "errors": connect + read + write,
        "timeouts": timeout,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


async def _wrk(url: str, connections: int, seconds: float, request_timeout: float) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{seconds:g}s",
        f"--timeout={request_timeout:g}s",
        "--latency",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return parse_wrk(out.decode())


class _Pump:
    """Replays pre-encoded frames to every subscribed session at ``rate`` messages/s (None: flat out)."""

    TICK = 0.01

    def __init__(self, alpaca: AlpacaSimulator, frames: list[str | bytes], per_frame: int) -> None:
        self.alpaca, self.frames, self.per_frame = alpaca, frames, per_frame
        self.rate: float | None = None
        self.sent = 0  # messages handed to the sockets
        self._i = 0

    def _next(self, n: int) -> list[str | bytes]:
        out = [self.frames[(self._i + j) % len(self.frames)] for j in range(n)]
        self._i += n
        self.sent += n * self.per_frame
        return out

    async def run(self) -> None:
        due, owed = time.monotonic(), 0.0
        while True:
            if self.rate is None:
                await self.alpaca.send_feed(self._next(50))
                due = time.monotonic()
                continue
            owed += self.rate / self.per_frame * self.TICK
            n = int(owed)
            owed -= n
            if n:
                await self.alpaca.send_feed(self._next(n))
            due += self.TICK
            await asyncio.sleep(max(0.0, due - time.monotonic()))


async def run_load(
    *,
    seconds: float = 10.0,
    probe_seconds: float = 8.0,
    connections: tuple[int, ...] = (10, 50),
    paths: tuple[str, ...] = ("/healthz", "/metrics"),
    request_timeout: float = 2.0,
    batch_size: int = 10,
    feed: str = "paced",
    say: Any = print,
) -> dict[str, Any]:
    market = Market(DEMO_SYMBOLS, seed=13)
    paced = feed == "paced"
    if paced:
        batch_size = 100
    alpaca = AlpacaSimulator(
        market,
        credentials=(DEMO_KEY, DEMO_SECRET),
        # live: as fast as the generator goes (the probe of the maximum); paced: frames come from the pump.
        rate=0.0 if paced else 1_000_000.0,
        batch_size=batch_size,
        rare_probability=0.0,
        compression=None,
    )
    yahoo = YahooSimulator(market)
    async with alpaca, yahoo:
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPORTER_", "APCA_"))}
        env.update(
            {
                "APCA_API_KEY_ID": DEMO_KEY,
                "APCA_API_SECRET_KEY": DEMO_SECRET,
                "EXPORTER_SYMBOLS": ",".join(DEMO_SYMBOLS),
                "EXPORTER_ALPACA_URL": alpaca.url("/v2/iex"),
                "EXPORTER_ALPACA_CHANNELS": "trades,quotes",
                "EXPORTER_YAHOO_URL": yahoo.url,
                "EXPORTER_MARKET_HOURS": "always",
                "EXPORTER_HOST": "127.0.0.1",
                "EXPORTER_PORT": str(port),
                "EXPORTER_LOG_LEVEL": "WARNING",
            }
        )
        if paced:
            env["EXPORTER_MAX_MESSAGE_AGE_SECONDS"] = "86400"  # the replayed feed's timestamps repeat
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "exporter", "run", env=env, stdout=asyncio.subprocess.DEVNULL
        )
        base = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(timeout=10.0) as http:
                async with asyncio.timeout(20):
                    while True:
                        try:
                            if (await http.get(base + "/readyz")).status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        await asyncio.sleep(0.1)
                pump: _Pump | None = None
                pump_task: asyncio.Task[None] | None = None
                if paced:
                    frames = list(generate_feed(DEMO_SYMBOLS, 200_000, batch=batch_size, encoding="msgpack"))
                    pump = _Pump(alpaca, frames, batch_size)
                    pump_task = asyncio.create_task(pump.run())
                await asyncio.sleep(1.0)
                maximum = await _rate(http, base, probe_seconds)
                say(f"pipeline maximum ({feed} feed flat out, {batch_size} per frame): {maximum:,.0f} msg/s")
                if pump is not None:
                    pump.rate = maximum / 2
                else:
                    alpaca.set_rate(maximum / 2)
                await asyncio.sleep(1.0)
                cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
                baseline = await _rate(http, base, seconds)
                baseline_cpu = 100.0 * (_cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
                say(
                    f"feed at half the maximum: {maximum / 2:,.0f} msg/s requested, {baseline:,.0f} msg/s ingested, "
                    f"exporter CPU {baseline_cpu:.0f} %"
                )
                results: list[LoadResult] = []
                for path in paths:
                    for conns in connections:
                        wrk_task = asyncio.create_task(_wrk(base + path, conns, seconds, request_timeout))
                        await asyncio.sleep(0.5)  # measure ingestion inside the wrk window
                        sent0, t0, cpu0 = (pump.sent if pump else 0), time.monotonic(), _cpu_seconds(proc.pid)
                        ingest = await _rate(http, base, seconds - 1.0)
                        elapsed = time.monotonic() - t0
                        offered = (pump.sent - sent0) / elapsed if pump else None
                        cpu = 100.0 * (_cpu_seconds(proc.pid) - cpu0) / elapsed
                        w = await wrk_task
                        result = LoadResult(
                            path=path,
                            connections=conns,
                            requests_per_second=round(w["rps"], 1),
                            p99_ms=round(w["p99"] * 1000, 2),
                            errors=int(w["errors"]),
                            timeouts=int(w["timeouts"]),
                            non_2xx=int(w["non_2xx"]),
                            ingest_rate=round(ingest, 1),
                            ingestion_kept_percent=round(100.0 * ingest / baseline, 1),
                            offered_rate=None if offered is None else round(offered, 1),
                            exporter_cpu_percent=round(cpu, 1),
                        )
                        results.append(result)
                        say(
                            f"{path:9s} c={conns:3d}: {result.requests_per_second:9,.1f} req/s, "
                            f"p99 {result.p99_ms:8.2f} ms, errors {result.errors}, timeouts {result.timeouts}, "
                            f"non-2xx {result.non_2xx}, ingestion {ingest:,.0f} msg/s "
                            f"({result.ingestion_kept_percent:.1f} % kept"
                            + ("" if offered is None else f", {offered:,.0f} msg/s offered")
                            + f"), exporter CPU {cpu:.0f} %"
                        )
                if pump_task is not None:
                    pump_task.cancel()
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)
    ok = all(r.errors == 0 and r.timeouts == 0 and r.non_2xx == 0 and r.ingestion_kept_percent >= 90 for r in results)
    return {
        "feed": feed,
        "frame_messages": batch_size,
        "cpus": os.cpu_count(),
        "maximum_rate": round(maximum, 1),
        "feed_rate": round(maximum / 2, 1),
        "baseline_ingest_rate": round(baseline, 1),
        "baseline_exporter_cpu_percent": round(baseline_cpu, 1),
        "seconds": seconds,
        "results": [asdict(r) for r in results],
        "ok": ok,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter_tools.loadtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each wrk run (default 10)")
    parser.add_argument("--connections", default="10,50", help="comma-separated wrk connection counts")
    parser.add_argument("--feed", choices=("paced", "live"), default="paced", help="see the module doc")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    conns = tuple(int(c) for c in args.connections.split(","))
    report = asyncio.run(run_load(seconds=args.seconds, connections=conns, feed=args.feed))
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
