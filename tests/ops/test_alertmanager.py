"""The example Alertmanager configuration: amtool-valid, routes every alert of the kit to the
receivers the policy promises, and — in a real Alertmanager — inhibits the symptom alerts while
both sources are down."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.prometheus import free_port
from tests.support.promql import CONFIG, load_rule_groups

AM_CONFIG = CONFIG / "alertmanager.yml"
ALERTS = {rule["alert"]: rule for group in load_rule_groups(CONFIG / "alerts.yml") for rule in group["rules"]}
SYMPTOMS = {
    "AlpacaStreamDisconnected",
    "DataSourceFailoverActive",
    "MarketDataStale",
    "AlpacaMessageLatencyHigh",
    "AlpacaErrorRateHigh",
    "CrossSourcePriceDeltaHigh",
    "ValidationFailureSpike",
}

# While the primary stream is down (or replaced by the fallback), its silent symbols and missing bars
# are symptoms of that.
STREAM_DOWN = {"AlpacaStreamDisconnected", "DataSourceFailoverActive"}
STREAM_DOWN_SYMPTOMS = {"MarketDataStale", "AlpacaBarsMissing"}


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("amtool")
    if binary is None:
        pytest.fail("amtool is not on PATH: run `scripts/setup.sh --test-tools` (Debian prometheus-alertmanager)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=30)


def test_amtool_check_config() -> None:
    result = amtool("check-config", str(AM_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_amtool_rejects_a_broken_config(tmp_path: Path) -> None:
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(AM_CONFIG.read_text().replace("receiver: ops-slack", "receiver: nobody", 1))
    assert amtool("check-config", str(broken)).returncode != 0


def expected_receivers(labels: dict[str, str]) -> set[str]:
    """The routing policy: info is not notified, critical pages, trading/risk go to their channels,
    the rest to ops."""
    if labels["severity"] == "info":
        return {"no-notification"}
    receivers = set()
    if labels["severity"] == "critical":
        receivers.add("pager")
    channel = {"trading": "trading-slack", "risk": "risk-slack"}.get(labels["category"])
    if channel:
        receivers.add(channel)
    return receivers or {"ops-slack"}


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_every_alert_routes_by_policy(alert: str) -> None:
    labels = {"alertname": alert, **ALERTS[alert]["labels"]}
    result = amtool("config", "routes", "test", f"--config.file={AM_CONFIG}", *(f"{k}={v}" for k, v in labels.items()))
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.strip().split(",")) == expected_receivers(labels)


def test_secrets_are_read_from_files() -> None:
    document = yaml.safe_load(AM_CONFIG.read_text())
    text = AM_CONFIG.read_text()
    for secret_key in ("routing_key:", "api_url:", "service_key:", "auth_password:", "slack_api_url:"):
        assert f" {secret_key}" not in text, f"{secret_key} inline: use the *_file variant"
    files = [c["routing_key_file"] for r in document["receivers"] for c in r.get("pagerduty_configs", [])]
    files += [
        c["api_url_file"] for r in document["receivers"] for c in r.get("slack_configs", []) if "api_url_file" in c
    ]
    files.append(document["global"]["slack_api_url_file"])
    assert files
    assert all(f.startswith("/run/secrets/") for f in files)


def test_inhibition_rules_cover_the_symptoms() -> None:
    document = yaml.safe_load(AM_CONFIG.read_text())
    (both_down,) = [
        r for r in document["inhibit_rules"] if r["source_matchers"] == ['alertname="DataSourceBothUnavailable"']
    ]
    assert set(both_down["equal"]) == {"job", "instance"}
    target = both_down["target_matchers"][0]
    names = set(target.split('"')[1].split("|"))
    assert names == SYMPTOMS
    assert names <= ALERTS.keys()


def test_a_stream_outage_inhibits_the_feed_quality_symptoms() -> None:
    document = yaml.safe_load(AM_CONFIG.read_text())
    (stream_down,) = [r for r in document["inhibit_rules"] if "AlpacaStreamDisconnected" in r["source_matchers"][0]]
    assert set(stream_down["equal"]) == {"job", "instance"}
    sources = set(stream_down["source_matchers"][0].split('"')[1].split("|"))
    targets = set(stream_down["target_matchers"][0].split('"')[1].split("|"))
    assert sources == STREAM_DOWN
    assert targets == STREAM_DOWN_SYMPTOMS
    assert sources | targets <= ALERTS.keys()


# --- a real Alertmanager --------------------------------------------------------------------------


def alertmanager_binary() -> str:
    configured = os.environ.get("ALERTMANAGER_BIN")
    found = configured or shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if found is None:
        pytest.fail("alertmanager is not on PATH: run `scripts/setup.sh --test-tools` (Debian prometheus-alertmanager)")
    return found


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The repository's alertmanager.yml in a real Alertmanager on a free loopback port.

    Notifications start only after group_wait (10 s and more), later than these tests need, and
    the secret files it would read do not exist here: nothing is ever sent."""
    workdir = tmp_path_factory.mktemp("alertmanager")
    port = free_port()
    with (workdir / "alertmanager.log").open("wb") as log:
        process = subprocess.Popen(
            [
                alertmanager_binary(),
                f"--config.file={AM_CONFIG}",
                f"--storage.path={workdir}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, (workdir / "alertmanager.log").read_text()
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "alertmanager not ready in 15 s"
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def alert(name: str, instance: str, **extra: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    labels = {"alertname": name, "job": "alpaca-exporter", "instance": instance, **ALERTS[name]["labels"], **extra}
    return {
        "labels": labels,
        "annotations": ALERTS[name]["annotations"],
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(minutes=10)).isoformat(),
    }


def inhibited(url: str) -> dict[tuple[str, str], bool]:
    alerts = httpx.get(f"{url}/api/v2/alerts", timeout=5).json()
    return {(a["labels"]["alertname"], a["labels"]["instance"]): bool(a["status"]["inhibitedBy"]) for a in alerts}


@pytest.mark.e2e
def test_real_alertmanager_inhibits_symptoms_of_an_outage(alertmanager: str) -> None:
    posted = [
        alert("DataSourceBothUnavailable", "a:9877", state="BOTH_UNAVAILABLE"),
        *(alert(name, "a:9877") for name in sorted(SYMPTOMS)),
        alert("AlpacaAuthenticationFailed", "a:9877"),  # a cause, not a symptom
        alert("AlpacaStreamDisconnected", "b:9877"),  # another instance
        alert("AlpacaExporterDown", "c:9877"),
        alert("AlpacaStreamDisconnected", "c:9877"),
        alert("LatencySLOBurnRateFast", "d:9877"),
        alert("LatencySLOBurnRateSlow", "d:9877"),
        alert("AvailabilitySLOBurnRateSlow", "d:9877"),  # another SLO
        alert("AlpacaStreamDisconnected", "e:9877"),
        *(alert(name, "e:9877", symbol="SPY") for name in sorted(STREAM_DOWN_SYMPTOMS)),
        alert("DataSourceFailoverActive", "f:9877", state="FALLBACK_ACTIVE"),
        alert("MarketDataStale", "f:9877", symbol="SPY"),
        alert("MarketDataStale", "g:9877", symbol="SPY"),  # a symbol silent alone
        alert("AlpacaStreamLagging", "e:9877"),  # the stream's own problem, not inhibited
    ]
    response = httpx.post(f"{alertmanager}/api/v2/alerts", json=posted, timeout=5)
    assert response.status_code == 200, response.text

    expected = {(name, "a:9877"): True for name in SYMPTOMS}
    expected |= {
        ("DataSourceBothUnavailable", "a:9877"): False,
        ("AlpacaAuthenticationFailed", "a:9877"): False,
        ("AlpacaStreamDisconnected", "b:9877"): False,
        ("AlpacaExporterDown", "c:9877"): False,
        ("AlpacaStreamDisconnected", "c:9877"): True,
        ("LatencySLOBurnRateFast", "d:9877"): False,
        ("LatencySLOBurnRateSlow", "d:9877"): True,
        ("AvailabilitySLOBurnRateSlow", "d:9877"): False,
        ("AlpacaStreamDisconnected", "e:9877"): False,
        ("DataSourceFailoverActive", "f:9877"): False,
        ("MarketDataStale", "f:9877"): True,
        ("MarketDataStale", "g:9877"): False,
        ("AlpacaStreamLagging", "e:9877"): False,
    }
    expected |= {(name, "e:9877"): True for name in STREAM_DOWN_SYMPTOMS}
    # The inhibitor learns about source alerts asynchronously: poll briefly.
    deadline = time.monotonic() + 5
    state = inhibited(alertmanager)
    while state != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        state = inhibited(alertmanager)
    assert state == expected
