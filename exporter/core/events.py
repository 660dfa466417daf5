"""Typed inputs of the core: what the adapters observed, nothing they decided.

Adapters (the Alpaca client, the Yahoo poller) call an ``emit(event)`` callback with these; the daemon
queues them and one router task feeds them to ``exporter.core.router.Core.handle``. Events carry no
timestamps of their own: the core reads its injected clock when it handles them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from exporter.core.messages import Message

ConnState = Literal["Disconnected", "Connecting", "Authenticating", "Connected"]
CONN_STATES: tuple[ConnState, ...] = ("Disconnected", "Connecting", "Authenticating", "Connected")

# Exact label values of alpaca_errors_total{type}.
ALPACA_ERROR_TYPES: tuple[str, ...] = (
    "connection_failed",
    "connection_lost",
    "auth_failed",
    "auth_timeout",
    "not_authenticated",
    "symbol_limit_exceeded",
    "connection_limit_exceeded",
    "slow_client",
    "insufficient_subscription",
    "invalid_syntax",
    "server_error",
    "decode_error",
    "stale_stream",
)

# Label values of yahoo_errors_total{type} (an addition of this exporter; see README).
YAHOO_ERROR_TYPES: tuple[str, ...] = (
    "rate_limited",  # 429
    "forbidden",  # 403
    "server_error",  # 5xx
    "timeout",
    "connection_failed",
    "bad_body",  # HTML, empty, non-JSON, unexpected shape
    "unknown_symbol",  # 404 with chart.error
    "bad_request",  # 422 and other 4xx: our bug
    "no_price",  # chart:null, null/missing/non-positive regularMarketPrice
    "stale_price",  # regularMarketTime too old while the session is open
)


@dataclass(frozen=True, slots=True)
class PrimaryConnection:
    """The Alpaca client's connection state changed (the four states of alpaca_connection_status)."""

    state: ConnState
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PrimaryAuthenticated:
    """Authentication result: True after `authenticated`, False when the connection is lost or auth fails."""

    ok: bool


@dataclass(frozen=True, slots=True)
class PrimarySubscribed:
    """The server's `subscription` ack: the full confirmed set of symbols (union over channels)."""

    symbols: frozenset[str]


@dataclass(frozen=True, slots=True)
class SubscriptionStatus:
    """The client's comparison of the server's latest subscription ack with what it wants (CONTRACT §11).

    Sent after every ack and after every repair attempt's outcome. ``missing`` has one entry per wanted
    channel (the subscribe key, e.g. ``trades``, ``updatedBars``): the wanted symbols the ack left out,
    empty when complete. ``repairs`` counts subscribe messages re-sent for left-out symbols since start.
    ``refused`` are symbols given up on because the plan's symbol limit (a 405, ``limit`` when the
    server named it) cannot hold them; they are also in ``missing``."""

    missing: Mapping[str, tuple[str, ...]]
    repairs: int = 0
    refused: tuple[str, ...] = ()
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class PrimaryError:
    """An error worth counting; ``type`` is one of ALPACA_ERROR_TYPES."""

    type: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class PrimaryControl:
    """``count`` control messages (connected/authenticated/subscription/error frames) were received."""

    count: int = 1


@dataclass(frozen=True, slots=True)
class PrimaryData:
    """One decoded data frame from the Alpaca stream.

    ``received_at`` is the monotonic time the frame came off the socket (the reader's clock read), and
    ``decode_seconds`` what decoding it took, so the core can measure decode-to-routed processing time.
    """

    messages: Sequence[Message]
    received_at: float
    decode_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class FallbackPrice:
    """A price from the Yahoo poller. ``ts_ns`` is Yahoo's regularMarketTime in ns (the quote's own time)."""

    symbol: str
    price: float
    ts_ns: int


@dataclass(frozen=True, slots=True)
class FallbackPoll:
    """One poll request finished. ``ok`` only when it produced a fresh price: a Yahoo that answers without
    usable prices (null, stale) must not keep the fallback healthy.

    ``period_s`` is the poll period in force (standby or active), which bounds how long a success keeps
    the fallback healthy (three periods). ``error`` is one of YAHOO_ERROR_TYPES when not ok.
    """

    ok: bool
    period_s: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DependencyLatency:
    """A timed call to an upstream: dependency in {alpaca, yahoo}; method e.g. handshake, auth, poll."""

    dependency: Literal["alpaca", "yahoo"]
    method: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: re-evaluate timers (staleness, health windows, half-open breakers, hysteresis)."""


Event = (
    PrimaryConnection
    | PrimaryAuthenticated
    | PrimarySubscribed
    | SubscriptionStatus
    | PrimaryError
    | PrimaryControl
    | PrimaryData
    | FallbackPrice
    | FallbackPoll
    | DependencyLatency
    | Tick
)

Emit = Callable[[Event], None]
