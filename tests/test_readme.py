"""The README's claims that code can check: the generated state diagram, the variables and the metrics."""

from __future__ import annotations

import re
from pathlib import Path

from exporter.core.failover import mermaid_diagram
from exporter.metrics import CATALOGUE
from exporter.settings import Settings, env_name

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_state_diagram_in_readme_is_generated_from_the_transition_table() -> None:
    assert f"```mermaid\n{mermaid_diagram()}\n```" in README


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"`((?:EXPORTER|APCA)_[A-Z_]+)`", README))
    for field in Settings.model_fields:
        assert env_name(field) in documented, f"{env_name(field)} is not in the README"


def test_every_exposed_metric_is_documented() -> None:
    for spec in CATALOGUE:
        assert f"`{spec.name}`" in README, f"{spec.name} is not in the README"


def test_quick_start_commands_exist() -> None:
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert f"./{script}" in README
        assert (Path(__file__).resolve().parents[1] / script).is_file()
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "./scripts/test.sh" in ci
