"""The Helm chart, linted and rendered by real Helm v4 code (helm-python-sdk), manifests checked."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "callstream"
RELEASE = "cs"
NAMESPACE = "callstream"
REQUIRED_ALERTS = {
    "WriteSuccessDrift",
    "ControlledSubstanceEscalationBelow100",
    "GuardrailBypassAttempt",
    "ConsumerLagHigh",
    "SiemDeliveryFailing",
    "DeadLettersIncreasing",
}
OPT_INS: dict[str, Any] = {"components": {"ema": {"enabled": True}}, "qa": {"enabled": True}}
"""Every component off by default switched on: the EMA browser workers and the QA view."""
SECRET_LOOKING = re.compile(
    r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|DSN|WEBHOOK_URL|CREDENTIAL"
)


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Render the chart offline and parse every manifest document."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    documents = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        documents += [doc for doc in yaml.safe_load_all(text) if doc]
    return documents


def of_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc["kind"] == kind]


def containers(documents: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for deployment in of_kind(documents, "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            yield deployment["metadata"]["name"], container


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def manifests_with_opt_ins() -> list[dict[str, Any]]:
    return render(OPT_INS)


def test_chart_metadata_loads() -> None:
    with helm.Chart.load(CHART) as chart:
        assert chart.metadata["apiVersion"] == "v2"
        assert chart.name == "callstream"
        assert chart.schema is not None


def test_lint_is_clean_in_strict_mode() -> None:
    report = helm.lint(CHART, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_lint_reports_invalid_values() -> None:
    report = helm.lint(CHART, {"components": {"worker": {"replicas": "three"}}})
    assert any("/components/worker/replicas" in error for error in report["errors"])


def test_rendered_kinds(
    manifests: list[dict[str, Any]], manifests_with_opt_ins: list[dict[str, Any]]
) -> None:
    kinds = sorted(doc["kind"] for doc in manifests)
    assert kinds == sorted(
        [
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "Deployment",
            "Deployment",
            "Deployment",
            "Service",
            "Service",
            "Service",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
            "PrometheusRule",
        ]
    )
    assert {d["metadata"]["name"] for d in of_kind(manifests, "Deployment")} == {
        "cs-callstream-worker",
        "cs-callstream-sinks",
        "cs-callstream-queue",
        "cs-callstream-intake",
    }
    assert {d["metadata"]["name"] for d in of_kind(manifests_with_opt_ins, "Deployment")} == {
        "cs-callstream-worker",
        "cs-callstream-sinks",
        "cs-callstream-queue",
        "cs-callstream-intake",
        "cs-callstream-ema",
        "cs-callstream-qa",
    }
    assert len(of_kind(manifests_with_opt_ins, "Service")) == 6
    assert of_kind(manifests_with_opt_ins, "Ingress") == []


def test_workers_run_the_callstream_commands(manifests_with_opt_ins: list[dict[str, Any]]) -> None:
    commands = {
        name: container["command"] + container["args"]
        for name, container in containers(manifests_with_opt_ins)
    }
    assert commands == {
        "cs-callstream-worker": ["callstream", "worker"],
        "cs-callstream-sinks": ["callstream", "sinks", "run"],
        "cs-callstream-queue": ["callstream", "queue", "run"],
        "cs-callstream-intake": ["callstream", "intake", "run", "--every", "60"],
        "cs-callstream-ema": ["callstream", "worker"],
        "cs-callstream-qa": ["callstream", "qa", "serve", "--host", "0.0.0.0", "--port", "19098",
                             "--users", "file:/etc/callstream/qa-users/qa-users.json",
                             "--secret-ref", "env:CALLSTREAM_QA_SESSION_KEY", "--secure-cookies"],
    }
    replicas = {
        d["metadata"]["name"]: d["spec"]["replicas"]
        for d in of_kind(manifests_with_opt_ins, "Deployment")
    }
    assert replicas == {"cs-callstream-worker": 3, "cs-callstream-sinks": 2, "cs-callstream-queue": 1,
                        "cs-callstream-intake": 1, "cs-callstream-ema": 1, "cs-callstream-qa": 1}


def test_the_review_queue_and_the_intake_poller_never_run_two_writers(manifests: list[dict[str, Any]]) -> None:
    """The queue process is its store's only writer, the intake poller its cursors' (two would file the same forms
    at once): one replica each, and no rolling update overlapping two pods."""
    strategies = {d["metadata"]["name"]: d["spec"].get("strategy") for d in of_kind(manifests, "Deployment")}
    assert strategies == {"cs-callstream-worker": None, "cs-callstream-sinks": None,
                          "cs-callstream-queue": {"type": "Recreate"}, "cs-callstream-intake": {"type": "Recreate"}}
    for component in ("queue", "intake"):
        report = helm.lint(CHART, {"components": {component: {"replicas": 2}}})
        assert any(f"/components/{component}/replicas" in error for error in report["errors"]), report["errors"]


def test_probes_resources_and_hardening(manifests_with_opt_ins: list[dict[str, Any]]) -> None:
    for name, container in containers(manifests_with_opt_ins):
        if name.endswith("-qa"):  # the QA view serves no metrics port: its probes ask the app itself
            port, ready = {"name": "http", "containerPort": 19098, "protocol": "TCP"}, "/healthz"
        else:
            port, ready = {"name": "metrics", "containerPort": 9102, "protocol": "TCP"}, "/readyz"
        assert container["ports"] == [port], name
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}, name
        assert container["readinessProbe"]["httpGet"] == {"path": ready, "port": port["name"]}, name
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) == {"cpu", "memory"}, name
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
        assert {"/tmp", "/etc/callstream/tenants"} <= mounts
        assert ("/dev/shm" in mounts) == name.endswith("-ema")
        assert ("/etc/callstream/qa-users" in mounts) == name.endswith("-qa")
    for deployment in of_kind(manifests_with_opt_ins, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False


def test_configuration_and_secrets_are_references_only(
    manifests_with_opt_ins: list[dict[str, Any]],
) -> None:
    assert of_kind(manifests_with_opt_ins, "Secret") == []
    for name, container in containers(manifests_with_opt_ins):
        env = {entry["name"]: entry for entry in container["env"]}
        assert env["CLICKHOUSE_DSN"]["valueFrom"]["secretKeyRef"] == {
            "name": "callstream-clickhouse",
            "key": "dsn",
        }
        for entry in container["env"]:
            if SECRET_LOOKING.search(entry["name"]):
                assert "value" not in entry, f"{name}: {entry['name']} is plaintext"
        sources = container["envFrom"]
        assert {"configMapRef": {"name": "cs-callstream-config"}} in sources
        if name.endswith("-qa"):
            # It signs cookies with a key from a Secret, and talks to neither ModMed nor SIEMs nor the alert hook.
            assert env["CALLSTREAM_QA_SESSION_KEY"]["valueFrom"]["secretKeyRef"] == {
                "name": "callstream-qa-session",
                "key": "key",
            }
            assert sources == [{"configMapRef": {"name": "cs-callstream-config"}}]
            assert "CALLSTREAM_ALERT_WEBHOOK_URL" not in env
            continue
        assert (
            env["CALLSTREAM_ALERT_WEBHOOK_URL"]["valueFrom"]["secretKeyRef"]["name"]
            == "callstream-alert-webhook"
        )
        assert {"secretRef": {"name": "callstream-modmed-credentials"}} in sources
    [config] = [
        c
        for c in of_kind(manifests_with_opt_ins, "ConfigMap")
        if c["metadata"]["name"] == "cs-callstream-config"
    ]
    assert config["data"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka-bootstrap.kafka.svc:9092"
    assert config["data"]["CALLSTREAM_TENANT_DIRECTORY"] == "/etc/callstream/tenants/tenants.yaml"
    assert not any(SECRET_LOOKING.search(key) for key in config["data"])


def test_tenant_directory_can_come_from_a_secret() -> None:
    documents = render(
        {**OPT_INS, "tenantDirectory": {"source": "secret", "name": "tenants", "key": "practices.yaml"}}
    )
    assert len(of_kind(documents, "Deployment")) == 6
    for deployment in of_kind(documents, "Deployment"):
        [volume] = [
            v
            for v in deployment["spec"]["template"]["spec"]["volumes"]
            if v["name"] == "tenant-directory"
        ]
        assert volume["secret"]["secretName"] == "tenants"
        assert volume["secret"]["items"] == [{"key": "practices.yaml", "path": "practices.yaml"}]


def test_service_monitor_selects_every_metrics_service(
    manifests_with_opt_ins: list[dict[str, Any]],
) -> None:
    [monitor] = of_kind(manifests_with_opt_ins, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    endpoint_ports = {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    pods = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d["spec"]["template"]["metadata"][
            "labels"
        ]
        for d in of_kind(manifests_with_opt_ins, "Deployment")
    }
    services = of_kind(manifests_with_opt_ins, "Service")
    assert [s["metadata"]["name"] for s in services if not selector.items() <= s["metadata"]["labels"].items()] == [
        "cs-callstream-qa"
    ], "only the QA view's web Service is not scraped"
    for service in services:
        if service["metadata"]["name"] == "cs-callstream-qa":
            continue
        assert {port["name"] for port in service["spec"]["ports"]} == endpoint_ports
        assert service["spec"]["ports"][0]["targetPort"] == "metrics"
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        assert service["spec"]["selector"].items() <= pods[component].items()
        others = [labels for name, labels in pods.items() if name != component]
        assert not any(service["spec"]["selector"].items() <= labels.items() for labels in others)


def test_deployment_selectors_match_their_pods(manifests_with_opt_ins: list[dict[str, Any]]) -> None:
    for deployment in of_kind(manifests_with_opt_ins, "Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_prometheus_rule_ships_the_rules_file(manifests: list[dict[str, Any]]) -> None:
    [rule] = of_kind(manifests, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "rules.yaml").read_text())
    alerts = {
        r["alert"] for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r
    }
    assert REQUIRED_ALERTS <= alerts


def test_dashboard_config_map_is_labelled_for_the_sidecar(manifests: list[dict[str, Any]]) -> None:
    [dashboard_map] = [
        c
        for c in of_kind(manifests, "ConfigMap")
        if c["metadata"]["name"] == "cs-callstream-dashboard"
    ]
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboard_map["data"]["callstream-sre.json"])
    assert dashboard == json.loads((CHART / "files" / "dashboard.json").read_text())
    expressions = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    for needle in (
        "callstream:write_success_ratio:15m",
        "callstream_cs_escalations_total",
        "callstream_bypass_attempts_total",
        "histogram_quantile(0.99, sum by (le) (rate(callstream_reply_latency_seconds_bucket",
        "callstream_consumer_lag",
        "callstream_siem_deliveries_total",
    ):
        assert needle in expressions
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "practice_id"]


def test_monitoring_objects_can_be_switched_off() -> None:
    documents = render(
        {
            "serviceMonitor": {"enabled": False},
            "prometheusRule": {"enabled": False},
            "grafanaDashboard": {"enabled": False},
        }
    )
    assert {doc["kind"] for doc in documents} == {
        "ConfigMap",
        "Deployment",
        "Service",
        "ServiceAccount",
    }


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        (
            {
                "components": {
                    "worker": {"extraEnv": [{"name": "MODMED_PASSWORD", "value": "hunter2"}]}
                }
            },
            "extraEnv/0/name",
        ),
        (
            {
                "components": {
                    "sinks": {"extraEnv": [{"name": "SIEM_WEBHOOK_URL", "value": "https://x"}]}
                }
            },
            "extraEnv/0/name",
        ),
        ({"components": {"worker": {"replicas": "three"}}}, "/components/worker/replicas"),
        (
            {"kafka": {"bootstrapServers": "kafka:9092", "password": "x"}},
            "additional properties 'password'",
        ),
        ({"kafka": {"bootstrapServers": "kafka:9092; rm -rf /"}}, "/kafka/bootstrapServers"),
        (
            {"securityContext": {"readOnlyRootFilesystem": False}},
            "/securityContext/readOnlyRootFilesystem",
        ),
        (
            {"clickhouse": {"dsnSecret": {"name": "Bad_Name", "key": "dsn"}}},
            "/clickhouse/dsnSecret/name",
        ),
        ({"metrics": {"port": 80}}, "/metrics/port"),
        (
            {"qa": {"sessionKeySecret": {"name": "callstream-qa-session", "key": "key", "value": "hunter2"}}},
            "additional properties 'value'",
        ),
        ({"qa": {"extraEnv": [{"name": "CALLSTREAM_QA_SECRET_REF", "value": "env:X"}]}}, "extraEnv/0/name"),
        ({"qa": {"ingress": {"enabled": True, "host": "QA host; x"}}}, "/qa/ingress/host"),
        (
            {
                "components": {
                    "worker": {
                        "resources": {
                            "requests": {"cpu": "lots", "memory": "1Gi"},
                            "limits": {"cpu": 1, "memory": "1Gi"},
                        }
                    }
                }
            },
            "requests/cpu",
        ),
    ],
)
def test_schema_refuses_bad_values(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmValuesError) as refused:
        render(values)
    assert complaint in str(refused.value)


def test_a_secret_reference_in_extra_env_is_accepted() -> None:
    reference = {
        "name": "MODMED_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "modmed", "key": "password"}},
    }
    documents = render(
        {"components": {"worker": {"extraEnv": [reference, {"name": "FEATURE_X", "value": "on"}]}}}
    )
    env = {name: container["env"] for name, container in containers(documents)}
    assert reference in env["cs-callstream-worker"]
    assert reference not in env["cs-callstream-sinks"]


def test_a_clickhouse_cluster_name_reaches_the_processes_only_when_set() -> None:
    def config(values: dict[str, Any]) -> dict[str, str]:
        [config_map] = [c for c in of_kind(render(values), "ConfigMap") if c["metadata"]["name"] == "cs-callstream-config"]
        return config_map["data"]

    assert "CLICKHOUSE_CLUSTER" not in config({})
    assert config({"clickhouse": {"cluster": "prod_eu"}})["CLICKHOUSE_CLUSTER"] == "prod_eu"
    report = helm.lint(CHART, {"clickhouse": {"cluster": "prod; DROP DATABASE x"}})
    assert any("/clickhouse/cluster" in error for error in report["errors"]), report["errors"]


def test_the_qa_view_is_reached_through_its_service_and_an_opt_in_ingress(
    manifests_with_opt_ins: list[dict[str, Any]],
) -> None:
    [service] = [s for s in of_kind(manifests_with_opt_ins, "Service") if s["metadata"]["name"] == "cs-callstream-qa"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    [deployment] = [d for d in of_kind(manifests_with_opt_ins, "Deployment") if d["metadata"]["name"] == "cs-callstream-qa"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    [users] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "qa-users"]
    assert users["secret"]["secretName"] == "callstream-qa-users"
    assert users["secret"]["items"] == [{"key": "qa-users.json", "path": "qa-users.json"}]
    documents = render({"qa": {"enabled": True, "secureCookies": False, "ingress": {
        "enabled": True, "className": "nginx", "host": "qa.example.org",
        "tls": [{"secretName": "qa-tls", "hosts": ["qa.example.org"]}]}}})
    [ingress] = of_kind(documents, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "qa-tls", "hosts": ["qa.example.org"]}]
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == "qa.example.org"
    assert rule["http"]["paths"][0]["backend"]["service"] == {"name": "cs-callstream-qa", "port": {"name": "http"}}
    [(_, container)] = [(n, c) for n, c in containers(documents) if n == "cs-callstream-qa"]
    assert "--secure-cookies" not in container["args"]
    report = helm.lint(CHART, OPT_INS | {"qa": {"enabled": True, "ingress": {"enabled": True}}}, strict=True,
                       namespace=NAMESPACE, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
