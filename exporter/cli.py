"""Command line: parse, build, hand over. ``alpaca-exporter [run|demo|simulate|check-config|bench]``."""

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
    sim = sub.add_parser("simulate", help="run only the Alpaca and Yahoo simulators on loopback")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--alpaca-port", type=int, default=0, help="0 = any free port")
    sim.add_argument("--yahoo-port", type=int, default=0, help="0 = any free port")
    sim.add_argument("--symbols", default="AAPL,MSFT,SPY", help="comma-separated symbols")
    sim.add_argument("--rate", type=float, default=50.0, help="generated messages per second per connection")
    sub.add_parser("check-config", help="validate the environment and print the effective settings (secrets masked)")
    bench = sub.add_parser("bench", help="benchmark the pipeline against the official SDK (see docs/performance.md)")
    bench.add_argument("--quick", action="store_true", help="a seconds-long smoke run instead of the full benchmark")
    bench.add_argument("--out", default=None, help="directory for the JSON and PNG results")
    return parser


def _config_problems(problems: Sequence[str]) -> int:
    for line in problems:
        print(f"config error: {line}", file=sys.stderr)
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

            return run_demo(port=args.port, duration=args.duration)
        if command == "simulate":
            from exporter.sim.serve import run_simulators

            symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()]
            return run_simulators(args.host, args.alpaca_port, args.yahoo_port, symbols, rate=args.rate)
        if command == "bench":
            from exporter.bench import run_bench

            return run_bench(quick=args.quick, out=args.out)
    except ConfigError as exc:
        return _config_problems(exc.problems)
    except KeyboardInterrupt:
        return 0
    raise AssertionError(f"unhandled command {command}")
