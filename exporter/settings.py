"""Every EXPORTER_* / APCA_* variable of the contract (CONTRACT section 3), validated once.

``load_settings()`` returns a ``Settings`` or raises ``ConfigError`` whose ``problems`` are one clear
line per bad variable, naming it; the CLI prints them and exits 2. Secrets are ``SecretStr`` and input
values are never echoed in errors (``hide_input_in_errors``), so a typo in a secret cannot leak it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from exporter.feeds import ALL_CHANNELS, FEEDS, Feed, FeedSpec, yahoo_symbol

CHANNELS = ALL_CHANNELS
ALPACA_STREAM_HOST = "wss://stream.data.alpaca.markets"
# Letters, digits and the separators real tickers use (BRK.B, BRK-B, ^GSPC, EURUSD=X, BTC/USD).
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
_SYMBOL_RE = re.compile(r"^[A-Z0-9][A-Z0-9.\-/=^]{0,20}$")
# Yahoo's spellings may also start with ^ (indices: ^GSPC).
_YAHOO_SYMBOL_RE = re.compile(r"^\^?[A-Z0-9][A-Z0-9.\-/=^]{0,20}$")


def _is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return bool(_HOSTNAME_RE.match(value))


def _check_url(value: str, schemes: tuple[str, ...], shape: str) -> None:
    """Everything the clients would only find out when connecting: the scheme, a host, a real port.

    The messages never repeat the value: a URL may carry credentials (user:password@)."""
    if any(ch.isspace() for ch in value):
        raise ValueError(f"{shape} (no spaces)")
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:  # an unclosed IPv6 bracket
        raise ValueError(f"{shape}; the host is not a valid IPv6 address in brackets") from None
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(shape)
    try:
        port = parts.port
    except ValueError:  # not a number, or beyond 65535
        port = 0
    if port == 0 or parts.netloc.endswith(":"):
        raise ValueError(f"{shape}; the port must be a number from 1 to 65535")
    host = parts.hostname or ""
    if "[" in parts.netloc:
        try:
            ipaddress.IPv6Address(host.partition("%")[0])
        except ValueError:
            raise ValueError(f"{shape}; the host is not a valid IPv6 address in brackets") from None
    elif not _is_host(host):
        raise ValueError(f"{shape}; the host is not a host name or an IP address")


# How each family spells its symbols, for the error naming EXPORTER_SYMBOLS.
_SYMBOL_SYNTAX = {
    "stocks": "it takes stock tickers",
    "crypto": "it takes BASE/QUOTE pairs",
    "options": "it takes OCC option symbols",
}


def _feed_spec(info: ValidationInfo) -> FeedSpec | None:
    """The feed already validated (None when EXPORTER_ALPACA_FEED itself is bad: that is its own error)."""
    feed = info.data.get("alpaca_feed")
    return FEEDS.get(feed) if isinstance(feed, str) else None


def feed_url(feed: str, host: str = ALPACA_STREAM_HOST) -> str:
    return f"{host}{FEEDS[feed].path}"


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EXPORTER_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        hide_input_in_errors=True,
        allow_inf_nan=False,
        frozen=True,
    )

    apca_api_key_id: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("APCA_API_KEY_ID", "apca_api_key_id")
    )
    apca_api_secret_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("APCA_API_SECRET_KEY", "apca_api_secret_key")
    )
    # The feed comes first: the symbol, channel and encoding checks below read it (``info.data``).
    alpaca_feed: Feed = "iex"
    symbols: Annotated[list[str], NoDecode] = Field(default_factory=list)
    alpaca_url: str | None = None
    alpaca_encoding: Literal["msgpack", "json"] = "msgpack"
    alpaca_channels: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["trades"])
    yahoo_url: str = "https://query1.finance.yahoo.com"
    # ALPACA=YAHOO pairs overriding exporter.feeds.yahoo_symbol (CONTRACT section 12).
    yahoo_symbols: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    yahoo_enabled: bool = True
    yahoo_interval_seconds: float = Field(default=5.0, gt=0)
    yahoo_standby_interval_seconds: float = Field(default=60.0, gt=0)
    stale_after_seconds: float = Field(default=30.0, ge=0)
    market_hours: Literal["auto", "always", "never"] = "auto"
    alpaca_backoff_max_seconds: float = Field(default=60.0, gt=0)
    alpaca_connection_limit_backoff_seconds: float = Field(default=90.0, ge=0)
    failback_after_seconds: float = Field(default=30.0, ge=0)
    max_message_age_seconds: float | None = Field(default=None, gt=0)
    max_clock_skew_seconds: float = Field(default=5.0, ge=0)
    circuit_breaker_percent: float = Field(default=20.0, gt=0, le=1000)
    circuit_breaker_cooldown_seconds: float = Field(default=60.0, ge=0)
    max_symbol_series: int = Field(default=500, ge=1, le=100_000)
    host: str = "0.0.0.0"
    port: int = Field(default=9877, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    # Additions (README "More variables"): transport and handshake timing, protection, limits.
    alpaca_ping_interval_seconds: float = Field(default=10.0, gt=0)
    alpaca_ping_timeout_seconds: float = Field(default=5.0, gt=0)
    alpaca_handshake_timeout_seconds: float = Field(default=5.0, gt=0)
    alpaca_fatal_retry_seconds: float = Field(default=300.0, gt=0)
    max_queue_frames: int = Field(default=10_000, ge=1)
    # The primary's median message age (beyond the feed's own delay) that counts as a failure; 0 disables.
    max_stream_lag_seconds: float = Field(default=30.0, ge=0)
    web_config_file: Path | None = None
    # Leader election for an HA pair (CONTRACT section 13).
    leader_election: Literal["off", "kubernetes"] = "off"
    leader_election_lease_name: str = "alpaca-exporter"
    leader_election_namespace: str | None = None
    leader_election_identity: str | None = None
    leader_election_lease_seconds: float = Field(default=15.0, gt=0, le=3600)
    leader_election_renew_deadline_seconds: float = Field(default=10.0, gt=0, le=3600)
    leader_election_retry_period_seconds: float = Field(default=2.0, gt=0, le=3600)
    kubernetes_api_url: str | None = None
    kubernetes_token_file: Path = Path(SERVICE_ACCOUNT_DIR, "token")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", "alpaca_encoding", "market_hours", "alpaca_feed", "leader_election", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("symbols", mode="before")
    @classmethod
    def _parse_symbols(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("symbols")
    @classmethod
    def _normalise_symbols(cls, value: list[str], info: ValidationInfo) -> list[str]:
        seen: dict[str, None] = {}
        bad: list[str] = []
        foreign: list[str] = []
        spec = _feed_spec(info)
        for position, raw in enumerate(value, start=1):
            symbol = raw.strip().upper()
            if not _SYMBOL_RE.match(symbol):
                # Positions, not values: a secret pasted into the wrong variable must not be echoed.
                bad.append(str(position))
            elif spec is not None and not spec.accepts_symbol(symbol):
                foreign.append(str(position))
            seen.setdefault(symbol, None)
        if bad:
            raise ValueError(
                f"entry {', '.join(bad)} is not a valid symbol (letters, digits and . - / = ^, at most 21 characters)"
            )
        if foreign:
            assert spec is not None
            raise ValueError(
                f"entry {', '.join(foreign)} cannot be a symbol of the {spec.name} feed "
                f"({_SYMBOL_SYNTAX[spec.family]}, e.g. {spec.symbol_example})"
            )
        return list(seen)

    @field_validator("yahoo_symbols", mode="before")
    @classmethod
    def _parse_yahoo_symbols(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        pairs: dict[str, str] = {}
        bad: list[str] = []
        repeated: list[str] = []
        for position, entry in enumerate(_split_csv(value), start=1):
            # Split at the first "=": Yahoo's own symbols may contain one (EURUSD=X, GC=F).
            alpaca, sep, yahoo = (part.strip().upper() for part in entry.partition("="))
            if not sep or not _SYMBOL_RE.match(alpaca) or not _YAHOO_SYMBOL_RE.match(yahoo):
                bad.append(str(position))
            elif alpaca in pairs:
                repeated.append(str(position))
            else:
                pairs[alpaca] = yahoo
        if bad:
            raise ValueError(f"entry {', '.join(bad)} is not an ALPACA=YAHOO pair, e.g. BTC/USD=BTC-USD")
        if repeated:
            raise ValueError(f"entry {', '.join(repeated)} maps a symbol an earlier entry already maps")
        return pairs

    @field_validator("alpaca_channels", mode="before")
    @classmethod
    def _parse_channels(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("alpaca_channels")
    @classmethod
    def _check_channels(cls, value: list[str], info: ValidationInfo) -> list[str]:
        spec = _feed_spec(info)
        allowed = CHANNELS if spec is None else spec.channels
        unknown = [str(i) for i, c in enumerate(value, start=1) if c not in allowed]
        if unknown:
            of_feed = "" if spec is None else f" of the {spec.name} feed"
            raise ValueError(f"entry {', '.join(unknown)} is not a channel{of_feed}; allowed: {', '.join(allowed)}")
        if not value:
            raise ValueError("at least one channel is needed")
        return list(dict.fromkeys(value))

    @field_validator("alpaca_encoding")
    @classmethod
    def _check_encoding(cls, value: str, info: ValidationInfo) -> str:
        spec = _feed_spec(info)
        if spec is not None and value not in spec.encodings:
            raise ValueError(
                f"the {spec.name} feed is {' or '.join(spec.encodings)} only (Alpaca refuses {value} with 412); "
                f"set EXPORTER_ALPACA_ENCODING={spec.encodings[0]}"
            )
        return value

    @field_validator("alpaca_url")
    @classmethod
    def _check_ws_url(cls, value: str | None) -> str | None:
        if value is not None:
            _check_url(value, ("ws", "wss"), "must be a ws:// or wss:// URL, e.g. ws://127.0.0.1:8765/v2/iex")
        return value

    @field_validator("kubernetes_api_url")
    @classmethod
    def _check_api_url(cls, value: str | None) -> str | None:
        if value is not None:
            _check_url(value, ("http", "https"), "must be an http:// or https:// URL, e.g. https://10.96.0.1:443")
            value = value.rstrip("/")
        return value

    @field_validator("leader_election_lease_name", "leader_election_namespace")
    @classmethod
    def _check_object_name(cls, value: str | None) -> str | None:
        if value is not None and not _DNS_LABEL_RE.match(value):
            raise ValueError("must be a Kubernetes name: lower-case letters, digits and '-', at most 63 characters")
        return value

    @field_validator("leader_election_identity")
    @classmethod
    def _check_identity(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        value = value.strip()
        if not _is_host(value):
            raise ValueError("must be an IP address or a host name, e.g. 0.0.0.0, 127.0.0.1, ::, localhost")
        return value

    @field_validator("yahoo_url")
    @classmethod
    def _check_http_url(cls, value: str) -> str:
        _check_url(value, ("http", "https"), "must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        problems = []
        if self.yahoo_standby_interval_seconds < self.yahoo_interval_seconds:
            problems.append(
                "EXPORTER_YAHOO_STANDBY_INTERVAL_SECONDS must not be shorter than EXPORTER_YAHOO_INTERVAL_SECONDS"
            )
        if not (
            0
            < self.leader_election_retry_period_seconds
            < self.leader_election_renew_deadline_seconds
            < self.leader_election_lease_seconds
        ):
            raise ValueError(
                "EXPORTER_LEADER_ELECTION_RETRY_PERIOD_SECONDS < EXPORTER_LEADER_ELECTION_RENEW_DEADLINE_SECONDS"
                " < EXPORTER_LEADER_ELECTION_LEASE_SECONDS must hold (the leader steps down before its lease expires)"
            )
        if self.leader_election == "kubernetes" and self.api_url is None:
            raise ValueError(
                "EXPORTER_KUBERNETES_API_URL: required for EXPORTER_LEADER_ELECTION=kubernetes outside a pod"
                " (KUBERNETES_SERVICE_HOST is not set)"
            )
        if self.alpaca_feed == "test" and self.symbols and any(s != "FAKEPACA" for s in self.symbols):
            problems.append("EXPORTER_SYMBOLS: the test feed streams only FAKEPACA: set EXPORTER_SYMBOLS=FAKEPACA")
        strangers = [str(i) for i, s in enumerate(self.yahoo_symbols, start=1) if s not in self.symbols]
        if strangers:
            problems.append(
                f"EXPORTER_YAHOO_SYMBOLS: entry {', '.join(strangers)} maps a symbol that is not in EXPORTER_SYMBOLS"
            )
        if problems:
            # One error carries them all (pydantic stops at the first raise); load_settings splits the lines.
            raise ValueError("\n".join(problems))
        return self

    # Derived values: computed, never stored twice.
    @property
    def stream_url(self) -> str:
        return self.alpaca_url or feed_url(self.alpaca_feed)

    @property
    def message_max_age_seconds(self) -> float:
        if self.max_message_age_seconds is not None:
            return self.max_message_age_seconds
        return 60.0 + FEEDS[self.alpaca_feed].delay_s

    @property
    def yahoo_symbol_map(self) -> dict[str, str]:
        """Yahoo's spelling of every symbol: the EXPORTER_YAHOO_SYMBOLS override, else the feed's mapping."""
        family = FEEDS[self.alpaca_feed].family
        return {s: self.yahoo_symbols.get(s) or yahoo_symbol(s, family) for s in self.symbols}

    @property
    def market_hours_mode(self) -> str:
        """The calendar the staleness timer follows: ``regular``, ``overnight``, ``always`` or ``never``."""
        if self.market_hours != "auto":
            return self.market_hours
        return FEEDS[self.alpaca_feed].session

    @property
    def api_url(self) -> str | None:
        """The Kubernetes API server: EXPORTER_KUBERNETES_API_URL, else the in-cluster service."""
        if self.kubernetes_api_url:
            return self.kubernetes_api_url
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            return None
        return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"

    @property
    def lease_namespace(self) -> str:
        """EXPORTER_LEADER_ELECTION_NAMESPACE, else the service account's namespace, else ``default``."""
        if self.leader_election_namespace:
            return self.leader_election_namespace
        try:
            return Path(SERVICE_ACCOUNT_DIR, "namespace").read_text().strip() or "default"
        except OSError:
            return "default"

    @property
    def lease_identity(self) -> str:
        """EXPORTER_LEADER_ELECTION_IDENTITY, else POD_NAME, else the host name."""
        return self.leader_election_identity or os.environ.get("POD_NAME") or socket.gethostname()

    def run_problems(self) -> list[str]:
        """What `run` needs beyond well-formed values."""
        present = {
            "APCA_API_KEY_ID": self.apca_api_key_id is not None
            and bool(self.apca_api_key_id.get_secret_value().strip()),
            "APCA_API_SECRET_KEY": self.apca_api_secret_key is not None
            and bool(self.apca_api_secret_key.get_secret_value().strip()),
            "EXPORTER_SYMBOLS": bool(self.symbols),
        }
        return [f"{name}: {why}" for name, why in REQUIRED_FOR_RUN.items() if not present[name]]

    def secrets(self) -> list[str]:
        return [s.get_secret_value() for s in (self.apca_api_key_id, self.apca_api_secret_key) if s is not None]

    def effective(self) -> dict[str, str]:
        """Every setting by its variable name, secrets masked: what check-config prints."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            var = env_name(name)
            if isinstance(value, SecretStr):
                out[var] = "********" if value.get_secret_value() else "(empty)"
            elif value is None:
                out[var] = "(unset)"
            elif isinstance(value, list):
                out[var] = ",".join(value)
            elif isinstance(value, dict):
                out[var] = ",".join(f"{k}={v}" for k, v in value.items())
            else:
                out[var] = str(value)
        out["EXPORTER_ALPACA_URL"] = f"{self.stream_url}" + ("" if self.alpaca_url else " (derived from the feed)")
        if self.max_message_age_seconds is None:
            out["EXPORTER_MAX_MESSAGE_AGE_SECONDS"] = f"{self.message_max_age_seconds:g} (default for the feed)"
        # The mapping in force, overrides and defaults alike, for the symbols Yahoo spells differently.
        renamed = [f"{a}={y}" for a, y in self.yahoo_symbol_map.items() if a != y]
        out["EXPORTER_YAHOO_SYMBOLS"] = ",".join(renamed) if renamed else "(none: Yahoo spells every symbol alike)"
        # Credentials can hide in other values too (user:password@ in a URL, a key pasted into a query
        # string): check-config prints these values, so mask them there as well.
        from exporter.logs import redact

        spellings = {
            spelled
            for secret in self.secrets()
            if len(secret.strip()) >= 4
            for spelled in (secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret, safe=""))
        }
        masked: dict[str, str] = {}
        for var, text in out.items():
            for spelled in sorted(spellings, key=len, reverse=True):
                text = text.replace(spelled, "********")
            masked[var] = redact(text)  # URL userinfo, credential-like query parameters
        return masked


def _filled(secret: SecretStr | None) -> bool:
    return secret is not None and bool(secret.get_secret_value().strip())


def env_name(field: str) -> str:
    if field.startswith("apca_"):
        return field.upper()
    return f"EXPORTER_{field.upper()}"


class ConfigError(Exception):
    """Invalid configuration; ``problems`` holds one line per problem, each naming its variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _describe(error: Mapping[str, Any]) -> str:
    loc = error.get("loc") or ()
    msg = str(error.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    if not loc:
        # Model-level checks name their variables in the message.
        return msg
    field = str(loc[0])
    return f"{env_name(field)}: {msg}"


REQUIRED_FOR_RUN = {
    "APCA_API_KEY_ID": "required for run (your Alpaca API key id)",
    "APCA_API_SECRET_KEY": "required for run (your Alpaca API secret key)",
    "EXPORTER_SYMBOLS": "required for run, e.g. AAPL,MSFT,SPY",
}


def _missing_required(env_file: str | Path | None) -> list[str]:
    """Required variables absent from both the environment and the .env file (for a complete report)."""
    from dotenv import dotenv_values

    file_values: dict[str, str | None] = {}
    if env_file is not None and Path(env_file).is_file():
        file_values = {k.upper(): v for k, v in dotenv_values(env_file).items()}
    env = {k.upper(): v for k, v in os.environ.items()}
    return [
        f"{name}: {why}"
        for name, why in REQUIRED_FOR_RUN.items()
        if not (env.get(name) or "").strip() and not (file_values.get(name) or "").strip()
    ]


def load_settings(*, for_run: bool = False, env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    try:
        settings = Settings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        problems = [line for e in exc.errors() for line in _describe(e).split("\n")]
        if for_run:
            named = {p.split(":", 1)[0] for p in problems}
            problems += [p for p in _missing_required(env_file) if p.split(":", 1)[0] not in named]
        raise ConfigError(problems) from None
    except (UnicodeDecodeError, OSError) as exc:
        raise ConfigError([f"{env_file}: cannot be read as a UTF-8 .env file ({type(exc).__name__})"]) from None
    if for_run:
        problems = settings.run_problems()
        if problems:
            raise ConfigError(problems)
    return settings
