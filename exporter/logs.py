"""Structured logging (JSON lines or console) with one redaction processor.

Every record goes through the same pipeline, structlog-style, inside the formatter of the one handler
this module installs on the root logger:

    record --to_event--> dict --redact_value--> dict --render--> line

``to_event`` collects ``timestamp`` (ISO 8601 UTC, milliseconds, ``Z``), ``level``, ``logger``,
``message`` (with its %-args applied), every field passed through ``extra={...}`` as a top-level key,
and ``exception``/``stack`` (formatted tracebacks). ``redact_value`` then scrubs all of it at once, so
no path of a record (message, args, fields at any depth, traceback text, URLs) escapes redaction.
The record itself is never mutated: other handlers (pytest's capture, say) see it untouched, which is
why this module's handler must be the only one that writes anywhere an operator reads.

Redaction rules (``redact`` on text, ``redact_value`` on structures):

1. Registered secret values (``configure_logging(secrets=...)`` / ``add_secrets``), as exact
   substrings, also in their URL-encoded, JSON-escaped and ``repr`` spellings.
2. URL userinfo (``scheme://user:pass@host``) and the values of credential-like query parameters
   (``key=``, ``apiKey=``, ``secret=``, ``token=``, ``password=``, ``signature=``, ...).
3. Alpaca's header names (``APCA-API-KEY-ID``, ``APCA-API-SECRET-KEY``) followed by a value.
4. ``Bearer``, ``Basic``, ``Digest`` and ``Token`` credentials (scheme names as sent, capitalised).
5. A credential-ish name (containing api_key, apikey, key, secret, password, token, authorization,
   credential) followed by ``:``/``=``/quotes/spaces and a token of 16 or more characters (the seed's
   section 3.3 patterns, with the threshold lowered from 20 to 16): the name stays, the value goes.
6. Structured fields whose *name* contains key, secret, password, passwd, token, authorization,
   credential or cookie: their scalar value becomes ``[REDACTED]``, except booleans and None (they
   cannot hold a secret) and the names in ``SAFE_FIELD_NAMES``; dicts and lists under such a name are
   walked instead, so ``{"KEY": {...}}`` (KeyCorp's ticker) keeps its contents, redacted recursively.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TextIO

__all__ = [
    "REDACTED",
    "SAFE_FIELD_NAMES",
    "ConsoleFormatter",
    "JsonFormatter",
    "add_secrets",
    "clear_secrets",
    "configure_logging",
    "install_excepthook",
    "redact",
    "redact_value",
]

REDACTED = "[REDACTED]"

# Our own field names that look credential-ish but carry no secret (they say whether one is set).
SAFE_FIELD_NAMES: frozenset[str] = frozenset(
    {
        "key_id_set",
        "secret_key_set",
        "api_key_set",
        "credentials_set",
        "credentials_source",
        "auth_status",
        "authenticated",
        "basic_auth_users_count",
        "token_count",
    }
)

# Secrets shorter than this are not matched as substrings: a 1-3 character "secret" would shred every
# log line, and no real credential is that short.
_MIN_SECRET_LEN = 4

_SENSITIVE_NAME = re.compile(r"key|secret|passw(?:or)?d|token|authori[sz]ation|credential|cookie", re.I)

# Every pattern is linear-time on hostile input (a 100 kB run of "keykeykey..." or "x-x-x-..."):
# a name is matched only from the start of a run of name characters (lookbehind), the keyword test
# is a lookahead inside that run, and the run itself is atomic, so a failed match never re-scans it.
_KEYWORDS = r"api[_-]?key|apikey|key|secret|passw(?:or)?d|token|authori[sz]ation|credential"

# 2. URLs. Userinfo: everything between "scheme://" and "@" (before the first "/").
_URL_USERINFO = re.compile(r"(?P<scheme>(?<![a-zA-Z0-9+.\-])[a-zA-Z][a-zA-Z0-9+.\-]*+://)(?P<userinfo>[^/\s@\"'<>]++)@")
# Query/fragment parameters whose name is credential-like; any value length counts.
_QUERY_PARAM = re.compile(
    r"(?P<name>[?&;#](?=[\w.\-\[\]]*?(?:" + _KEYWORDS + r"|signature|auth))(?>[\w.\-\[\]]+)=)"
    r"(?P<value>[^&#\s\"'<>]+)",
    re.I,
)
# 3. Alpaca's credential headers, with whatever separator a dump of headers uses (": ", "=", "', '").
_APCA_HEADER = re.compile(
    r"(?P<name>APCA[-_]API[-_](?:KEY[-_]ID|SECRET[-_]KEY)[\"']?\s*+[:=,]\s*+[\"']?)(?P<value>[^\s\"',}&]+)",
    re.I,
)
# 4. HTTP auth schemes (case-sensitive scheme names, as sent; the lowercase prose "basic auth" stays).
_AUTH_SCHEME = re.compile(r"\b(?P<name>(?:Bearer|Basic|Digest|Token)\s++)(?P<value>[A-Za-z0-9\-._~+/]{6,}+=*)")
# 5. Credential-shaped "name <sep> value" with a long value (seed §3.3, 16+ characters).
_KV_CREDENTIAL = re.compile(
    r"(?P<name>(?<![\w.\-])(?=[\w.\-]*?(?:" + _KEYWORDS + r"))(?>[\w.\-]+))"
    r"(?P<sep>[\"']?\s*+[:=]\s*+[\"']?\s*+|[\"']?\s++[\"']?)(?P<value>[\w\-.~+/=%]{16,})",
    re.I,
)

_TEXT_RULES: tuple[re.Pattern[str], ...] = (_QUERY_PARAM, _APCA_HEADER, _AUTH_SCHEME, _KV_CREDENTIAL)


def _keep_name(match: re.Match[str]) -> str:
    # Every rule names its prefix "name" (and "sep" where it has one): keep them, drop the value.
    groups = match.groupdict()
    return groups["name"] + (groups.get("sep") or "") + REDACTED


class _Redactor:
    """Holds the registered secrets as one compiled alternation; swapped atomically on change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None

    def add(self, secrets: Iterable[str]) -> None:
        with self._lock:
            new = set(self._secrets)
            for secret in secrets:
                if not isinstance(secret, str) or len(secret) < _MIN_SECRET_LEN:
                    continue
                new.update(_spellings(secret))
            self._secrets = frozenset(new)
            # Longest first, so a secret that contains another is replaced whole.
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None

    def clear(self) -> None:
        with self._lock:
            self._secrets = frozenset()
            self._pattern = None

    def text(self, text: str) -> str:
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(REDACTED, text)
        if "://" in text:
            text = _URL_USERINFO.sub(lambda m: m.group("scheme") + REDACTED + "@", text)
        for rule in _TEXT_RULES:
            text = rule.sub(_keep_name, text)
        return text


def _spellings(secret: str) -> set[str]:
    """The ways a secret can appear in text: raw, URL-encoded (both styles), JSON-escaped, repr'd."""
    return {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret, safe=""),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
    }


_REDACTOR = _Redactor()


def add_secrets(secrets: Iterable[str]) -> None:
    """Register secret values (e.g. the API key id and secret) to be redacted everywhere from now on."""
    _REDACTOR.add(secrets)


def clear_secrets() -> None:
    """Forget every registered secret (tests; a process never needs it)."""
    _REDACTOR.clear()


def redact(text: str) -> str:
    """Return ``text`` with registered secrets and credential-shaped substrings replaced."""
    return _REDACTOR.text(text)


def _sensitive_field(name: str) -> bool:
    return name not in SAFE_FIELD_NAMES and _SENSITIVE_NAME.search(name) is not None


def redact_value(value: Any, name: str | None = None) -> Any:
    """Redact a structured value recursively into JSON-friendly types.

    ``name`` is the field or mapping key under which ``value`` sits (rule 6 of the module doc).
    Mappings become dicts with string keys, other iterables lists; strings are redacted as text;
    numbers, booleans and None pass; anything else is rendered with ``str`` and redacted as text.
    """
    if isinstance(value, Mapping):
        return {(rk := redact(str(k))): redact_value(v, rk) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v, name) for v in value]
    if value is None or isinstance(value, bool):
        return value
    if name is not None and _sensitive_field(name):
        return REDACTED
    if isinstance(value, int | float):
        return value
    if isinstance(value, bytes | bytearray):
        return redact(bytes(value).decode("utf-8", "backslashreplace"))
    return redact(value if isinstance(value, str) else str(value))


# ---------------------------------------------------------------------------------------------------
# Record → event dict → redacted → rendered.

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS: frozenset[str] = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime", "taskName"}
)


def _timestamp(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception as exc:
        # A format/args mismatch is a bug in the caller; keep the line (redacted like any other)
        # rather than let logging's stock error path print the raw arguments to stderr.
        return f"{record.msg} [log arguments did not format ({type(exc).__name__}): {record.args!r}]"


def _to_event(record: logging.LogRecord) -> dict[str, Any]:
    event: dict[str, Any] = {
        "timestamp": _timestamp(record.created),
        "level": record.levelname,
        "logger": record.name,
        "message": _message(record),
    }
    for key, value in record.__dict__.items():
        if key not in _RECORD_ATTRS and key not in event:
            event[key] = value
    if record.exc_info and record.exc_info[0] is not None:
        event["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
    elif record.exc_text:
        event["exception"] = record.exc_text
    if record.stack_info:
        event["stack"] = record.stack_info
    return event


_STANDARD_KEYS = ("timestamp", "level", "logger", "message")


def _redact_event(event: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in event.items():
        if key in _STANDARD_KEYS or key in ("exception", "stack"):
            # Standard keys are ours: their names are not credential-ish, only their text counts.
            out[key] = redact(value) if isinstance(value, str) else value
        else:
            out[redact(key)] = redact_value(value, key)
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line: the redacted event dict."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_redact_event(_to_event(record)), ensure_ascii=False, default=str)


def _console_value(value: Any) -> str:
    if isinstance(value, str):
        if value and not any(c.isspace() or c in "=\"'" for c in value):
            return value
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


class ConsoleFormatter(logging.Formatter):
    """``2025-10-09T10:15:32.123Z INFO     logger: message key=value ...``, traceback on following lines."""

    def format(self, record: logging.LogRecord) -> str:
        event = _redact_event(_to_event(record))
        head = f"{event.pop('timestamp')} {event.pop('level'):<8} {event.pop('logger')}: {event.pop('message')}"
        exception = event.pop("exception", None)
        stack = event.pop("stack", None)
        fields = " ".join(f"{k}={_console_value(v)}" for k, v in event.items())
        line = f"{head} {fields}" if fields else head
        for extra_text in (exception, stack):
            if extra_text:
                line += "\n" + extra_text
        return line


class _ExporterHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so a second configure_logging replaces it."""

    def handleError(self, record: logging.LogRecord) -> None:
        # The stock version prints the record's raw message and arguments to stderr, unredacted.
        exc = sys.exc_info()[1]
        with contextlib.suppress(Exception):
            sys.stderr.write(redact(f"logging failed for a record of {record.name}: {type(exc).__name__}: {exc}\n"))


def configure_logging(
    level: str,
    fmt: Literal["json", "console"],
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Install the exporter's handler on the root logger (replacing a previous one of ours).

    ``stream`` defaults to the *current* ``sys.stdout``. Handlers installed by others are left alone.
    aiohttp's per-request access log (the Yahoo simulator's server) is held at WARNING: no line per request at INFO.
    """
    level_no = logging.getLevelName(level.upper())
    if not isinstance(level_no, int):
        raise ValueError(f"unknown log level {level!r}")
    if fmt not in ("json", "console"):
        raise ValueError(f"unknown log format {fmt!r} (json or console)")
    add_secrets(secrets)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _ExporterHandler):
            root.removeHandler(handler)
            handler.close()
    handler = _ExporterHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root.addHandler(handler)
    root.setLevel(level_no)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def install_excepthook() -> None:
    """Route uncaught exceptions (main thread and other threads) through the redacting logger.

    Without it, a crash prints a raw traceback to stderr, where a secret in an exception's text
    would escape redaction.
    """
    log = logging.getLogger("exporter.crash")

    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            sys.__excepthook__(exc_type, exc, tb)
            return
        log.critical("uncaught exception", exc_info=(exc_type, exc, tb))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None:
            return
        log.critical(
            "uncaught exception in thread",
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
            extra={"thread_name": getattr(args.thread, "name", None)},
        )

    sys.excepthook = hook
    threading.excepthook = thread_hook
