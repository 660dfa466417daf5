"""JSON/console log shape and every redaction rule of exporter.logs."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from exporter import logs

KEY_ID = "PKTEST9X8Y7Z6W5V4U3T"
SECRET = "sEcReT/with+odd&chars=0123456789abcdefXYZ"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """configure_logging into a buffer; restore the root logger and the secret set afterwards."""
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    buf = io.StringIO()
    logs.clear_secrets()
    logs.configure_logging("DEBUG", "json", secrets=[KEY_ID, SECRET], stream=buf)
    yield buf
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
    root.setLevel(saved_level)
    logs.clear_secrets()


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def one(buf: io.StringIO) -> dict[str, Any]:
    records = lines(buf)
    assert len(records) == 1, records
    return records[0]


def test_json_shape_and_fields(stream: io.StringIO) -> None:
    log = logging.getLogger("exporter.router")
    log.info(
        "state transition: %s → %s",
        "PRIMARY_ACTIVE",
        "FALLBACK_ACTIVE",
        extra={"previous_state": "PRIMARY_ACTIVE", "new_state": "FALLBACK_ACTIVE", "duration_seconds": 35.2},
    )
    record = one(stream)
    assert list(record)[:4] == ["timestamp", "level", "logger", "message"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["timestamp"])
    assert record["level"] == "INFO"
    assert record["logger"] == "exporter.router"
    assert record["message"] == "state transition: PRIMARY_ACTIVE → FALLBACK_ACTIVE"
    assert record["previous_state"] == "PRIMARY_ACTIVE"
    assert record["new_state"] == "FALLBACK_ACTIVE"
    assert record["duration_seconds"] == 35.2
    # None of LogRecord's own attributes leak in.
    for internal in ("args", "msg", "levelno", "pathname", "lineno", "exc_info", "threadName", "process"):
        assert internal not in record
    assert "exception" not in record


def test_level_filter_and_idempotent_configure(stream: io.StringIO) -> None:
    other = io.StringIO()
    logs.configure_logging("WARNING", "json", stream=other)
    logs.configure_logging("WARNING", "json", stream=other)  # a second call replaces, never duplicates
    log = logging.getLogger("exporter.test")
    log.info("dropped")
    log.warning("kept")
    assert stream.getvalue() == ""
    assert [r["message"] for r in lines(other)] == ["kept"]
    ours = [h for h in logging.getLogger().handlers if isinstance(h, logs._ExporterHandler)]
    assert len(ours) == 1


def test_bad_level_and_format_rejected() -> None:
    with pytest.raises(ValueError, match="log level"):
        logs.configure_logging("LOUD", "json", stream=io.StringIO())
    with pytest.raises(ValueError, match="log format"):
        logs.configure_logging("INFO", "xml", stream=io.StringIO())  # type: ignore[arg-type]


def test_non_json_extra_values_are_rendered(stream: io.StringIO) -> None:
    class Thing:
        def __str__(self) -> str:
            return f"thing({KEY_ID})"

    logging.getLogger("x").info("m", extra={"obj": Thing(), "raw": b"bytes", "seq": (1, "a"), "n": None})
    record = one(stream)
    assert record["obj"] == "thing([REDACTED])"
    assert record["raw"] == "bytes"
    assert record["seq"] == [1, "a"]
    assert record["n"] is None


def test_configured_secrets_redacted_in_message_args_and_fields(stream: io.StringIO) -> None:
    log = logging.getLogger("exporter.alpaca")
    log.info(f"authenticating as {KEY_ID}")
    log.info("secret is %s", SECRET)
    log.info("fields", extra={"detail": f"got {SECRET}", "nested": {"a": [f"x{KEY_ID}y", {"b": SECRET}]}})
    out = stream.getvalue()
    assert KEY_ID not in out
    assert SECRET not in out
    first, second, third = lines(stream)
    assert first["message"] == "authenticating as [REDACTED]"
    assert second["message"] == "secret is [REDACTED]"
    assert third["detail"] == "got [REDACTED]"
    assert third["nested"] == {"a": ["x[REDACTED]y", {"b": "[REDACTED]"}]}


def test_secret_in_url_encoded_json_escaped_and_repr_forms(stream: io.StringIO) -> None:
    from urllib.parse import quote, quote_plus

    quoted_secret = 'with"quote\\back'
    logs.add_secrets([quoted_secret])
    log = logging.getLogger("x")
    log.info("url http://h/?s=%s", quote(SECRET, safe=""))
    log.info("form %s", quote_plus(SECRET))
    log.info("json %s", json.dumps({"v": quoted_secret}))
    log.info("repr %r", [quoted_secret])
    out = stream.getvalue()
    assert quote(SECRET, safe="") not in out
    assert quote_plus(SECRET) not in out
    assert "quote" not in out
    assert out.count("[REDACTED]") == 4


def test_add_secrets_later_applies_to_next_records(stream: io.StringIO) -> None:
    late = "late-registered-secret-value"
    log = logging.getLogger("x")
    log.info("before %s", late)
    logs.add_secrets([late])
    log.info("after %s", late)
    before, after = lines(stream)
    assert late in before["message"]
    assert after["message"] == "after [REDACTED]"


def test_short_secrets_are_ignored() -> None:
    logs.clear_secrets()
    try:
        logs.add_secrets(["ab", ""])
        assert logs.redact("about abc") == "about abc"
    finally:
        logs.clear_secrets()


def test_exception_traceback_redacted(stream: io.StringIO) -> None:
    def fail() -> None:
        raise ConnectionError(f"auth rejected for key {KEY_ID} with secret {SECRET}")

    try:
        fail()
    except ConnectionError:
        logging.getLogger("exporter.alpaca").exception("connect failed")
    record = one(stream)
    assert record["level"] == "ERROR"
    assert "Traceback (most recent call last)" in record["exception"]
    assert "ConnectionError: auth rejected for key [REDACTED] with secret [REDACTED]" in record["exception"]
    assert KEY_ID not in stream.getvalue()
    assert SECRET not in stream.getvalue()


def test_chained_exception_and_stack_info_redacted(stream: io.StringIO) -> None:
    try:
        try:
            raise ValueError(f"inner {SECRET}")
        except ValueError as inner:
            raise RuntimeError("outer password=abcdefghijklmnopqrstuvwxyz") from inner
    except RuntimeError:
        logging.getLogger("x").error("boom", exc_info=True, stack_info=True)
    record = one(stream)
    assert "inner [REDACTED]" in record["exception"]
    assert "password=[REDACTED]" in record["exception"]
    assert "Stack (most recent call last)" in record["stack"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # URL userinfo
        ("wss://PKUSER:hunter2@stream.example/v2/iex", "wss://[REDACTED]@stream.example/v2/iex"),
        ("see https://user@h.example/x", "see https://[REDACTED]@h.example/x"),
        # credential query parameters, any length, others kept
        (
            "GET https://q.example/v8?symbol=AAPL&apiKey=abc&token=zz#x",
            "GET https://q.example/v8?symbol=AAPL&apiKey=[REDACTED]&token=[REDACTED]#x",
        ),
        ("https://h/p?key=short&secret=s&range=1d", "https://h/p?key=[REDACTED]&secret=[REDACTED]&range=1d"),
        (
            "https://h/p?access_token=t&X-Amz-Signature=ab12",
            "https://h/p?access_token=[REDACTED]&X-Amz-Signature=[REDACTED]",
        ),
        ("https://h/p?password=pw", "https://h/p?password=[REDACTED]"),
        # Alpaca's headers, any value length, in several dump styles
        ("APCA-API-SECRET-KEY: abc", "APCA-API-SECRET-KEY: [REDACTED]"),
        ("{'APCA-API-KEY-ID': 'shortid', 'Accept': 'x'}", "{'APCA-API-KEY-ID': '[REDACTED]', 'Accept': 'x'}"),
        ('{"APCA-API-SECRET-KEY":"v"}', '{"APCA-API-SECRET-KEY":"[REDACTED]"}'),
        ("APCA_API_SECRET_KEY=abc", "APCA_API_SECRET_KEY=[REDACTED]"),
        # auth schemes
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc.def", "Authorization: Bearer [REDACTED]"),
        ("header Basic dXNlcjpwYXNz", "header Basic [REDACTED]"),
        # seed §3.3 name + separator + 16+ token
        ('api_key="abcdefghijklmnopqrstuvwx"', 'api_key="[REDACTED]"'),
        ('{"api-key": "abcdefghijklmnopqrstuvwx"}', '{"api-key": "[REDACTED]"}'),
        ("apikey abcdefghijklmnop", "apikey [REDACTED]"),
        ("secret: abcdefghijklmnop1234", "secret: [REDACTED]"),
        ("password=hunter2hunter2hunter2", "password=[REDACTED]"),
        ("TOKEN = 0123456789abcdef0123", "TOKEN = [REDACTED]"),
        ("authorization:QWxhZGRpbjpvcGVuIHNlc2FtZQ", "authorization:[REDACTED]"),
        ("using key PKABCDEFGHIJKLMNOPQR now", "using key [REDACTED] now"),
        ("ALPACA_SECRET_KEY=abcdefghijklmnopq", "ALPACA_SECRET_KEY=[REDACTED]"),
    ],
)
def test_credential_shapes(text: str, expected: str) -> None:
    assert logs.redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Alpaca state transition: PRIMARY_ACTIVE → FALLBACK_ACTIVE (reason: connection_timeout, duration: 35s)",
        "key_id_set=True symbols=AAPL,MSFT",
        "keyboard_interrupt_handler_name installed",
        "basic auth enabled for 2 users",
        "token bucket refill",
        "secret: short",  # under 16 characters is not credential-shaped
        "wss://stream.data.alpaca.markets/v2/iex",
        "https://query1.finance.yahoo.com/v8/finance/chart/AAPL?interval=1m&range=1d",
    ],
)
def test_ordinary_text_untouched(text: str) -> None:
    logs.clear_secrets()
    assert logs.redact(text) == text


def test_url_in_message_and_field(stream: io.StringIO) -> None:
    url = f"wss://{KEY_ID}:{SECRET}@stream.example/v2/iex?token=abc"
    logging.getLogger("x").warning("connecting to %s", url, extra={"url": url})
    record = one(stream)
    assert record["message"] == "connecting to wss://[REDACTED]@stream.example/v2/iex?token=[REDACTED]"
    assert record["url"] == "wss://[REDACTED]@stream.example/v2/iex?token=[REDACTED]"


def test_field_names_redacted_with_safe_list(stream: io.StringIO) -> None:
    logging.getLogger("x").info(
        "settings",
        extra={
            "api_key": "short",
            "APCA_API_SECRET_KEY": "s",
            "password": 1234,
            "headers": {"Authorization": "x", "Accept": "json", "Cookie": "c=1"},
            "token_list": ["a", "b"],
            "key_id_set": True,
            "secret_key_set": False,
            "secret_hint": None,
            "KEY": {"last_price": 12.5},  # KeyCorp's ticker: the dict is walked, not blanked
        },
    )
    record = one(stream)
    assert record["api_key"] == "[REDACTED]"
    assert record["APCA_API_SECRET_KEY"] == "[REDACTED]"
    assert record["password"] == "[REDACTED]"
    assert record["headers"] == {"Authorization": "[REDACTED]", "Accept": "json", "Cookie": "[REDACTED]"}
    assert record["token_list"] == ["[REDACTED]", "[REDACTED]"]
    assert record["key_id_set"] is True
    assert record["secret_key_set"] is False
    assert record["secret_hint"] is None
    assert record["KEY"] == {"last_price": 12.5}


def test_redact_value_is_pure() -> None:
    value = {"token": "t", "inner": [{"password": "p"}]}
    assert logs.redact_value(value) == {"token": "[REDACTED]", "inner": [{"password": "[REDACTED]"}]}
    assert value == {"token": "t", "inner": [{"password": "p"}]}


def test_record_not_mutated_for_other_handlers(stream: io.StringIO) -> None:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep()
    log = logging.getLogger("exporter.mutation")
    log.addHandler(keep)
    try:
        log.info("value %s", SECRET)
    finally:
        log.removeHandler(keep)
    assert seen[0].args == (SECRET,)
    assert one(stream)["message"] == "value [REDACTED]"


def test_console_format(stream: io.StringIO) -> None:
    buf = io.StringIO()
    logs.configure_logging("INFO", "console", stream=buf)
    log = logging.getLogger("exporter.router")
    log.info(
        "failover",
        extra={"reason": "connection lost", "seconds": 3.5, "secret": SECRET, "tags": {"a": 1}},
    )
    try:
        raise OSError(f"reset by {KEY_ID}")
    except OSError:
        log.error("socket error", exc_info=True)
    out = buf.getvalue()
    first, *rest = out.splitlines()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO     exporter\.router: failover "
        r'reason="connection lost" seconds=3\.5 secret=\[REDACTED\] tags=\{"a":1\}',
        first,
    )
    assert "ERROR    exporter.router: socket error" in rest[0]
    assert "Traceback (most recent call last)" in out
    assert "OSError: reset by [REDACTED]" in out
    assert KEY_ID not in out
    assert SECRET not in out
    assert stream.getvalue() == ""  # the JSON handler was replaced, not kept beside


def test_excepthook_routes_crashes_through_redaction(stream: io.StringIO) -> None:
    saved_hook, saved_thread_hook = sys.excepthook, threading.excepthook
    try:
        logs.install_excepthook()
        try:
            raise RuntimeError(f"crash with {SECRET}")
        except RuntimeError as exc:
            sys.excepthook(type(exc), exc, exc.__traceback__)

        def worker() -> None:
            raise RuntimeError(f"thread crash with {KEY_ID}")

        thread = threading.Thread(target=worker, name="crashy")
        thread.start()
        thread.join(timeout=5)
    finally:
        sys.excepthook, threading.excepthook = saved_hook, saved_thread_hook
    main, in_thread = lines(stream)
    assert main["level"] == "CRITICAL"
    assert "RuntimeError: crash with [REDACTED]" in main["exception"]
    assert in_thread["thread_name"] == "crashy"
    assert "thread crash with [REDACTED]" in in_thread["exception"]
    assert SECRET not in stream.getvalue()
    assert KEY_ID not in stream.getvalue()


def test_aiohttp_access_log_quiet(stream: io.StringIO) -> None:
    logging.getLogger("aiohttp.access").info("GET /metrics 200")
    assert stream.getvalue() == ""


@pytest.mark.parametrize(
    "hostile",
    ["key" * 30_000, "x-" * 50_000, "?" + "key" * 30_000, "a://" * 20_000, "key:" + " " * 50_000 + "x"],
)
def test_redaction_is_linear_on_hostile_input(hostile: str) -> None:
    # A quadratic pattern takes minutes on these; linear ones take milliseconds.
    import time

    start = time.perf_counter()
    logs.redact(hostile)
    assert time.perf_counter() - start < 1.0


def test_bad_format_args_are_logged_redacted() -> None:
    # Formatted directly: pytest's own capture handler would raise on this record before ours runs.
    logs.clear_secrets()
    logs.add_secrets([SECRET])
    try:
        record = logging.makeLogRecord({"name": "x", "msg": "value %d", "args": (SECRET,), "levelname": "INFO"})
        line = logs.JsonFormatter().format(record)
    finally:
        logs.clear_secrets()
    message = json.loads(line)["message"]
    assert message == "value %d [log arguments did not format (TypeError): ('[REDACTED]',)]"


def test_handler_errors_are_reported_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError(f"disk full while writing {s}")

    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    try:
        logs.configure_logging("INFO", "json", secrets=[SECRET], stream=Broken())
        logging.getLogger("exporter.x").info("secret %s", SECRET)
    finally:
        for handler in list(root.handlers):
            if handler not in saved_handlers:
                root.removeHandler(handler)
        root.setLevel(saved_level)
        logs.clear_secrets()
    err = capsys.readouterr().err
    assert "logging failed for a record of exporter.x: OSError: disk full while writing" in err
    assert SECRET not in err
    assert "Traceback" not in err
