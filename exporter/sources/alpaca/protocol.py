"""The Alpaca stream protocol without I/O: URLs, outgoing messages, error codes, ack checks, retry policy.

Everything here is pure (no sockets, no clocks, no logging) so the client's decisions are unit-tested
on their own. The client (``client.py``) feeds it what it saw and does what it says.
"""

from __future__ import annotations

import enum
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import msgspec

from exporter.feeds import ALL_CHANNELS, FEEDS
from exporter.sources.alpaca.codec import Encoding, SubscriptionAck
from exporter.sources.backoff import Backoff, Jitter

DEFAULT_HOST: Final = "wss://stream.data.alpaca.markets"

# EXPORTER_ALPACA_FEED → path on the stream host (CONTRACT sections 3 and 12).
FEED_PATHS: Final[dict[str, str]] = {name: spec.path for name, spec in FEEDS.items()}

# Channels a client may subscribe to on any feed (which ones a feed offers is checked by the settings;
# corrections/cancelErrors follow trades).
CHANNELS: Final[tuple[str, ...]] = ALL_CHANNELS


def stream_url(feed: str, host: str = DEFAULT_HOST) -> str:
    """The stream URL of a feed, e.g. ``stream_url("iex")`` → ``wss://stream.data.alpaca.markets/v2/iex``."""
    try:
        path = FEED_PATHS[feed]
    except KeyError:
        raise ValueError(f"unknown Alpaca feed {feed!r}; expected one of {sorted(FEED_PATHS)}") from None
    return host.rstrip("/") + path


def content_type_headers(encoding: Encoding) -> dict[str, str]:
    """Upgrade-request headers that select the frame encoding (no header means JSON)."""
    return {"Content-Type": "application/msgpack"} if encoding == "msgpack" else {}


def _encode(payload: dict[str, object], encoding: Encoding) -> str | bytes:
    # JSON goes out as a text frame (str), msgpack as a binary frame (bytes), as the SDKs do.
    if encoding == "msgpack":
        return msgspec.msgpack.encode(payload)
    return msgspec.json.encode(payload).decode()


def auth_message(key: str, secret: str, encoding: Encoding) -> str | bytes:
    """``{"action":"auth","key":…,"secret":…}``. The result holds the secret: never log it."""
    return _encode({"action": "auth", "key": key, "secret": secret}, encoding)


def subscription_plan(channels: Iterable[str], symbols: Iterable[str]) -> dict[str, frozenset[str]]:
    """The wanted state: every channel times every symbol. Rejects unknown channels."""
    wanted_symbols = frozenset(symbols)
    plan: dict[str, frozenset[str]] = {}
    for channel in channels:
        if channel not in CHANNELS:
            raise ValueError(f"unknown Alpaca channel {channel!r}; expected a subset of {CHANNELS}")
        plan[channel] = wanted_symbols
    return plan


def subscribe_message(plan: Mapping[str, Iterable[str]], encoding: Encoding) -> str | bytes:
    """``{"action":"subscribe","trades":[…],…}`` for the given set (symbols sorted, stable)."""
    payload: dict[str, object] = {"action": "subscribe"}
    for channel, symbols in plan.items():
        payload[channel] = sorted(symbols)
    return _encode(payload, encoding)


# (Channel, symbol) entries per subscribe message. Alpaca documents no size limit, but large lists were
# seen applied only in part (the first symbols of the list), and alpaca-py fragments anything over
# 32 KiB. 200 entries of at most 32 characters (+3 bytes of JSON each) stay under 7 KiB: one
# unfragmented frame, and far fewer symbols than the lists that were seen half-applied.
SUBSCRIBE_CHUNK_ENTRIES: Final = 200


def plan_symbols(plan: Mapping[str, Iterable[str]]) -> list[str]:
    """Every symbol of a plan, sorted."""
    return sorted({symbol for symbols in plan.values() for symbol in symbols})


def restrict(plan: Mapping[str, frozenset[str]], symbols: Iterable[str]) -> dict[str, frozenset[str]]:
    """The part of ``plan`` about ``symbols`` (channels left empty are dropped)."""
    keep = frozenset(symbols)
    out = {channel: wanted & keep for channel, wanted in plan.items()}
    return {channel: wanted for channel, wanted in out.items() if wanted}


def chunk_plan(
    plan: Mapping[str, frozenset[str]], max_entries: int = SUBSCRIBE_CHUNK_ENTRIES
) -> list[dict[str, frozenset[str]]]:
    """Split a plan into subscribe messages of at most ``max_entries`` (channel, symbol) entries.

    A symbol's channels always travel together (a symbol bigger than the bound gets a message of its
    own), so a refusal (405) is about whole symbols."""
    chunks: list[dict[str, frozenset[str]]] = []
    batch: list[str] = []
    entries = 0
    for symbol in plan_symbols(plan):
        size = sum(1 for wanted in plan.values() if symbol in wanted)
        if batch and entries + size > max_entries:
            chunks.append(restrict(plan, batch))
            batch, entries = [], 0
        batch.append(symbol)
        entries += size
    if batch:
        chunks.append(restrict(plan, batch))
    return chunks


def halve(plan: Mapping[str, frozenset[str]]) -> tuple[dict[str, frozenset[str]], dict[str, frozenset[str]]]:
    """A plan of two or more symbols split in two by symbol (for narrowing down a 405)."""
    symbols = plan_symbols(plan)
    middle = len(symbols) // 2
    return restrict(plan, symbols[:middle]), restrict(plan, symbols[middle:])


def named_limit(msg: str) -> int | None:
    """The symbol limit a 405's text names, if any (Alpaca's own text, "symbol limit exceeded", has none)."""
    found = re.search(r"\d+", msg)
    return int(found.group()) if found else None


# --------------------------------------------------------------------------------------------------
# Error codes


class Policy(enum.Enum):
    """What an error means for the connection."""

    BENIGN = "benign"  # nothing to do (403 already authenticated)
    TRANSIENT = "transient"  # reconnect with jittered exponential backoff
    CONNECTION_LIMIT = "connection_limit"  # reconnect no sooner than the connection-limit floor
    FATAL = "fatal"  # credentials/plan/request can't succeed as configured: retry only slowly


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """How one server error code is counted and handled.

    ``type`` is the ``alpaca_errors_total{type}`` label value. ``session_ok`` is true when the error
    refers to one request and the server keeps the session as it was (e.g. 405 leaves subscriptions
    unchanged), so an established stream need not be dropped for it.
    """

    code: int
    type: str
    policy: Policy
    session_ok: bool
    meaning: str


_ERRORS: Final[dict[int, ErrorInfo]] = {
    info.code: info
    for info in (
        ErrorInfo(400, "invalid_syntax", Policy.FATAL, True, "invalid syntax"),
        ErrorInfo(401, "not_authenticated", Policy.TRANSIENT, False, "not authenticated"),
        ErrorInfo(402, "auth_failed", Policy.FATAL, False, "auth failed"),
        # Not in the catalogue's list → "server_error" (the catalogue's bucket for other codes).
        ErrorInfo(403, "server_error", Policy.BENIGN, True, "already authenticated"),
        ErrorInfo(404, "auth_timeout", Policy.TRANSIENT, False, "auth timeout"),
        ErrorInfo(405, "symbol_limit_exceeded", Policy.FATAL, True, "symbol limit exceeded"),
        ErrorInfo(406, "connection_limit_exceeded", Policy.CONNECTION_LIMIT, False, "connection limit"),
        ErrorInfo(407, "slow_client", Policy.TRANSIENT, False, "slow client"),
        ErrorInfo(408, "server_error", Policy.FATAL, False, "v2 not enabled"),
        ErrorInfo(409, "insufficient_subscription", Policy.FATAL, False, "insufficient subscription"),
        ErrorInfo(410, "server_error", Policy.FATAL, True, "invalid subscribe action for this feed"),
        ErrorInfo(411, "server_error", Policy.FATAL, False, "insufficient scope"),
        ErrorInfo(412, "server_error", Policy.FATAL, False, "this stream needs msgpack"),
        ErrorInfo(413, "server_error", Policy.FATAL, True, "star subscription not allowed"),
        ErrorInfo(500, "server_error", Policy.TRANSIENT, False, "internal error"),
    )
}


def classify_error(code: int) -> ErrorInfo:
    """The handling of a server error code; unknown codes are transient ``server_error``."""
    info = _ERRORS.get(code)
    if info is None:
        return ErrorInfo(code, "server_error", Policy.TRANSIENT, False, "unknown error code")
    return info


def classify_http_status(status: int) -> Policy:
    """Policy for an HTTP status that refused the WebSocket upgrade.

    429 (too many connection attempts) waits like a connection-limit refusal; other 4xx (unknown path,
    refused credentials) cannot succeed by retrying soon; 5xx and anything else are transient.
    """
    if status == 429:
        return Policy.CONNECTION_LIMIT
    if 400 <= status < 500:
        return Policy.FATAL
    return Policy.TRANSIENT


# --------------------------------------------------------------------------------------------------
# Subscription acks


@dataclass(frozen=True, slots=True)
class AckCheck:
    """A subscription ack compared with the wanted state, channel by channel."""

    confirmed: frozenset[str]  # union of symbols over every channel the server reports
    missing: dict[str, frozenset[str]]  # wanted but not confirmed
    extra: dict[str, frozenset[str]]  # confirmed but not wanted (ignoring the trades mirrors)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.extra


# Channels the server fills from `trades` by itself; never wanted explicitly, never "extra".
_MIRRORS: Final = frozenset({"corrections", "cancelErrors"})


def check_ack(ack: SubscriptionAck, wanted: Mapping[str, frozenset[str]]) -> AckCheck:
    """Compare the server's full subscription state with the wanted one."""
    state = ack.channels()
    confirmed: set[str] = set()
    for symbols in state.values():
        confirmed |= symbols
    missing: dict[str, frozenset[str]] = {}
    extra: dict[str, frozenset[str]] = {}
    for channel, symbols in state.items():
        if channel in _MIRRORS:
            continue
        want = wanted.get(channel, frozenset())
        lacking = want - symbols
        surplus = symbols - want
        if lacking:
            missing[channel] = lacking
        if surplus:
            extra[channel] = surplus
    for channel, want in wanted.items():
        if channel not in state and want:
            missing[channel] = want
    return AckCheck(frozenset(confirmed), missing, extra)


# --------------------------------------------------------------------------------------------------
# Reconnect policy


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """The reconnect policy's knobs (seconds)."""

    backoff_base: float = 1.0
    backoff_max: float = 60.0
    connection_limit_backoff: float = 90.0
    fatal_retry: float = 300.0
    healthy_reset: float = 60.0
    jitter: Jitter = "equal"


class ReconnectPolicy:
    """Decides how long to wait before the next connection attempt (CONTRACT section 7).

    - ``FATAL``: ``fatal_retry`` (minutes), plus up to 10 % jitter — never a hot loop.
    - ``CONNECTION_LIMIT``: at least ``connection_limit_backoff`` (Alpaca holds a dropped connection's
      slot ~90 s), plus up to 10 % jitter, and never less than the exponential step.
    - ``TRANSIENT``: the jittered exponential backoff, capped at ``backoff_max``.
    - ``BENIGN``: treated as transient if it ever ends a connection.

    The exponential backoff resets when a connection stayed healthy (subscribed) for ``healthy_reset``.
    """

    def __init__(self, settings: RetrySettings, *, rng: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self._rng = rng
        self.backoff = Backoff(settings.backoff_base, settings.backoff_max, jitter=settings.jitter, rng=rng)

    def connection_ended(self, healthy_seconds: float) -> None:
        """Report how long the ended connection had been healthy (0 if it never got subscribed)."""
        if healthy_seconds >= self.settings.healthy_reset:
            self.backoff.reset()

    def delay(self, policy: Policy) -> float:
        """Seconds to wait before reconnecting after a failure of this policy class."""
        exponential = self.backoff.next_delay()
        if policy is Policy.FATAL:
            return self.settings.fatal_retry * (1 + 0.1 * self._rng())
        if policy is Policy.CONNECTION_LIMIT:
            floor = self.settings.connection_limit_backoff * (1 + 0.1 * self._rng())
            return max(floor, exponential)
        return exponential
