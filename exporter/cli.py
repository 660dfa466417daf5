"""Command line: parse, build, hand over. ``alpaca-exporter [run|demo|simulate|check-config|bench|soak]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from exporter import __version__
from exporter.settings import ConfigError, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alpaca-exporter",
        description="Prometheus exporter for an Alpaca market-data feed with a Yahoo Finance fallback. "
        "Configured by environment variables (see README); secrets are never printed.",
    )
    parser.add_argument("--version", action="version", version=f"alpaca-exporter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="run the daemon, configured from the environment (the default)")
    demo = sub.add_parser("demo", help="run the daemon against built-in simulators with a scripted day of faults")
    demo.add_argument("--port", type=int, default=None, help="port for /metrics (default EXPORTER_PORT or 9877)")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: run)")
    demo.add_argument(
        "--feed",
        choices=("stocks", "crypto", "options"),
        default="stocks",
        help="the Alpaca feed the demo plays on (default stocks)",
    )
    sim = sub.add_parser("simulate", help="run only the Alpaca and Yahoo simulators on loopback")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--alpaca-port", type=int, default=0, help="0 = any free port")
    sim.add_argument("--yahoo-port", type=int, default=0, help="0 = any free port")
    sim.add_argument("--symbols", default="AAPL,MSFT,SPY", help="comma-separated symbols")
    sim.add_argument("--rate", type=float, default=50.0, help="generated messages per second per connection")
    sub.add_parser("check-config", help="validate the environment and print the effective settings (secrets masked)")
    bench = sub.add_parser(
        "bench", help="benchmark the pipeline against the official SDK (a development tool, docs/performance.md)"
    )
    bench.add_argument("--quick", action="store_true", help="a seconds-long smoke run instead of the full benchmark")
    bench.add_argument("--out", default=None, help="directory for the JSON and PNG results")
    bench.add_argument(
        "--core", action="store_true", help="only the pure core: synthetic trades for 500 symbols, msgs/s and ns/msg"
    )
    bench.add_argument("--messages", type=int, default=1_000_000, help="trades for --core (default 1,000,000)")
    bench.add_argument(
        "--repetitions",
        type=int,
        default=5,
        help="interleaved repetitions of the full run (default 5; more give steadier medians on a noisy machine)",
    )
    soak = sub.add_parser(
        "soak",
        help="run the demo feed with faults every few seconds and fail on resource growth "
        "(a development tool, docs/reliability.md)",
    )
    soak.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    soak.add_argument("--fault-every", type=float, default=5.0, help="seconds between injected faults (default 5)")
    soak.add_argument("--sample-every", type=float, default=None, help="seconds between samples (default: 60 per run)")
    soak.add_argument("--rate", type=float, default=200.0, help="simulated messages per second (default 200)")
    soak.add_argument("--out", default=None, help="write the samples and the verdict to this JSON file")
    return parser


def _config_problems(problems: Sequence[str]) -> int:
    for line in problems:
        print(f"config error: {line}", file=sys.stderr)
    return 2


def _needs_tools(command: str, missing: ModuleNotFoundError) -> int:
    # The tools live beside the package (exporter_tools/), not in the image; the benchmark needs the extra.
    package = (missing.name or "").partition(".")[0] or str(missing)
    print(
        f"{command} needs the development tools: pip install 'alpaca-exporter[tools]' from a checkout "
        f"(missing: {package})",
        file=sys.stderr,
    )
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    try:
        if command == "check-config":
            settings = load_settings(for_run=True)
            for name, value in settings.effective().items():
                print(f"{name}={value}")
            print("configuration OK", file=sys.stderr)
            return 0
        if command == "run":
            settings = load_settings(for_run=True)
            if settings.web_config_file is not None:
                from exporter.webconfig import load_web_config

                try:
                    load_web_config(settings.web_config_file)
                except (ValueError, OSError) as exc:
                    raise ConfigError([f"EXPORTER_WEB_CONFIG_FILE: {exc}"]) from None
            from exporter.app import run_daemon

            return run_daemon(settings)
        if command == "demo":
            from exporter.sim.demo import run_demo

            return run_demo(port=args.port, duration=args.duration, feed=args.feed)
        if command == "simulate":
            from exporter.sim.serve import run_simulators

            symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()]
            return run_simulators(args.host, args.alpaca_port, args.yahoo_port, symbols, rate=args.rate)
        if command == "bench":
            try:
                from exporter_tools.bench import run_bench, run_core
            except ModuleNotFoundError as exc:
                return _needs_tools(command, exc)
            if args.core:
                return run_core(messages=args.messages)
            if args.repetitions < 1:
                print("alpaca-exporter: --repetitions must be at least 1", file=sys.stderr)
                return 2
            return run_bench(quick=args.quick, out=args.out, repetitions=args.repetitions)
        if command == "soak":
            try:
                from exporter_tools.soak import run_soak
            except ModuleNotFoundError as exc:
                return _needs_tools(command, exc)
            return run_soak(
                args.minutes, fault_every=args.fault_every, sample_every=args.sample_every, rate=args.rate, out=args.out
            )
    except ConfigError as exc:
        return _config_problems(exc.problems)
    except KeyboardInterrupt:
        return 0
    raise AssertionError(f"unhandled command {command}")
