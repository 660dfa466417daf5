"""Alerting and recording rules: promtool checks, promtool unit tests (every alert fires in one
history and stays quiet in another), and the conventions the kit promises."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO
from tests.support.promql import CONFIG, load_rule_groups

ALERTS = [rule for group in load_rule_groups(CONFIG / "alerts.yml") for rule in group["rules"]]
RECORDS = [rule for group in load_rule_groups(CONFIG / "recording_rules.yml") for rule in group["rules"]]
UNIT_TESTS = sorted((CONFIG / "tests").glob("*.yml"))
SEVERITIES = {"critical", "warning", "info"}
CATEGORIES = {"availability", "connectivity", "trading", "risk", "performance", "errors", "slo"}


def promtool(*args: str, cwd: Path = REPO, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not on PATH: run `scripts/setup.sh --test-tools` (Debian package prometheus)")
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", "config/recording_rules.yml", "config/alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_check_config() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    # One promtool per file, concurrently: the day-long SLO histories dominate the run time.
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not on PATH: run `scripts/setup.sh --test-tools` (Debian package prometheus)")
    processes = {
        path.name: subprocess.Popen(
            [binary, "test", "rules", path.name],
            cwd=path.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for path in UNIT_TESTS
    }
    failures = []
    for name, process in processes.items():
        output, _ = process.communicate(timeout=60)
        if process.returncode != 0 or "SUCCESS" not in output:
            failures.append(f"{name}:\n{output}")
    assert not failures, "\n".join(failures)


def test_a_wrong_expectation_fails(tmp_path: Path) -> None:
    """The unit-test runner does report failures (the tests above can fail)."""
    (tmp_path / "wrong_test.yml").write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(CONFIG / "recording_rules.yml"), str(CONFIG / "alerts.yml")],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": [{"series": 'up{job="alpaca-exporter", instance="a"}', "values": "1x10"}],
                        "alert_rule_test": [
                            {
                                "eval_time": "10m",
                                "alertname": "AlpacaExporterDown",
                                "exp_alerts": [{"exp_labels": {"instance": "a"}}],
                            }
                        ],
                    }
                ],
            }
        )
    )
    result = promtool("test", "rules", "wrong_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


def unit_test_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for path in UNIT_TESTS:
        document = yaml.safe_load(path.read_text())
        for test in document["tests"]:
            cases.extend(test.get("alert_rule_test", []))
    return cases


@pytest.mark.parametrize("alert", [rule["alert"] for rule in ALERTS])
def test_every_alert_has_a_firing_and_a_quiet_history(alert: str) -> None:
    cases = [c for c in unit_test_cases() if c["alertname"] == alert]
    assert any(c.get("exp_alerts") for c in cases), f"no unit test where {alert} fires"
    assert any(not c.get("exp_alerts") for c in cases), f"no unit test where {alert} stays quiet"


def test_unit_tests_load_both_rule_files() -> None:
    for path in UNIT_TESTS:
        files = {(path.parent / f).resolve() for f in yaml.safe_load(path.read_text())["rule_files"]}
        assert files == {CONFIG / "alerts.yml", CONFIG / "recording_rules.yml"}, path.name


def runbook_anchors() -> set[str]:
    """GitHub's anchors of the runbook's headings."""
    anchors = set()
    for line in (REPO / "docs/runbooks.md").read_text().splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


@pytest.mark.parametrize("rule", ALERTS, ids=[rule["alert"] for rule in ALERTS])
def test_alert_conventions(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in SEVERITIES
    assert rule["labels"]["category"] in CATEGORIES
    assert re.fullmatch(r"\d+[smh]", rule["for"]), "every alert waits a sensible `for`"
    annotations = rule["annotations"]
    assert annotations["summary"]
    assert annotations["description"]
    path, _, anchor = annotations["runbook_url"].partition("#")
    assert path == "docs/runbooks.md"
    assert anchor == rule["alert"].lower()
    assert anchor in runbook_anchors(), f"docs/runbooks.md has no section #{anchor}"


def test_alert_names_are_unique() -> None:
    names = [rule["alert"] for rule in ALERTS]
    assert len(names) == len(set(names))


def test_every_runbook_section_belongs_to_an_alert() -> None:
    text = (REPO / "docs/runbooks.md").read_text()
    sections = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    assert sorted(sections) == sorted([*(rule["alert"] for rule in ALERTS), "The SLOs", "Takeover (Kubernetes)"])


def test_recording_rules_follow_the_naming_convention() -> None:
    names = [rule["record"] for rule in RECORDS]
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"(instance|instance_symbol):[a-z0-9_]+:[a-z0-9_]+", name), name
    for rule in RECORDS:
        expr = " ".join(rule["expr"].split())
        if rule["record"].startswith("instance_symbol:"):
            # level `instance_symbol`: per-symbol series, never aggregated away from the symbol.
            assert not re.search(r"\b(by|without) \(", expr) or "by (job, instance, symbol)" in expr, rule["record"]
            continue
        # level `instance`: every rule keeps exactly the job and instance labels.
        assert re.search(r"by \(job, instance[,)]", expr) or expr.startswith(("1 - instance:", "instance:")), rule[
            "record"
        ]


def test_slo_alerts_follow_the_workbook() -> None:
    """Multi-window pairs: (1h, 5m) and (6h, 30m) at 14.4x and 6x page; (1d, 2h), (3d, 6h) ticket."""
    by_name = {rule["alert"]: " ".join(rule["expr"].split()) for rule in ALERTS}
    for slo, budget in (("datasource_router_availability_slo", "0.005"), ("alpaca_message_latency_slo", "0.05")):
        prefix = "Availability" if "availability" in slo else "Latency"
        fast, slow = by_name[f"{prefix}SLOBurnRateFast"], by_name[f"{prefix}SLOBurnRateSlow"]
        for long, short, factor in (("1h", "5m", "14.4"), ("6h", "30m", "6")):
            for window in (long, short):
                assert f"instance:{slo}:error_ratio_rate{window} > ({factor} * {budget})" in fast
        for long, short, factor in (("1d", "2h", "3 * "), ("3d", "6h", "")):
            for window in (long, short):
                threshold = f"({factor}{budget})" if factor else budget
                assert f"instance:{slo}:error_ratio_rate{window} > {threshold}" in slow


PAIR_ALERTS = {"AlpacaExporterDown", "AlpacaExporterNoLeader", "AlpacaExporterSplitBrain"}
GATE = "unless on (job, instance) alpaca_exporter_leader == 0"


@pytest.mark.parametrize("rule", [r for r in ALERTS if r["alert"] not in PAIR_ALERTS], ids=lambda r: r["alert"])
def test_every_symptom_alert_fires_only_for_the_leader(rule: dict[str, Any]) -> None:
    expr = rule["expr"].strip()
    assert expr.endswith(GATE)
    # The gate applies to the whole expression: `A or B unless C` would gate B only.
    body = expr.removesuffix(GATE).strip()
    assert "\n" not in body or (body.startswith("(") and body.endswith(")"))
