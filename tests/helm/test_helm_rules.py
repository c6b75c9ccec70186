"""Alert rules and dashboard queries checked by promtool (Debian `prometheus` package)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from prometheus_client import CollectorRegistry

from guards.model import WRITE_COMMANDS
from review.service import QueueMetrics
from sinks.metrics import SinkMetrics
from streams.intake_poller import IntakeMetrics
from streams.metrics import Metrics

CHART = Path(__file__).resolve().parents[2] / "helm" / "callstream"
RULES = CHART / "files" / "rules.yaml"
RULES_TEST = CHART / "tests" / "rules_test.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"
METRIC_NAME = re.compile(r"\bcallstream_[a-z_]+\b")
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool; a missing binary is a failure (make test installs it), never a skip."""
    binary = shutil.which("promtool")
    assert binary is not None, "promtool not found: install the Debian 'prometheus' package"
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def rules_document() -> dict[str, Any]:
    return yaml.safe_load(RULES.read_text())


def alert_names() -> set[str]:
    return {
        rule["alert"]
        for group in rules_document()["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def process_registries() -> dict[str, CollectorRegistry]:
    """The registry each `callstream <command>` serves on /metrics, by command."""
    sinks = SinkMetrics()
    sinks.watch_backlogs(list)  # the scrape-time backlog gauges exist with or without parked practices
    return {"worker": Metrics().registry, "sinks": sinks.registry, "queue": QueueMetrics().registry,
            "intake": IntakeMetrics().registry}


def series_names(registry: CollectorRegistry) -> set[str]:
    """Series names a registry exposes, from the declared metric types."""
    return {family.name + suffix for family in registry.collect() for suffix in SUFFIXES[family.type]}


def exported_series_names() -> set[str]:
    """Series names some callstream process (worker, sinks, review queue, intake poller) exposes."""
    return set().union(*(series_names(registry) for registry in process_registries().values()))


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_promtool_checks_the_rules_file() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 12 rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rendered_prometheus_rule_passes_the_same_unit_tests(tmp_path: Path) -> None:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(name="cs", namespace="callstream")
    rule = yaml.safe_load(rendered["callstream/templates/prometheusrule.yaml"])
    (tmp_path / "files").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "files" / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    (tmp_path / "tests" / "rules_test.yaml").write_text(RULES_TEST.read_text())
    result = promtool("test", "rules", "tests/rules_test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_threshold_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests have teeth: loosening the lag threshold must make them fail."""
    (tmp_path / "files").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "files" / "rules.yaml").write_text(RULES.read_text().replace("> 1000", "> 100000"))
    (tmp_path / "tests" / "rules_test.yaml").write_text(RULES_TEST.read_text())
    result = promtool("test", "rules", "tests/rules_test.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "alertname: ConsumerLagHigh" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    silent = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert firing == alert_names()
    assert silent == alert_names()


def test_rules_and_dashboard_use_only_declared_metrics() -> None:
    referenced = set(METRIC_NAME.findall(RULES.read_text()))
    referenced |= {name for expr in dashboard_expressions() for name in METRIC_NAME.findall(expr)}
    assert referenced, "rules and dashboard reference metrics"
    assert referenced <= exported_series_names()


def test_write_command_selector_matches_the_declared_write_commands() -> None:
    selectors = set(re.findall(r'command=~"([^"]+)"', RULES.read_text()))
    assert {frozenset(selector.split("|")) for selector in selectors} == {WRITE_COMMANDS}


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, must parse as a recording rule."""
    grafana_variables = {"$practice_id": ".*", "$__rate_interval": "5m", "$__range": "1h"}
    rules = []
    for number, panel_query in enumerate(dashboard_expressions()):
        expression = panel_query
        for variable, value in grafana_variables.items():
            expression = expression.replace(variable, value)
        assert "$" not in expression, expression
        rules.append({"record": f"dashboard:query_{number}", "expr": expression})
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "broken", ["sum by (practice_id) (rate(callstream_x_total[5m]", "callstream_consumer_lag >"]
)
def test_promtool_rejects_invalid_promql(tmp_path: Path, broken: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "g", "rules": [{"record": "x:y", "expr": broken}]}]})
    )
    assert promtool("check", "rules", str(path)).returncode != 0
