"""Feed quality: what the primary's data says about itself, beyond "the socket is up" (CONTRACT §11).

Kept per symbol on ``SymbolState`` (the hot path touches it) and here for the stream as a whole:

Subscriptions
    The client's ``SubscriptionStatus`` after each ack: per wanted channel the symbols the ack left
    out (``alpaca_subscription_missing_symbols``, 0 for every wanted channel until an ack says
    otherwise), the repairs it re-sent, and the symbols a 405 refused with the plan's limit.

Halts
    Trading-status messages (``T`` = ``s``) set a symbol's halted flag. Codes (alpaca-stream.md §5;
    the two tapes' code sets do not overlap, so the code alone decides):

      ======================  =====================================================  =========
      tape                    code                                                   halted
      ======================  =====================================================  =========
      CTA (A, B)              ``2`` trading halt                                     yes
      CTA (A, B)              ``3`` trading resumption                               no
      UTP (C, O)              ``H`` trading halt, ``P`` volatility (LULD) pause      yes
      UTP (C, O)              ``Q`` quotation resumption (trading still halted)      yes
      UTP (C, O)              ``T`` trading resumption                               no
      ======================  =====================================================  =========

    Any other code (CTA price indications, imbalances, short-sale restriction…) leaves the state as
    it was. A resumption resets the symbol's breaker (closed, no reference): the first price after a
    halt is its new reference, since a halt explains a gap. A halted symbol learns no interval.

Typical interval
    Per symbol, from the intervals X between the primary's market-data messages for it:
    E[X²] / (2 E[X]), both means exponentially weighted (weight ``INTERVAL_ALPHA``, plain means until
    then), exported once ``INTERVAL_MIN_SAMPLES`` intervals were learned. For Poisson arrivals (what
    the alert's "14 intervals" assumes) this is the mean interval; unlike the plain mean it is not
    pulled down by bursts — trades cluster, and four trades one second apart followed by a minute of
    silence have a mean interval of 16 s but a typical one of 29 s, which is what the silence between
    bursts must be judged against (exporter_tools/stale_rules.py measured the difference: the plain
    mean gave several times more false MarketDataStale firings). Messages closer than
    ``INTERVAL_MIN_SECONDS`` to the last sample's start make no sample (and keep the work per symbol
    to once a second). No interval is learned across a halt, a closed market or a primary outage: those reset
    the start of the next sample. The hot path does per message one store (the frame's receive time
    on the symbol); the samples are taken at each tick (``Quality.learn``, 4 a second).

Minute bars vs trades
    With both ``trades`` and ``bars`` wanted, each minute in which a symbol's trade was stamped is
    pending until its minute bar arrives (updated bars do not count) and counted as missing if none
    came ``BAR_GRACE_SECONDS`` after the minute ended. A primary outage (disconnect or mute stream)
    forgets every pending minute: Alpaca does not replay, so a bar due while we could not receive it
    is not "missing" from the feed. Pending minutes per symbol are capped (``BARS_PENDING_MAX``).

Gap
    Per primary outage that starts while the market is open: from the last market-data message before
    it to the first after it, observed when that first message arrives if the market is still open.

Lag
    The median age (receive wall time minus the message's own timestamp) of the primary's trades and
    quotes over the last ``LAG_WINDOW_SECONDS``, one sample per frame (its last trade or quote), only
    while connected, and only of ages within ``max_message_age_s``: older messages are rejected as
    ``stale_timestamp`` (and alerted on as such), and a step of the host's own wall clock must not read
    as a lagging stream. It counts against the primary's health (``Health``) only beyond
    ``max_stream_lag_s`` plus the feed's own delay (15 min for delayed_sip): a stream later than that
    routes prices older than the Yahoo fallback's, which polls every few seconds; below it, failing
    over would only swap a slightly late source for a later one.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from exporter.core.clock import Clock
from exporter.core.config import CoreConfig
from exporter.core.events import SubscriptionStatus
from exporter.core.market_hours import market_open
from exporter.core.stats import GAP_BUCKETS, Histogram, SymbolSeries

if TYPE_CHECKING:
    from exporter.core.ingest import SymbolState

HALTING_CODES = frozenset({"2", "H", "P", "Q"})
TRADING_CODES = frozenset({"3", "T"})

INTERVAL_ALPHA = 0.1
INTERVAL_MIN_SAMPLES = 10
INTERVAL_MIN_SECONDS = 1.0
BAR_GRACE_SECONDS = 90.0
BARS_PENDING_MAX = 8
LAG_WINDOW_SECONDS = 10.0
LAG_SAMPLES_MAX = 4096
MARKET_RECHECK_SECONDS = 1.0


class Quality:
    __slots__ = (
        "_gap_from",
        "_lag",
        "_open_checked_at",
        "_pending",
        "channels",
        "clock",
        "config",
        "gaps",
        "lag",
        "lagging",
        "limit",
        "missing",
        "open",
        "other",
        "refused",
        "repairs",
        "reset_at",
        "watch_bars",
    )

    def __init__(self, config: CoreConfig, clock: Clock, other: SymbolSeries) -> None:
        self.config = config
        self.other = other  # where counts of symbols past the label cap go
        self.clock = clock
        self.channels = config.channels
        self.missing: dict[str, tuple[str, ...]] = {channel: () for channel in config.channels}
        self.repairs = 0
        self.refused: tuple[str, ...] = ()
        self.limit: int | None = None
        self.watch_bars = "trades" in config.channels and "bars" in config.channels
        self._pending: set[SymbolState] = set()  # symbols with minutes awaiting their bar
        self.open = False
        self._open_checked_at = -math.inf
        self.reset_at = clock.monotonic()  # no interval sample may start before this
        self._gap_from: float | None = None  # last data before the open outage (monotonic)
        self.gaps = Histogram(GAP_BUCKETS)
        self._lag: deque[tuple[float, float]] = deque(maxlen=LAG_SAMPLES_MAX)  # (monotonic, age)
        self.lag: float | None = None
        self.lagging = False
        self.refresh(clock.monotonic())

    # ---- the session -------------------------------------------------------------------------------
    def refresh(self, now: float) -> None:
        """Re-read the session (at most once a second): opening resets interval learning."""
        self._open_checked_at = now
        cfg = self.config
        is_open = market_open(cfg.market_hours, self.clock.wall_ns() / 1e9, delay_seconds=cfg.market_delay_s)
        if is_open and not self.open:
            self.reset_at = now
        elif not is_open:
            self._gap_from = None  # an outage into the close: no gap of the session to measure
        self.open = is_open

    # ---- the hot path's per frame and symbol part ----------------------------------------------------
    def frame(self, now: float, age: float | None) -> None:
        """After a data frame: ``age`` is its last trade's or quote's age (None without one)."""
        if self._gap_from is not None:  # the first data after an outage (refresh drops it at the close)
            self.gaps.observe(now - self._gap_from)
            self._gap_from = None
        # Only ages the validation accepts: an older message is a stale_timestamp rejection already, and
        # a step of the host's wall clock (NTP, a resumed VM) would otherwise read as lag and fail over.
        if age is not None and age <= self.config.max_message_age_s:
            self._lag.append((now, age))

    def learn(self, symbols: Iterable[SymbolState]) -> None:
        """At each tick: a sample per symbol whose latest message is at least INTERVAL_MIN_SECONDS after
        the previous sample's end. The end is the latest message heard by the tick, at most a tick period
        (0.25 s) after the first message after the silence: far below any interval that matters."""
        learning = self.open
        reset_at = self.reset_at
        for st in symbols:
            start = st.sample_from
            heard = st.heard_at
            dt = heard - start
            if dt < INTERVAL_MIN_SECONDS:
                continue  # nothing new, or the same burst
            st.sample_from = heard
            if learning and not st.halted and start >= reset_at and start >= st.resumed_at:
                n = st.samples = st.samples + 1
                weight = INTERVAL_ALPHA if n > INTERVAL_MIN_SAMPLES else 1.0 / n
                st.mean_dt += (dt - st.mean_dt) * weight
                st.mean_dt2 += (dt * dt - st.mean_dt2) * weight
                st.interval = st.mean_dt2 / (2.0 * st.mean_dt)

    def traded(self, st: SymbolState, minute: float) -> None:
        """A trade stamped in ``minute`` (Unix minutes) other than the symbol's last traded minute."""
        st.trade_minute = minute
        if minute in st.bar_minutes:
            return  # a late trade of a minute whose bar came already
        pending = st.pending_minutes
        pending.add(minute)
        if len(pending) > BARS_PENDING_MAX:
            pending.discard(min(pending))
        self._pending.add(st)

    @staticmethod
    def bar(st: SymbolState, minute: float) -> None:
        st.pending_minutes.discard(minute)
        st.bar_minutes.append(minute)

    def trading_status(self, st: SymbolState, code: str, now: float) -> None:
        if code in HALTING_CODES:
            st.halted = True
        elif code in TRADING_CODES:
            if st.halted:
                st.resumed_at = now
                st.breaker.reset()
            st.halted = False

    # ---- timers and health -------------------------------------------------------------------------
    def tick(self, now: float, wall_s: float, linked: bool, symbols: Iterable[SymbolState]) -> None:
        if now - self._open_checked_at >= MARKET_RECHECK_SECONDS:
            self.refresh(now)
        self.learn(symbols)
        if self._pending:
            self._expire_bars(wall_s)
        samples = self._lag
        if not linked:
            samples.clear()  # lag is measured while connected
        while samples and samples[0][0] < now - LAG_WINDOW_SECONDS:
            samples.popleft()
        if samples and linked:
            ages = sorted(age for _, age in samples)
            self.lag = ages[len(ages) // 2]
        else:
            self.lag = None
        limit = self.config.max_stream_lag_s
        self.lagging = self.lag is not None and limit > 0 and self.lag > limit + self.config.market_delay_s

    def _expire_bars(self, wall_s: float) -> None:
        due_before = (wall_s - BAR_GRACE_SECONDS) // 60.0  # minutes that ended at least the grace ago
        skip = frozenset(self.missing.get("bars", ()))
        for st in list(self._pending):
            pending = st.pending_minutes
            for minute in [m for m in pending if m < due_before]:
                pending.discard(minute)
                if st.symbol not in skip:
                    (st.series or self.other).bars_missing += 1
            if not pending:
                self._pending.discard(st)

    def outage(self, now: float, last_data_at: float | None) -> None:
        """The primary stopped being healthy (disconnected, not subscribed or mute)."""
        self.reset_at = now
        if self.open and last_data_at is not None:
            self._gap_from = last_data_at
        for st in self._pending:
            st.pending_minutes.clear()
            st.trade_minute = math.nan
        self._pending.clear()

    # ---- subscriptions -----------------------------------------------------------------------------
    def subscription(self, event: SubscriptionStatus) -> None:
        self.missing = {channel: tuple(event.missing.get(channel, ())) for channel in self.channels}
        self.repairs = max(self.repairs, event.repairs)
        self.refused = tuple(event.refused)
        self.limit = event.limit

    def subscription_status(self) -> dict[str, object]:
        return {
            "missing": {channel: list(symbols) for channel, symbols in self.missing.items()},
            "repairs": self.repairs,
            "refused": list(self.refused),
            "limit": self.limit,
        }
