"""Source health: what the adapters reported about each source, judged against the clock.

  primary  = connected, authenticated, subscribed, and (when stale_after > 0 and the market is open)
             market data seen within stale_after of the later of the subscription ack, the session's
             open and the last market-data message; and not lagging (quality.py: its median message
             age beyond max_stream_lag_s plus the feed's delay).
  fallback = enabled, and its last successful poll is no older than three poll periods (the period in
             force then).

``judge`` turns these into the three flags the failover table reads, plus a ``PrimaryStale`` effect
once per silent episode, and keeps the reason the primary is down for the transition's log line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from exporter.core.clock import Clock
from exporter.core.config import CoreConfig
from exporter.core.events import FallbackPoll, PrimaryConnection
from exporter.core.market_hours import session_opened_at


@dataclass(frozen=True, slots=True)
class PrimaryStale:
    """Effect: connected but silent while the market is open (once per episode)."""

    silent_seconds: float


class Health:
    __slots__ = (
        "_conn_reason",
        "_fallback_ok_period",
        "_healthy_since",
        "_last_error",
        "_sub_at",
        "_subscribed_ok",
        "authenticated",
        "clock",
        "config",
        "conn_state",
        "fallback_last_error",
        "fallback_last_ok",
        "lagging",
        "last_data_at",
        "primary_reason",
        "stale",
        "subscribed",
    )

    def __init__(self, config: CoreConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        # Primary.
        self.conn_state = "Disconnected"
        self.authenticated = False
        self.subscribed: frozenset[str] = frozenset()
        self._subscribed_ok = False
        self._sub_at = clock.monotonic()
        self.last_data_at: float | None = None
        self.stale = False
        self.lagging = False  # set by the router from Quality at each tick
        self._healthy_since: float | None = None
        self.primary_reason = "not connected yet"
        self._conn_reason = "not connected yet"
        self._last_error: tuple[str, float] = ("", -math.inf)
        # Fallback.
        self.fallback_last_ok: float | None = None
        self._fallback_ok_period = 0.0
        self.fallback_last_error: str | None = None

    # ---- what the adapters reported ----------------------------------------------------------------
    def connection(self, event: PrimaryConnection) -> None:
        self.conn_state = event.state
        if event.state != "Connected":
            self._subscribed_ok = False
            if event.state == "Disconnected":
                self.authenticated = False
                self.subscribed = frozenset()  # nothing is confirmed by a server we are not connected to
            self._conn_reason = event.reason or f"connection {event.state.lower()}"

    def subscription(self, symbols: frozenset[str], now: float) -> None:
        self.subscribed = symbols
        self._subscribed_ok = bool(symbols)
        self._sub_at = now
        self.stale = False

    def error(self, type_: str, detail: str, now: float) -> None:
        self._last_error = (f"{type_}: {detail}" if detail else type_, now)

    def poll(self, event: FallbackPoll, now: float) -> None:
        if event.ok:
            self.fallback_last_ok = now
            self._fallback_ok_period = event.period_s
            self.fallback_last_error = None
        elif event.error is not None:
            self.fallback_last_error = event.error

    # ---- judgement ---------------------------------------------------------------------------------
    def primary_healthy(self, now: float) -> bool:
        if not self._linked():
            return False
        silence = self._silence(now)
        return not self.lagging and (silence is None or silence <= self.config.stale_after_s)

    def fallback_healthy(self, now: float) -> bool:
        if not self.config.fallback_enabled or self.fallback_last_ok is None:
            return False
        return now - self.fallback_last_ok <= 3.0 * self._fallback_ok_period

    def judge(self, now: float, primary_routed: bool) -> tuple[bool, bool, bool, PrimaryStale | None]:
        """(primary healthy, fallback healthy, primary held, a new stale episode) at ``now``."""
        linked = self._linked()
        silence = self._silence(now) if linked else None
        stale = silence is not None and silence > self.config.stale_after_s
        p_ok = linked and not stale and not self.lagging
        effect = None
        if stale and not self.stale:
            self.stale = True
            assert silence is not None
            effect = PrimaryStale(silence)
        elif not stale:
            self.stale = False  # data resumed (or the link is down): the next silence is a new episode
        if p_ok:
            if self._healthy_since is None:
                self._healthy_since = now
        else:
            if self._healthy_since is not None or primary_routed:
                self.primary_reason = self._why_unhealthy(now, stale)
            self._healthy_since = None
        held = self._healthy_since is not None and now - self._healthy_since >= self.config.failback_after_s
        return p_ok, self.fallback_healthy(now), held, effect

    @property
    def connected(self) -> bool:
        return self.conn_state == "Connected"

    def data_outage(self) -> bool:
        """Unhealthy because data cannot arrive or does not (not a lag): the outages quality.py measures."""
        return not self._linked() or self.stale

    def _linked(self) -> bool:
        return self.conn_state == "Connected" and self.authenticated and self._subscribed_ok

    def _silence(self, now: float) -> float | None:
        """Seconds the primary has been silent, counted from the latest of ack, session open and last
        data; None when silence does not count (staleness off, or the market closed: silence is normal)."""
        cfg = self.config
        if cfg.stale_after_s <= 0:
            return None
        wall = self.clock.wall_ns() / 1e9
        opened = session_opened_at(cfg.market_hours, wall, delay_seconds=cfg.market_delay_s)
        if opened is None:
            return None
        return now - self._silent_since(now, wall, opened)

    def _silent_since(self, now: float, wall: float, opened: float) -> float:
        """Monotonic start of the current silence: the latest of ack, session open and last data."""
        last = max(self._sub_at, now - (wall - opened))
        if self.last_data_at is not None and self.last_data_at > last:
            last = self.last_data_at
        return last

    def _why_unhealthy(self, now: float, stale: bool) -> str:
        # An error reported just now explains the outage better than its symptoms (auth lost, disconnected).
        reason, at = self._last_error
        if at >= now - 1.0:
            return reason
        if stale:
            return "stale stream"
        if self.lagging and self._linked():
            return "stream lagging"
        if self.conn_state != "Connected":
            return self._conn_reason
        return "not authenticated" if not self.authenticated else "not subscribed"
