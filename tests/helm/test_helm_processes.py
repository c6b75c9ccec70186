"""Issue 18 point 2: the chart's containers, probes and rules match what each callstream process serves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from callstream.metrics_server import PROBE_PATHS, serve_metrics
from streams.metrics import Metrics
from tests.helm.test_helm_chart import containers, render
from tests.helm.test_helm_rules import METRIC_NAME, RULES, process_registries, series_names

PROBED = {"worker", "sinks", "queue", "intake"}
"""Commands whose process serves /healthz and /readyz (callstream.metrics_server; the queue's probes ask
review.service.Rounds, tests/review/test_rounds.py; the intake poller's its Heartbeat)."""


def exported(process: str) -> set[str]:
    return series_names(process_registries()[process])


def test_every_container_runs_a_command_that_exists() -> None:
    """The real parser of each command reads the chart's arguments (it stops later, on the missing tenants)."""
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("CALLSTREAM_TENANTS_FILE", "CALLSTREAM_TENANT_DIRECTORY", "CALLSTREAM_CONFIG")}
    callstream = Path(sys.executable).with_name("callstream")
    for name, container in containers(render({"components": {"ema": {"enabled": True}}})):
        assert container["command"] == ["callstream"], name
        result = subprocess.run([str(callstream), *container["args"]], capture_output=True, text=True, timeout=60,
                                env=environment, check=False)
        assert "tenant directory" in result.stderr, f"{name}: {result.stderr.strip()}"
        assert "unrecognized arguments" not in result.stderr and "invalid choice" not in result.stderr, name


def test_every_probe_path_is_served_by_the_process_it_targets() -> None:
    server = serve_metrics(Metrics().registry, "127.0.0.1", 0)
    try:
        served = {path for path in PROBE_PATHS
                  if httpx.get(f"http://127.0.0.1:{server.port}{path}").status_code != 404}
    finally:
        server.close()
    assert served == PROBE_PATHS
    for name, container in containers(render({"components": {"ema": {"enabled": True}}})):
        assert container["args"][0] in PROBED, f"{name} runs a process that serves no probes"
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["path"] in served, (name, probe)
            assert container[probe]["httpGet"]["port"] == "metrics", (name, probe)


def test_every_metric_a_rule_uses_is_exported_by_some_process() -> None:
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text())
    everywhere = set().union(*(exported(process) for process in process_registries()))
    for group in rules["groups"]:
        for rule in group["rules"]:
            used = set(METRIC_NAME.findall(rule["expr"]))
            assert used <= everywhere, (rule.get("alert") or rule.get("record"), used - everywhere)
    for alert, process in (("SiemDeliveryFailing", "sinks"), ("SiemDeliveryDelayed", "sinks"),
                           ("ReviewQueueStale", "queue"), ("IntakeFormUnfiled", "intake")):
        rule = next(rule for group in rules["groups"] for rule in group["rules"] if rule.get("alert") == alert)
        used = set(METRIC_NAME.findall(rule["expr"]))
        assert used <= exported(process), f"{alert} reads what `callstream {process}` exports"
