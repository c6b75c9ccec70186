"""Issue 18 point 2: the chart's containers, probes and rules match what each callstream process serves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import httpx
import yaml

from callstream.metrics_server import PROBE_PATHS, serve_metrics
from qa.app import QaConfig
from qa.server import QaServer
from streams.metrics import Metrics
from tests.helm.test_helm_chart import OPT_INS, containers, render
from tests.helm.test_helm_rules import METRIC_NAME, RULES, process_registries, series_names

PROBED = {"worker", "sinks", "queue", "intake"}
"""Commands whose process serves /healthz and /readyz (callstream.metrics_server; the queue's probes ask
review.service.Rounds, tests/review/test_rounds.py; the intake poller's its Heartbeat)."""
QA_VIEW = ("qa", "serve")
"""`callstream qa serve` serves no metrics port; its probes ask the QA app on its own port."""


def exported(process: str) -> set[str]:
    return series_names(process_registries()[process])


def test_every_container_runs_a_command_that_exists() -> None:
    """The real parser of each command reads the chart's arguments (it stops later, on the missing tenants)."""
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("CALLSTREAM_TENANTS_FILE", "CALLSTREAM_TENANT_DIRECTORY", "CALLSTREAM_CONFIG")}
    callstream = Path(sys.executable).with_name("callstream")
    for name, container in containers(render(OPT_INS)):
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
    for name, container in containers(render(OPT_INS)):
        if tuple(container["args"][:2]) == QA_VIEW:
            check_qa_view_probes(name, container)
            continue
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


def check_qa_view_probes(name: str, container: dict[str, Any]) -> None:
    """The probes name the port the chart tells `qa serve` to listen on, and paths the QA app answers without a
    session (a signed-in page would redirect to /login, and an unknown path is a 404)."""
    args = container["args"]
    [port] = container["ports"]
    assert port["containerPort"] == int(args[args.index("--port") + 1]), name
    assert args[args.index("--host") + 1] == "0.0.0.0", f"{name} must listen beyond the pod's loopback"
    # Only the cookie key is read while the app is built; the routes probed touch no store, users or tenants.
    config = QaConfig(records=cast(Any, None), users=cast(Any, None), tenants=cast(Any, None), secret_key="k")
    with QaServer(config) as server:
        assert httpx.get(f"{server.url}/no-such-page").status_code == 404
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] == port["name"], (name, probe)
            response = httpx.get(f"{server.url}{container[probe]['httpGet']['path']}", follow_redirects=False)
            assert response.status_code == 200, (name, probe, response.status_code)
