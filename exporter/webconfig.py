"""The Prometheus exporter-toolkit web configuration file (``EXPORTER_WEB_CONFIG_FILE``).

The same YAML that node_exporter and blackbox_exporter read with ``--web.config.file``::

    tls_server_config:
      cert_file: server.crt          # relative paths resolve against the file's own directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional, default NoClientCert
      client_ca_file: ca.crt         # required by the Verify* client auth types
      min_version: TLS12             # optional: TLS10 | TLS11 | TLS12 (default) | TLS13
      max_version: TLS13             # optional
    basic_auth_users:
      prometheus: $2b$12$...         # bcrypt hashes only (htpasswd -nBC 10 "" | tr -d ':\\n')
    http_server_config:
      http2: true                    # accepted for compatibility; this server speaks HTTP/1.1

Like the toolkit (strict YAML decoding), unknown keys are errors, and so are the toolkit options this
server cannot honour (``cipher_suites``, ``curve_preferences``, ``client_allowed_sans``, inline
``cert``/``key``, and the client auth types that request a certificate without verifying it —
Python's ssl module verifies every client certificate it asks for). Refusing beats silently serving a
weaker setup than the operator wrote.

Basic auth: every request but the open paths (``/healthz``) needs a user of ``basic_auth_users`` and
its password. bcrypt is deliberately slow (≈ 50 to 250 ms), so checks run in a pool of their own (one
thread, at most ``_MAX_PENDING`` checks waiting, more are refused with ``AuthBusy``): a wrong-password
flood then neither takes more than one core nor queues in the loop's default executor, which host name
lookups (the upstream reconnects) share. A check whose request was cancelled before it started is
dropped. A successful (user, password) pair is remembered as a SHA-256 digest for later requests,
compared in constant time, as exporter-toolkit caches verified credentials. Unknown users still pay one
bcrypt check against a dummy hash, so response time does not reveal which user names exist.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import hashlib
import hmac
import logging
import re
import ssl
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

__all__ = ["CHALLENGE", "AuthBusy", "BasicAuth", "TLSServerConfig", "WebConfig", "load_web_config"]

log = logging.getLogger(__name__)

REALM = "alpaca-exporter"
CHALLENGE = f'Basic realm="{REALM}"'  # the WWW-Authenticate value of a 401

_BCRYPT_HASH = re.compile(r"^\$2[aby]\$\d{2}\$[./A-Za-z0-9]{53}$")

_TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

_CLIENT_AUTH: dict[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_CLIENT_AUTH_UNSUPPORTED = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")

_TOP_KEYS = {"tls_server_config", "basic_auth_users", "http_server_config"}
_TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version"}
_TLS_UNSUPPORTED = {
    "cert",
    "key",
    "client_ca",
    "cipher_suites",
    "curve_preferences",
    "prefer_server_cipher_suites",
    "client_allowed_sans",
}
_HTTP_KEYS = {"http2"}


@dataclass(frozen=True)
class TLSServerConfig:
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"
    max_version: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """A server context; raises ValueError naming the file when a certificate or key is unusable."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = _TLS_VERSIONS[self.min_version]
        if self.max_version is not None:
            ctx.maximum_version = _TLS_VERSIONS[self.max_version]
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"tls_server_config: cannot load cert_file {self.cert_file} with key_file {self.key_file}: {exc}"
            ) from None
        ctx.verify_mode = _CLIENT_AUTH[self.client_auth_type]
        if self.client_ca_file is not None:
            try:
                ctx.load_verify_locations(cafile=self.client_ca_file)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(
                    f"tls_server_config: cannot load client_ca_file {self.client_ca_file}: {exc}"
                ) from None
        return ctx


@dataclass(frozen=True)
class WebConfig:
    """What the endpoints enforce. An empty file (or no file) means plain HTTP without auth."""

    tls: TLSServerConfig | None = None
    # user → bcrypt hash
    basic_auth_users: Mapping[str, bytes] = field(default_factory=dict)
    source: Path | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        return self.tls.ssl_context() if self.tls is not None else None


def _fail(path: Path, problem: str) -> ValueError:
    return ValueError(f"web config {path}: {problem}")


def _mapping(path: Path, value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _check_keys(path: Path, data: Mapping[str, Any], where: str, known: set[str], unsupported: set[str]) -> None:
    for key in data:
        name = f"{where}.{key}" if where else str(key)
        if key in unsupported:
            raise _fail(path, f"{name} is not supported by alpaca-exporter")
        if key not in known:
            raise _fail(path, f"unknown key {name} (known: {', '.join(sorted(known))})")


def _file(path: Path, base: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise _fail(path, f"{where} must be a file path")
    resolved = (base / value) if not Path(value).is_absolute() else Path(value)
    if not resolved.is_file():
        raise _fail(path, f"{where} {resolved} does not exist or is not a file")
    return resolved


def _tls(path: Path, raw: Any) -> TLSServerConfig | None:
    data = _mapping(path, raw, "tls_server_config")
    if not data:
        return None
    _check_keys(path, data, "tls_server_config", _TLS_KEYS, _TLS_UNSUPPORTED)
    for required in ("cert_file", "key_file"):
        if required not in data:
            raise _fail(path, f"tls_server_config.{required} is required")
    base = path.parent
    auth = data.get("client_auth_type") or "NoClientCert"
    if auth in _CLIENT_AUTH_UNSUPPORTED:
        raise _fail(
            path,
            f"tls_server_config.client_auth_type {auth} is not supported (Python's ssl verifies every client "
            "certificate it requests): use VerifyClientCertIfGiven or RequireAndVerifyClientCert",
        )
    if auth not in _CLIENT_AUTH:
        raise _fail(path, f"tls_server_config.client_auth_type {auth!r} is not one of {', '.join(_CLIENT_AUTH)}")
    ca = data.get("client_ca_file")
    ca_path = _file(path, base, ca, "tls_server_config.client_ca_file") if ca else None
    if ca_path is not None and auth == "NoClientCert":
        raise _fail(path, "tls_server_config.client_ca_file is set without a client_auth_type that verifies")
    if ca_path is None and auth != "NoClientCert":
        raise _fail(path, f"tls_server_config.client_auth_type {auth} needs client_ca_file")
    versions: dict[str, str | None] = {}
    for key, default in (("min_version", "TLS12"), ("max_version", None)):
        value = data.get(key, default)
        if value is not None and value not in _TLS_VERSIONS:
            raise _fail(path, f"tls_server_config.{key} {value!r} is not one of {', '.join(_TLS_VERSIONS)}")
        versions[key] = value
    return TLSServerConfig(
        cert_file=_file(path, base, data["cert_file"], "tls_server_config.cert_file"),
        key_file=_file(path, base, data["key_file"], "tls_server_config.key_file"),
        client_auth_type=auth,
        client_ca_file=ca_path,
        min_version=versions["min_version"] or "TLS12",
        max_version=versions["max_version"],
    )


def _users(path: Path, raw: Any) -> dict[str, bytes]:
    data = _mapping(path, raw, "basic_auth_users")
    users: dict[str, bytes] = {}
    for user, hashed in data.items():
        if not isinstance(user, str) or not user:
            raise _fail(path, f"basic_auth_users: user name {user!r} must be a non-empty string (quote it)")
        if ":" in user:
            raise _fail(path, f"basic_auth_users: user name {user!r} must not contain ':'")
        # Never echo the value: it may be a plaintext password written by mistake.
        if not isinstance(hashed, str) or not _BCRYPT_HASH.match(hashed):
            raise _fail(path, f"basic_auth_users.{user} is not a bcrypt hash ($2a$/$2b$/$2y$, 60 characters)")
        users[user] = hashed.encode("ascii")
    return users


def load_web_config(path: str | Path) -> WebConfig:
    """Read and validate a web config file; every problem is a ValueError naming the file and the key.

    The TLS context is built once here, so a bad certificate or key fails at start-up, not at the
    first connection.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise _fail(path, "cannot read: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise _fail(path, f"invalid YAML{where}: {problem}") from None
    top = _mapping(path, data, "the document")
    _check_keys(path, top, "", _TOP_KEYS, set())
    http = _mapping(path, top.get("http_server_config"), "http_server_config")
    _check_keys(path, http, "http_server_config", _HTTP_KEYS, {"headers"})
    config = WebConfig(
        tls=_tls(path, top.get("tls_server_config")),
        basic_auth_users=_users(path, top.get("basic_auth_users")),
        source=path,
    )
    config.ssl_context()
    if config.basic_auth_users and config.tls is None:
        log.warning(
            "basic auth is configured without TLS: passwords cross the network in clear text",
            extra={"web_config": str(path)},
        )
    return config


# ---------------------------------------------------------------------------------------------------
# Basic auth.

_CACHE_MAX = 1024
_MAX_PENDING = 16  # bcrypt checks queued or running; more are refused (AuthBusy)


class AuthBusy(Exception):
    """Too many password checks are waiting: the request is refused without one."""


class BasicAuth:
    """Demands one of ``users`` (bcrypt hashes) on every path not in ``open_paths``; the server asks ``allows``."""

    def __init__(self, users: Mapping[str, bytes], open_paths: Collection[str] = ("/healthz",)) -> None:
        self._users = dict(users)
        self._open = frozenset(open_paths)
        # user → SHA-256 of (hash, password) that bcrypt accepted; bounded, cleared when full.
        self._ok: dict[str, bytes] = {}
        # Checked for unknown users, so that they cost what known ones do (no user enumeration by
        # timing): same cost factor as the dearest configured hash, made on first need.
        self._cost = max((int(h[4:6]) for h in self._users.values()), default=10)
        self._dummy: bytes | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None  # made on first need
        self._pending = 0
        self.bcrypt_checks = 0  # bcrypt runs so far (dropped checks do not count)

    def _dummy_check(self, password: bytes) -> bool:
        if self._dummy is None:
            self._dummy = bcrypt.hashpw(b"alpaca-exporter-dummy", bcrypt.gensalt(rounds=self._cost))
        return _checkpw(password, self._dummy)

    @staticmethod
    def _digest(hashed: bytes, password: bytes) -> bytes:
        return hashlib.sha256(hashed + b"\x00" + password).digest()

    async def allows(self, path: str, header: str | None) -> bool:
        """Whether a request for ``path`` with this Authorization ``header`` may be served."""
        return path in self._open or await self.check(header)

    @property
    def pending(self) -> int:
        """bcrypt checks queued or running."""
        return self._pending

    def known(self, header: str | None) -> bool | None:
        """The verdict if it needs no bcrypt run (no or malformed credentials, a cached pair), else None."""
        credentials = _parse_basic(header)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self._users.get(user)
        cached = self._ok.get(user)
        if hashed is not None and cached is not None and hmac.compare_digest(cached, self._digest(hashed, password)):
            return True
        return None

    async def check(self, header: str | None) -> bool:
        """Whether the credentials are good; raises ``AuthBusy`` when too many checks wait already."""
        known = self.known(header)
        if known is not None:
            return known
        credentials = _parse_basic(header)
        assert credentials is not None
        user, password = credentials
        hashed = self._users.get(user)
        if hashed is None:
            await self._in_pool(self._dummy_check, password)
            return False
        if not await self._in_pool(_checkpw, password, hashed):
            return False
        if len(self._ok) >= _CACHE_MAX:
            self._ok.clear()
        self._ok[user] = self._digest(hashed, password)
        return True

    async def _in_pool(self, check: Callable[..., bool], *args: bytes) -> bool:
        if self._pending >= _MAX_PENDING:
            raise AuthBusy
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="basic-auth")

        def run() -> bool:
            self.bcrypt_checks += 1
            return check(*args)

        self._pending += 1
        try:
            # Cancelling the await cancels the pool's job unless it started: a gone request costs nothing.
            return await asyncio.get_running_loop().run_in_executor(self._pool, run)
        finally:
            self._pending -= 1


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # bcrypt ≥ 5 refuses passwords over 72 bytes; no stored hash can match one
        return False


def _parse_basic(header: str | None) -> tuple[str, bytes] | None:
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None
