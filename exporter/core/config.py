"""The core's configuration and the names of its two sources, shared by its parts."""

from __future__ import annotations

from dataclasses import dataclass

PRIMARY = "alpaca"
FALLBACK = "yahoo"
SOURCES = (PRIMARY, FALLBACK)


@dataclass(frozen=True, slots=True)
class CoreConfig:
    symbols: tuple[str, ...]
    stale_after_s: float = 30.0
    market_hours: str = "regular"  # regular | overnight | always | never
    market_delay_s: float = 0.0  # delayed feeds: the session as the data sees it
    failback_after_s: float = 30.0
    max_message_age_s: float = 60.0
    max_clock_skew_s: float = 5.0
    breaker_percent: float = 20.0
    breaker_cooldown_s: float = 60.0
    max_symbol_series: int = 500
    fallback_enabled: bool = True
    channels: tuple[str, ...] = ("trades",)  # the Alpaca channels wanted (EXPORTER_ALPACA_CHANNELS)
    # The primary's lag (quality.py) beyond this plus market_delay_s makes it unhealthy; 0 disables.
    max_stream_lag_s: float = 30.0
    # False skips only the hot path's metric bookkeeping (per-symbol received counts, latency and
    # processing histograms): routing, validation, breakers and accounting stay. For the benchmark's
    # "what does monitoring cost" run; the daemon always keeps it on.
    metrics: bool = True
