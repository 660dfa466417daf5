"""Grafana dashboards and provisioning: structure, templating, and every expression of the kit
(dashboards, alerts, recording rules) against the catalogue and a real Prometheus parser."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.support.prometheus import PrometheusServer, running_prometheus
from tests.support.promql import (
    CONFIG,
    GRAFANA_BUILTINS,
    RULE_FILES,
    all_expressions,
    catalogue_problems,
    dashboard_expressions,
    iter_panels,
    load_dashboards,
    metric_names,
    rule_expressions,
    substitute,
    variables_in,
)

EXPECTED = {"operations.json", "performance.json", "reliability.json", "business.json"}
DASHBOARDS = load_dashboards()


def test_the_four_dashboards_exist() -> None:
    assert set(DASHBOARDS) == EXPECTED
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids)
    assert all(len(uid) <= 40 for uid in uids)  # Grafana's limit


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_structure(name: str) -> None:
    dashboard = DASHBOARDS[name]
    assert dashboard["title"].startswith("Alpaca exporter / ")
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert "id" not in dashboard or dashboard["id"] is None  # provisioned dashboards get their own
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for templated in ("feed", "instance", "symbol"):
        variable = variables[templated]
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        assert re.fullmatch(rf"label_values\(.+, {templated}\)", query), query
        assert variable["multi"]
        assert variable["includeAll"]
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    # Feed, then its instances, then their symbols: each variable narrows the next (Grafana resolves them
    # in order), and every panel filters on $instance, so on the feed.
    assert list(variables).index("feed") < list(variables).index("instance") < list(variables).index("symbol")
    assert variables["feed"]["query"] == "label_values(alpaca_exporter_feed_info, feed)"
    assert variables["instance"]["query"] == 'label_values(alpaca_exporter_feed_info{feed=~"$feed"}, instance)'
    assert variables["feed"]["allValue"] == ".*"
    assert variables["symbol"]["allValue"] == ".*"
    # No ".*" for All instances: All is then the selected feeds' instances, not every instance.
    assert "allValue" not in variables["instance"]

    panels = list(iter_panels(dashboard["panels"]))
    assert len(panels) >= 8
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids)
    for panel in panels:
        where = f"{name} panel {panel['id']} {panel['title']!r}"
        assert panel["title"], where
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], f"{where} has no target"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), where
        for target in panel["targets"]:
            assert target["expr"].strip(), where
            assert target["datasource"]["uid"] == "${datasource}", where
        # A panel filters on the instance variable (ALERTS and friends included).
        assert any("$instance" in t["expr"] for t in panel["targets"]), where


def test_panels_do_not_overlap() -> None:
    for name, dashboard in DASHBOARDS.items():
        cells: dict[tuple[int, int], int] = {}
        for panel in iter_panels(dashboard["panels"]):
            g = panel["gridPos"]
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{name}: panels {cells.get((x, y))} and {panel['id']} overlap"
                    cells[(x, y)] = panel["id"]


def test_every_variable_used_is_defined() -> None:
    for name, dashboard in DASHBOARDS.items():
        defined = {v["name"] for v in dashboard["templating"]["list"]} | GRAFANA_BUILTINS
        used: set[str] = set()
        for panel in iter_panels(dashboard["panels"]):
            for target in panel.get("targets", []):
                used |= variables_in(target["expr"])
            used |= variables_in(str(panel.get("datasource", "")))
        assert used <= defined, f"{name} uses undefined variables {used - defined}"


def test_provisioning_points_at_the_dashboards() -> None:
    datasources = yaml.safe_load((CONFIG / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (prometheus,) = datasources["datasources"]
    assert prometheus["type"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((CONFIG / "grafana/provisioning/dashboards/alpaca-exporter.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/etc/grafana/dashboards/alpaca-exporter"


def test_substitution_replaces_every_grafana_variable() -> None:
    text = 'rate(x{instance=~"$instance", s=~"${symbol}", t=~"[[symbol]]"}[$__rate_interval]) * $__range_s'
    assert substitute(text, {"instance": "a:1"}) == 'rate(x{instance=~"a:1", s=~".*", t=~".*"}[1m]) * 21600'
    with pytest.raises(KeyError):
        substitute("x[$undefined]")
    for expression in all_expressions():
        assert "$" not in expression.expr, expression.source


def test_collection_covers_dashboards_and_rules() -> None:
    expressions = all_expressions()
    sources = {e.source.split(" ")[0] for e in expressions}
    assert {f"dashboards/{n}" for n in EXPECTED} | {p.name for p in RULE_FILES} <= sources
    panel_targets = sum(len(p.get("targets", [])) for d in DASHBOARDS.values() for p in iter_panels(d["panels"]))
    assert len([e for e in dashboard_expressions() if " panel " in e.source]) == panel_targets


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (job, instance) (rate(a_total{le=~"2|2.0"}[5m])) / on (job) group_left '
        "histogram_quantile(0.95, sum(rate(b_bucket[1h])) by (le)) and time() - c > 1e3 or vector(0)"
    )
    assert metric_names(expr) == {"a_total", "b_bucket", "c"}


def test_catalogue_check_finds_mistakes() -> None:
    assert catalogue_problems('alpaca_connection_status{state="Connected"}') == []
    assert catalogue_problems('alpaca_connection_status{state="CONNECTED"}') == [
        "alpaca_connection_status{state} has no value 'CONNECTED'"
    ]
    assert catalogue_problems("alpaca_errors{type='x'}") == ["unknown metric alpaca_errors"]
    assert catalogue_problems('datasource_router_state{reason="x"}') == ["datasource_router_state has no label reason"]
    assert catalogue_problems('alpaca_errors_total{type=~"auth_failed|oops"}') == [
        "alpaca_errors_total{type} has no value 'oops'"
    ]


def test_every_expression_uses_the_catalogue() -> None:
    problems = [f"{e.source}: {p}" for e in all_expressions() for p in catalogue_problems(e.expr)]
    assert problems == []


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus without targets but with the kit's rule files loaded."""
    with running_prometheus([], tmp_path_factory.mktemp("prometheus"), rule_files=RULE_FILES) as server:
        yield server


@pytest.mark.e2e
def test_real_prometheus_accepts_every_expression(prometheus: PrometheusServer) -> None:
    failures: list[str] = []
    for expression in all_expressions():
        # Any error (parse, type, bad range) is a failure; an empty result is expected here.
        try:
            prometheus.query(expression.expr)
        except RuntimeError as exc:
            failures.append(f"{expression.source}: {exc}")
    assert failures == []


@pytest.mark.e2e
def test_real_prometheus_loads_the_rule_files(prometheus: PrometheusServer) -> None:
    groups: list[dict[str, Any]] = prometheus.rules()
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    expected = {e.source.split(" ", 1)[1] for e in rule_expressions()}
    assert expected <= loaded
