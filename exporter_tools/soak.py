"""``alpaca-exporter soak``: the demo-scale feed with a fault every few seconds, watched for leaks.

What runs: the demo's set-up (:class:`exporter.sim.demo.Demo`: both simulators on loopback and the
daemon pointed at them, five symbols, trades/quotes/bars at ``rate`` messages per second), in this one
process. Every ``fault_every`` seconds the next fault of :func:`schedule` (made of the demo's
:class:`~exporter.sim.scenario.Faults`) is injected and undone ``fault_every / 2`` seconds later: TCP
drops (with and without the zombie slot that draws a 406), upgrade refusals (429), a mute stream
(staleness), a dead socket (no pongs), undecodable frames, bad prints, a price spike, Yahoo 429 / 5xx /
HTML outages.

What is sampled, every ``sample_every`` seconds: resident memory (``/proc/self/statm``), open file
descriptors (``/proc/self/fd``), asyncio tasks, and the number of sample lines a real scrape of
/metrics returns (the series count). Every sample also checks that the scrape answered 200 and that the
core's accounting is exact (received = routed + standby + rejected, per source).

How growth is judged: the first ``warmup`` share of the run is ignored (caches, histograms and label
series fill up there); the rest is split in two halves and, for each resource, the **median of the
second half** must not exceed the **median of the first half** by more than the tolerance
``max(absolute, relative * first-half median)``: RSS 8 MiB or 10 %, fds 8, tasks 10, series 20 lines or
2 % (label series appear in steps as new label values are first seen; a bounded step is not a leak).
Medians, not maxima, because a sample taken during a fault carries that fault's transient sockets and
tasks. A leak of one object per fault grows steadily and shows up as a second half above the first;
a plateau does not. The exit code is 1 on growth, on a failed scrape or on broken accounting, else 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from exporter.app import quiet_libraries
from exporter.logs import configure_logging
from exporter.sim.demo import DEMO_SYMBOLS, Demo
from exporter.sim.scenario import Action, Faults
from exporter.timers import LoopTimers

log = logging.getLogger("exporter_tools.soak")

_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class Tolerance:
    absolute: float
    relative: float

    def allowed(self, baseline: float) -> float:
        return max(self.absolute, self.relative * baseline)


TOLERANCES: dict[str, Tolerance] = {
    "rss_mib": Tolerance(8.0, 0.10),
    "fds": Tolerance(8.0, 0.0),
    "tasks": Tolerance(10.0, 0.0),
    "series": Tolerance(20.0, 0.02),
}


@dataclass(slots=True)
class Sample:
    t: float  # seconds since the start
    rss_mib: float
    fds: int
    tasks: int
    series: int
    scrape_ok: bool
    accounting_ok: bool
    state: str


@dataclass(slots=True)
class SoakReport:
    seconds: float
    faults: int
    samples: list[Sample] = field(default_factory=list)
    verdicts: dict[str, dict[str, float | bool]] = field(default_factory=dict)
    failed_scrapes: int = 0
    accounting_errors: int = 0
    received: int = 0
    dropped_frames: int = 0
    ok: bool = False

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "faults": self.faults,
            "samples": len(self.samples),
            "received_messages": self.received,
            "dropped_frames": self.dropped_frames,
            "failed_scrapes": self.failed_scrapes,
            "accounting_errors": self.accounting_errors,
            "verdicts": self.verdicts,
            "ok": self.ok,
        }


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _every_symbol_exported(base: str, symbols: int) -> None:
    """Wait until every symbol has its per-symbol series (its first routed trade).

    A symbol's series appear once, with its first data: on a slow machine that can fall into the
    measured window and look like growth. The soak measures what grows while it runs, not the start."""
    async with httpx.AsyncClient(timeout=5.0) as http, asyncio.timeout(30.0):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                text = (await http.get(base + "/metrics")).text
                seen = {line.split("}")[0] for line in text.splitlines() if line.startswith(_PER_SYMBOL)}
                if len(seen) >= symbols:
                    return
            await asyncio.sleep(0.1)


_PER_SYMBOL = "alpaca_message_latency_seconds_count{"


def count_series(exposition: str) -> int:
    return sum(1 for line in exposition.splitlines() if line and not line.startswith("#"))


def judge(samples: list[Sample], warmup: float) -> dict[str, dict[str, float | bool]]:
    """Second-half median against first-half median, per resource (see the module doc)."""
    if not samples:
        return {}
    end = samples[-1].t
    kept = [s for s in samples if s.t >= warmup * end]
    half = len(kept) // 2
    first, second = kept[:half], kept[half:]
    out: dict[str, dict[str, float | bool]] = {}
    for name, tol in TOLERANCES.items():
        if len(first) < 2 or len(second) < 2:
            out[name] = {"ok": False, "first": math.nan, "second": math.nan, "allowed": 0.0}
            continue
        a = statistics.median(float(getattr(s, name)) for s in first)
        b = statistics.median(float(getattr(s, name)) for s in second)
        allowed = tol.allowed(a)
        out[name] = {"first": round(a, 2), "second": round(b, 2), "allowed": round(allowed, 2), "ok": b - a <= allowed}
    return out


def schedule(faults: Faults) -> list[tuple[str, Action]]:
    """(name, inject) pairs, injected in turn; :meth:`Faults.heal` undoes them all."""

    async def garbage_and_bad_prints() -> None:
        await faults.garbage()
        await faults.bad_prints()

    return [
        ("alpaca drop (1006)", faults.drop),
        ("yahoo 429", partial(faults.yahoo_429, 2.0, retry_after=1)),
        ("alpaca garbage frames and bad prints", garbage_and_bad_prints),
        # The quick reconnect meets a 406, the next one gets through.
        ("alpaca drop holding the slot (406)", partial(faults.drop, hold=1.0)),
        ("alpaca mute (stale stream)", faults.mute),
        ("yahoo 503", partial(faults.yahoo_503, 2.0)),
        ("alpaca 429 at upgrade", partial(faults.drop, refuse=429, times=2)),
        ("price spike", partial(faults.spike, 1.6, count=2)),
        ("alpaca dead socket (no pongs)", faults.no_pong),
        ("yahoo HTML outage", partial(faults.yahoo_html, 2.0)),
        ("alpaca closes new connections", faults.close_new),
    ]


async def soak(
    seconds: float,
    *,
    fault_every: float = 5.0,
    sample_every: float = 5.0,
    warmup: float = 0.2,
    rate: float = 200.0,
    on_sample: Callable[[Sample], None] | None = None,
) -> SoakReport:
    """Run the soak for ``seconds`` and return the report (``ok`` is the verdict)."""
    # The Yahoo simulator remembers requests for tests (100,000 by default): in a soak that log, not the
    # exporter, would be the memory that grows. Keep it short.
    demo = Demo(port=0, rate=rate, seed=11, zombie_hold=1.0, request_log=500, host="127.0.0.1", log_level="WARNING")
    faults = demo.faults
    report = SoakReport(seconds=0.0, faults=0)
    async with demo.running() as daemon:
        base = f"http://127.0.0.1:{daemon.port}"
        await _every_symbol_exported(base, len(DEMO_SYMBOLS))
        rotation = schedule(faults)
        # The loop's clock (time.monotonic on asyncio's loops), which the daemon's timers read too, so the
        # soak runs on virtual time under a test loop that fast-forwards it.
        clock = LoopTimers()
        start = clock.monotonic()

        async def inject() -> None:
            i = 0
            while True:
                await asyncio.sleep(fault_every / 2)
                name, action = rotation[i % len(rotation)]
                log.info("soak fault: %s", name)
                try:
                    await action()
                except Exception:  # a failed injection must not end the soak
                    log.exception("soak fault failed: %s", name)
                report.faults += 1
                i += 1
                await asyncio.sleep(fault_every / 2)
                faults.heal()

        injector = asyncio.create_task(inject())
        try:
            async with httpx.AsyncClient(timeout=5.0) as http:
                while (elapsed := clock.monotonic() - start) < seconds:
                    await asyncio.sleep(min(sample_every, max(0.0, seconds - elapsed)))
                    scrape_ok, series = False, 0
                    with contextlib.suppress(httpx.HTTPError):
                        response = await http.get(base + "/metrics")
                        scrape_ok = response.status_code == 200
                        series = count_series(response.text)
                    acc = daemon.core.accounting()
                    accounting_ok = all(
                        a["received"] == a["routed"] + a["standby"] + a["rejected"] for a in acc.values()
                    )
                    sample = Sample(
                        t=round(clock.monotonic() - start, 3),
                        rss_mib=round(rss_mib(), 2),
                        fds=open_fds(),
                        tasks=len(asyncio.all_tasks()),
                        series=series,
                        scrape_ok=scrape_ok,
                        accounting_ok=accounting_ok,
                        state=daemon.core.state.name,
                    )
                    report.samples.append(sample)
                    report.failed_scrapes += not scrape_ok
                    report.accounting_errors += not accounting_ok
                    if on_sample is not None:
                        on_sample(sample)
        finally:
            injector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await injector
            faults.heal()
            report.seconds = clock.monotonic() - start
            report.received = daemon.core.received["alpaca"]
            report.dropped_frames = daemon.queue.dropped
    report.verdicts = judge(report.samples, warmup)
    report.ok = (
        bool(report.verdicts)
        and all(bool(v["ok"]) for v in report.verdicts.values())
        and report.failed_scrapes == 0
        and report.accounting_errors == 0
    )
    return report


def run_soak(
    minutes: float = 10.0,
    *,
    fault_every: float = 5.0,
    sample_every: float | None = None,
    rate: float = 200.0,
    out: str | None = None,
) -> int:
    """The ``soak`` command: run, print one line per sample and a JSON summary; 0 when no growth, else 1."""
    configure_logging("WARNING", "console")
    quiet_libraries()
    logging.getLogger("exporter.sim").setLevel(logging.ERROR)
    seconds = minutes * 60.0
    every = sample_every if sample_every is not None else max(0.5, min(10.0, seconds / 60.0))

    def show(s: Sample) -> None:
        print(
            f"t={s.t:7.1f}s rss={s.rss_mib:7.2f}MiB fds={s.fds:3d} tasks={s.tasks:3d} "
            f"series={s.series:4d} state={s.state}{'' if s.scrape_ok else ' SCRAPE-FAILED'}"
            f"{'' if s.accounting_ok else ' ACCOUNTING-BROKEN'}",
            file=sys.stderr,
            flush=True,
        )

    report = asyncio.run(soak(seconds, fault_every=fault_every, sample_every=every, rate=rate, on_sample=show))
    summary = report.summary()
    print(json.dumps(summary, indent=2))
    if out:
        path = Path(out)
        path.write_text(json.dumps({**summary, "series": [asdict(s) for s in report.samples]}, indent=1))
    return 0 if report.ok else 1
