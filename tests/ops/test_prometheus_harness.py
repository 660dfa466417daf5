"""The real-Prometheus harness scrapes a real prometheus_client endpoint and answers queries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from tests.support.prometheus import (
    PrometheusFactory,
    PrometheusNotFoundError,
    PrometheusQueryError,
    PrometheusServer,
    find_prometheus,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def tiny_exporter() -> Iterator[tuple[str, Counter]]:
    """A prometheus_client HTTP server on a free loopback port with one counter."""
    registry = CollectorRegistry()
    counter = Counter("harness_probe_total", "Counts harness probes.", ["kind"], registry=registry)
    counter.labels(kind="probe").inc(3)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{server.server_port}", counter
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_prometheus_scrapes_the_target_and_answers_queries(
    prometheus_factory: PrometheusFactory, tiny_exporter: tuple[str, Counter]
) -> None:
    target, counter = tiny_exporter
    prom = prometheus_factory([target], job="harness")

    prom.wait_for_targets_up(timeout=10)
    result = prom.wait_for('harness_probe_total{kind="probe"}', timeout=10)
    assert result[0]["metric"]["job"] == "harness"
    assert result[0]["metric"]["instance"] == target
    assert float(result[0]["value"][1]) == 3.0

    counter.labels(kind="probe").inc(2)
    prom.wait_for('harness_probe_total{kind="probe"} == 5', timeout=10)

    (scalar,) = prom.query("1 + 1")
    assert scalar["metric"] == {}
    assert scalar["value"][1] == "2"
    (up,) = prom.targets()
    assert up["health"] == "up"
    assert up["scrapeUrl"] == f"http://{target}/metrics"
    assert prom.series('{__name__="harness_probe_total"}') == [
        {"__name__": "harness_probe_total", "instance": target, "job": "harness", "kind": "probe"}
    ]
    # Prometheus scrapes OpenMetrics from prometheus_client: metadata is keyed by the family name.
    assert prom.metadata("harness_probe")["harness_probe"][0]["type"] == "counter"
    now = float(prom.query("time()")[0]["value"][0])
    (line,) = prom.query_range('harness_probe_total{kind="probe"}', now - 5, now, 1)
    assert line["values"]


def test_bad_expression_raises_with_the_prometheus_error(prometheus_factory: PrometheusFactory) -> None:
    prom = prometheus_factory([])
    with pytest.raises(PrometheusQueryError, match="parse error") as info:
        prom.query("sum(rate(x[5m])")
    assert info.value.error_type == "bad_data"
    with pytest.raises(TimeoutError, match="vector"):
        prom.wait_for("vector(1) == 2", timeout=0.3, interval=0.1)


def test_rule_files_are_loaded(prometheus_factory: PrometheusFactory, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n  - name: g\n    rules:\n      - record: job:harness_constant:value\n        expr: vector(7)\n"
    )
    prom = prometheus_factory([], rule_files=[rules])
    assert [g["name"] for g in prom.rules()] == ["g"]
    prom.wait_for("job:harness_constant:value == 7", timeout=10)


def test_stop_terminates_the_process(tmp_path: Path) -> None:
    server = PrometheusServer([], workdir=tmp_path).start()
    process = server._process
    assert process is not None
    assert process.poll() is None
    server.stop()
    assert process.poll() is not None
    server.stop()  # idempotent


def test_missing_binary_is_reported_clearly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMETHEUS_BIN", str(tmp_path / "nowhere" / "prometheus"))
    with pytest.raises(PrometheusNotFoundError, match="PROMETHEUS_BIN"):
        find_prometheus()
    monkeypatch.delenv("PROMETHEUS_BIN")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PrometheusNotFoundError, match=r"setup\.sh --test-tools"):
        find_prometheus()
