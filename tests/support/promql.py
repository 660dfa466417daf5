"""Every PromQL expression of the operations kit, ready to evaluate, and the metric catalogue.

`all_expressions()` collects the expressions of the Grafana dashboards (panel targets and
variable queries), the alerting rules and the recording rules. Grafana variables are replaced by
concrete values (`DEFAULT_VARIABLES`, overridable: a live test can pass
`{"instance": "127.0.0.1:9877"}`), so each expression can be sent as is to
`/api/v1/query` of a real Prometheus.

`CATALOGUE` is CONTRACT.md section 5 as data (metric, type, labels and their fixed values), and
`catalogue_problems(expr)` checks an expression's metric names, label names and fixed label
values against it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support import REPO

CONFIG = REPO / "config"
DASHBOARDS = CONFIG / "grafana" / "dashboards"
RULE_FILES = (CONFIG / "recording_rules.yml", CONFIG / "alerts.yml")

# Grafana's built-in variables with values typical of a 6-hour dashboard, plus the dashboards' own.
DEFAULT_VARIABLES: Mapping[str, str] = {
    "datasource": "prometheus",
    "instance": ".*",
    "symbol": ".*",
    "feed": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "6h",
    "__range_s": "21600",
    "__range_ms": "21600000",
}
GRAFANA_BUILTINS = frozenset(k for k in DEFAULT_VARIABLES if k.startswith("__"))

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


@dataclass(frozen=True)
class Expression:
    source: str  # where it comes from, e.g. "dashboards/operations.json panel 2 'Router state' A"
    raw: str  # as written (may contain Grafana variables)
    expr: str  # variables substituted: valid PromQL


def variables_in(text: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in _VARIABLE.finditer(text)}


def substitute(text: str, variables: Mapping[str, str] | None = None) -> str:
    """Replace `$name`, `${name}`, `${name:fmt}` and `[[name]]`; KeyError for an unknown variable."""
    values = {**DEFAULT_VARIABLES, **(variables or {})}

    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        return values[name]

    return _VARIABLE.sub(value, text)


def _label_values_query(query: str) -> str:
    """The PromQL behind a Grafana `label_values(...)` variable query."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query)
    if match:
        return f"count by ({match.group(2)}) ({match.group(1)})"
    match = re.fullmatch(r"\s*label_values\(\s*(\w+)\s*\)\s*", query)
    if match:
        return f'count by ({match.group(1)}) ({{{match.group(1)}!=""}})'
    match = re.fullmatch(r"\s*query_result\((.*)\)\s*", query)
    return match.group(1) if match else query


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def dashboard_expressions(variables: Mapping[str, str] | None = None) -> list[Expression]:
    found: list[Expression] = []
    for name, dashboard in load_dashboards().items():
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") != "query":
                continue
            query = variable["query"]
            raw = query["query"] if isinstance(query, dict) else query
            found.append(
                Expression(
                    f"dashboards/{name} variable {variable['name']}",
                    raw,
                    substitute(_label_values_query(raw), variables),
                )
            )
        for panel in iter_panels(dashboard.get("panels", [])):
            for target in panel.get("targets", []):
                raw = target.get("expr", "")
                source = f"dashboards/{name} panel {panel.get('id')} {panel.get('title')!r} {target.get('refId')}"
                found.append(Expression(source, raw, substitute(raw, variables)))
    return found


def load_rule_groups(path: Path) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(path.read_text())["groups"]
    return groups


def rule_expressions() -> list[Expression]:
    found: list[Expression] = []
    for path in RULE_FILES:
        for group in load_rule_groups(path):
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                found.append(Expression(f"{path.name} {name}", rule["expr"], rule["expr"]))
    return found


def all_expressions(variables: Mapping[str, str] | None = None) -> list[Expression]:
    """Dashboard, alert and recording-rule expressions, Grafana variables substituted."""
    return dashboard_expressions(variables) + rule_expressions()


def recorded_names() -> set[str]:
    return {
        rule["record"]
        for group in load_rule_groups(CONFIG / "recording_rules.yml")
        for rule in group["rules"]
        if "record" in rule
    }


# --- the catalogue (CONTRACT.md section 5) ------------------------------------------------------

CONNECTION_STATES = ("Disconnected", "Connecting", "Authenticating", "Connected")
ROUTER_STATES = ("PRIMARY_ACTIVE", "FALLBACK_ACTIVE", "BOTH_UNAVAILABLE")
MESSAGE_TYPES = (
    "trade", "quote", "bar", "updated_bar", "daily_bar", "status", "luld", "correction",
    "cancel_error", "imbalance", "orderbook", "control", "unknown",
)  # fmt: skip
ALPACA_ERRORS = (
    "connection_failed", "connection_lost", "auth_failed", "auth_timeout", "not_authenticated",
    "symbol_limit_exceeded", "connection_limit_exceeded", "slow_client", "insufficient_subscription",
    "invalid_syntax", "server_error", "decode_error", "stale_stream",
)  # fmt: skip
YAHOO_ERRORS = (
    "rate_limited", "forbidden", "server_error", "timeout", "connection_failed", "bad_body",
    "unknown_symbol", "bad_request", "no_price", "stale_price",
)  # fmt: skip
VALIDATION_REASONS = (
    "invalid_price", "invalid_size", "crossed_quote", "stale_timestamp", "future_timestamp",
    "unknown_symbol", "malformed", "circuit_open",
)  # fmt: skip
SUBSCRIBE_CHANNELS = (
    "trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds", "imbalances", "orderbooks",
)  # fmt: skip

FEEDS = ("iex", "sip", "delayed_sip", "boats", "overnight", "test", "crypto", "indicative", "opra")  # §3, §12

ANY = None  # a label whose values are not fixed (symbol, version...)


@dataclass(frozen=True)
class Metric:
    type: str  # counter (name without _total here), gauge, histogram
    labels: Mapping[str, tuple[str, ...] | None]


CATALOGUE: Mapping[str, Metric] = {
    "alpaca_connection_status": Metric("gauge", {"state": CONNECTION_STATES}),
    "alpaca_authentication_status": Metric("gauge", {}),
    "alpaca_messages_received": Metric("counter", {"type": MESSAGE_TYPES, "symbol": ANY}),
    "alpaca_errors": Metric("counter", {"type": ALPACA_ERRORS}),
    "alpaca_message_latency_seconds": Metric("histogram", {"symbol": ANY}),
    "alpaca_streaming_processing_duration_ms": Metric("histogram", {}),
    "datasource_router_state": Metric("gauge", {"state": ROUTER_STATES}),
    "datasource_router_failover": Metric("counter", {}),
    "datasource_router_recovery_time_seconds": Metric("histogram", {}),
    "datasource_router_uptime_percent": Metric("gauge", {}),
    "alpaca_subscribed_symbols_count": Metric("gauge", {}),
    "datasource_router_validation_failures": Metric("counter", {"reason": VALIDATION_REASONS}),
    "datasource_router_price_delta_percent": Metric("gauge", {"symbol": ANY}),
    "datasource_router_circuit_breaker": Metric("counter", {"symbol": ANY, "reason": ("price_movement_exceeded",)}),
    "datasource_router_state_duration_seconds": Metric("counter", {"state": ROUTER_STATES}),
    "datasource_router_last_price": Metric("gauge", {"symbol": ANY, "source": ("alpaca", "yahoo")}),
    "datasource_router_last_update_timestamp_seconds": Metric("gauge", {"symbol": ANY}),
    "dependency_up": Metric("gauge", {"dependency": ("alpaca", "yahoo")}),
    "dependency_latency_seconds": Metric("histogram", {"dependency": ("alpaca", "yahoo"), "method": ANY}),
    "alpaca_exporter_build_info": Metric("gauge", {"version": ANY, "python_version": ANY}),
    "alpaca_exporter_leader": Metric("gauge", {}),
    "alpaca_exporter_leader_transitions": Metric("counter", {}),
    "alpaca_exporter_feed_info": Metric("gauge", {"feed": FEEDS, "encoding": ("msgpack", "json")}),
    "yahoo_errors": Metric("counter", {"type": YAHOO_ERRORS}),
    # Feed quality (CONTRACT.md section 11), with this exporter's two extra gauges.
    "alpaca_subscription_missing_symbols": Metric("gauge", {"channel": SUBSCRIBE_CHANNELS}),
    "alpaca_subscription_repairs": Metric("counter", {}),
    "datasource_router_symbol_halted": Metric("gauge", {"symbol": ANY}),
    "datasource_router_symbol_message_interval_seconds": Metric("gauge", {"symbol": ANY}),
    "datasource_router_symbol_last_message_timestamp_seconds": Metric("gauge", {"symbol": ANY}),
    "datasource_router_market_open": Metric("gauge", {}),
    "alpaca_bars_missing": Metric("counter", {"symbol": ANY}),
    "alpaca_stream_gap_seconds": Metric("histogram", {}),
    "alpaca_stream_lag_seconds": Metric("gauge", {}),
    # prometheus_client's process collector and Prometheus' own per-target series.
    "process_resident_memory_bytes": Metric("gauge", {}),
    "process_cpu_seconds": Metric("counter", {}),
    "up": Metric("gauge", {}),
    "scrape_duration_seconds": Metric("gauge", {}),
}
TARGET_LABELS = ("job", "instance")
ALERT_LABELS = ("alertname", "alertstate", "severity", "category", "slo", "symbol", "state", "type")


@functools.cache
def series_names() -> dict[str, tuple[Mapping[str, tuple[str, ...] | None], bool]]:
    """Every series name an expression may select → (its labels, whether `le` is allowed)."""
    names: dict[str, tuple[Mapping[str, tuple[str, ...] | None], bool]] = {}
    for family, metric in CATALOGUE.items():
        if metric.type == "counter":
            names[f"{family}_total"] = (metric.labels, False)
        elif metric.type == "histogram":
            names[f"{family}_bucket"] = (metric.labels, True)
            names[f"{family}_sum"] = (metric.labels, False)
            names[f"{family}_count"] = (metric.labels, False)
        else:
            names[family] = (metric.labels, False)
    for recorded in recorded_names():
        names[recorded] = ({}, False)
    names["ALERTS"] = (dict.fromkeys(ALERT_LABELS, ANY), False)
    return names


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = frozenset(
    (
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
    )
)


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (functions, keywords and label lists excluded)."""
    text = _SELECTOR.sub(lambda m: (m.group(1) or "") + " ", expr.replace("\n", " "))
    text = _STRING.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name in _KEYWORDS:
            continue
        names.add(name)
    return names


def catalogue_problems(expr: str) -> list[str]:
    """Unknown metric names, label names and fixed label values in `expr` (empty when all known)."""
    known = series_names()
    problems = [f"unknown metric {name}" for name in sorted(metric_names(expr) - known.keys())]
    for selector in _SELECTOR.finditer(expr):
        name = selector.group(1)
        if name is None or name not in known:
            continue
        labels, has_le = known[name]
        for label, op, value in _MATCHER.findall(selector.group(2)):
            if label in TARGET_LABELS or (has_le and label == "le"):
                continue
            if label not in labels:
                problems.append(f"{name} has no label {label}")
                continue
            allowed = labels[label]
            if allowed is None or value == "" or "$" in value:
                continue
            values = [value] if op in ("=", "!=") else value.split("|")
            if op in ("=~", "!~") and not all(re.fullmatch(r"\w+", v) for v in values):
                continue  # a real regex, not a list of values
            problems.extend(f"{name}{{{label}}} has no value {v!r}" for v in values if v not in allowed)
    return problems
