"""Metrics: the declared names, recorded values scraped over real HTTP, probes and label hygiene."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from callstream.metrics_server import MetricsServer, serve_metrics
from callstream.siem_delivery import SiemOutcome
from streams.metrics import VOICE_TURN_BUCKETS, MetricLabelError, Metrics, Route

DECLARED_FAMILIES = {
    "callstream_command_attempts": "counter",
    "callstream_command_successes": "counter",
    "callstream_command_failures": "counter",
    "callstream_fhir_request_seconds": "histogram",
    "callstream_ema_step_seconds": "histogram",
    "callstream_reply_latency_seconds": "histogram",
    "callstream_escalations": "counter",
    "callstream_cs_requests": "counter",
    "callstream_cs_escalations": "counter",
    "callstream_guard_hits": "counter",
    "callstream_bypass_attempts": "counter",
    "callstream_dead_letters": "counter",
    "callstream_siem_deliveries": "counter",
    "callstream_siem_delivery_seconds": "histogram",
    "callstream_consumer_lag": "gauge",
    "callstream_alarm_state": "gauge",
    "callstream_events_processed": "counter",
    "callstream_events_in_flight": "gauge",
}


class Scraper:
    """Reads a running endpoint the way Prometheus does."""

    def __init__(self, server: MetricsServer) -> None:
        self.base = f"http://127.0.0.1:{server.port}"

    def get(self, path: str, **headers: str) -> httpx.Response:
        return httpx.get(self.base + path, headers=headers, timeout=5)

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        response = self.get("/metrics")
        assert response.status_code == 200
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
def scraper(metrics: Metrics) -> Iterator[Scraper]:
    server = serve_metrics(metrics.registry, "127.0.0.1", 0)
    try:
        yield Scraper(server)
    finally:
        server.close()


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


def test_the_declared_set_of_metric_families(metrics: Metrics) -> None:
    families = {family.name: family.type for family in metrics.registry.collect()}
    assert families == DECLARED_FAMILIES


def test_two_workers_in_one_process_do_not_collide() -> None:
    first, second = Metrics(), Metrics()
    first.record_bypass_attempt("prac-0001", "prompt_injection")
    assert first.registry is not second.registry
    assert (
        second.registry.get_sample_value(
            "callstream_bypass_attempts_total",
            {"practice_id": "prac-0001", "signal": "prompt_injection"},
        )
        is None
    )


def test_recorded_values_are_scraped_over_http(metrics: Metrics, scraper: Scraper) -> None:
    metrics.record_command("prac-0001", "BOOK_APPOINTMENT", Route.FHIR)
    metrics.record_command("prac-0001", "BOOK_APPOINTMENT", "fhir", error_class="http_503")
    metrics.record_command("prac-0002", "CREATE_TASK", Route.EMA)
    metrics.observe_fhir_request("Slot", "search", "success", 0.12)
    metrics.observe_ema_step("book_template", "failure", 4.2)
    metrics.observe_reply_latency("BOOK_APPOINTMENT", 0.031)
    metrics.record_escalation("prac-0001", "provider_task")
    metrics.record_controlled_substance_request("prac-0001", escalated=True)
    metrics.record_guard_hit("prac-0001", "refill_never_promised")
    metrics.record_bypass_attempt("prac-0002", "prompt_injection")
    metrics.record_dead_letter("callstream.calls.v1", "schema_error")
    metrics.record_siem_delivery("prac-0001", SiemOutcome.RETRIED, 0.4)
    metrics.record_siem_delivery("prac-0001", "delivered", 0.05)
    metrics.record_siem_delivery("prac-0003", "disabled")
    metrics.set_consumer_lag("callstream.calls.v1", 3, "callstream-worker", 42)
    metrics.set_alarm_state("prac-0002", "GUARDRAIL_BYPASS", firing=True)
    metrics.record_event_processed("callstream.calls.v1")

    samples = scraper.samples()
    book = dict(practice_id="prac-0001", command="BOOK_APPOINTMENT", route="fhir")
    assert samples[("callstream_command_attempts_total", labels(**book))] == 2
    assert samples[("callstream_command_successes_total", labels(**book))] == 1
    assert (
        samples[("callstream_command_failures_total", labels(**book, error_class="http_503"))] == 1
    )
    task = dict(practice_id="prac-0002", command="CREATE_TASK", route="ema")
    assert samples[("callstream_command_successes_total", labels(**task))] == 1
    assert (
        samples[
            (
                "callstream_fhir_request_seconds_bucket",
                labels(resource="Slot", interaction="search", outcome="success", le="0.15"),
            )
        ]
        == 1
    )
    assert (
        samples[
            (
                "callstream_fhir_request_seconds_bucket",
                labels(resource="Slot", interaction="search", outcome="success", le="0.1"),
            )
        ]
        == 0
    )
    assert samples[
        ("callstream_ema_step_seconds_sum", labels(step="book_template", outcome="failure"))
    ] == pytest.approx(4.2)
    assert (
        samples[("callstream_reply_latency_seconds_count", labels(intent="BOOK_APPOINTMENT"))] == 1
    )
    assert (
        samples[
            ("callstream_escalations_total", labels(practice_id="prac-0001", kind="provider_task"))
        ]
        == 1
    )
    assert samples[("callstream_cs_requests_total", labels(practice_id="prac-0001"))] == 1
    assert samples[("callstream_cs_escalations_total", labels(practice_id="prac-0001"))] == 1
    assert (
        samples[
            (
                "callstream_guard_hits_total",
                labels(practice_id="prac-0001", guard="refill_never_promised"),
            )
        ]
        == 1
    )
    assert (
        samples[
            (
                "callstream_bypass_attempts_total",
                labels(practice_id="prac-0002", signal="prompt_injection"),
            )
        ]
        == 1
    )
    assert (
        samples[
            (
                "callstream_dead_letters_total",
                labels(topic="callstream.calls.v1", reason_class="schema_error"),
            )
        ]
        == 1
    )
    assert (
        samples[
            (
                "callstream_siem_deliveries_total",
                labels(practice_id="prac-0003", outcome="disabled"),
            )
        ]
        == 1
    )
    assert samples[("callstream_siem_delivery_seconds_count", labels())] == 2
    assert (
        samples[
            (
                "callstream_consumer_lag",
                labels(topic="callstream.calls.v1", partition="3", group="callstream-worker"),
            )
        ]
        == 42
    )
    assert (
        samples[
            ("callstream_alarm_state", labels(practice_id="prac-0002", kind="GUARDRAIL_BYPASS"))
        ]
        == 1
    )
    assert samples[("callstream_events_processed_total", labels(topic="callstream.calls.v1"))] == 1

    metrics.set_alarm_state("prac-0002", "GUARDRAIL_BYPASS", firing=False)
    assert (
        scraper.samples()[
            ("callstream_alarm_state", labels(practice_id="prac-0002", kind="GUARDRAIL_BYPASS"))
        ]
        == 0
    )


def test_a_revoked_practice_stops_exporting_its_alarm_state(
    metrics: Metrics, scraper: Scraper
) -> None:
    metrics.set_alarm_state("prac-0004", "WRITE_SUCCESS_DRIFT", firing=True)
    metrics.set_alarm_state("prac-0005", "WRITE_SUCCESS_DRIFT", firing=True)
    metrics.forget_alarm_state("prac-0004", "WRITE_SUCCESS_DRIFT")
    metrics.forget_alarm_state("prac-0004", "WRITE_SUCCESS_DRIFT")
    alarm_series = {
        dict(label_set)["practice_id"]
        for (name, label_set) in scraper.samples()
        if name == "callstream_alarm_state"
    }
    assert alarm_series == {"prac-0005"}


def test_unescalated_controlled_substance_request_shows_in_the_counters(metrics: Metrics) -> None:
    metrics.record_controlled_substance_request("prac-0001", escalated=False)
    registry = metrics.registry
    assert (
        registry.get_sample_value("callstream_cs_requests_total", {"practice_id": "prac-0001"}) == 1
    )
    assert (
        registry.get_sample_value("callstream_cs_escalations_total", {"practice_id": "prac-0001"})
        is None
    )


def test_latency_buckets_resolve_the_voice_turn_budget() -> None:
    assert 0.8 in VOICE_TURN_BUCKETS
    assert sum(1 for bucket in VOICE_TURN_BUCKETS if bucket <= 0.1) >= 5
    assert list(VOICE_TURN_BUCKETS) == sorted(VOICE_TURN_BUCKETS)


def test_openmetrics_is_negotiated(metrics: Metrics, scraper: Scraper) -> None:
    metrics.record_event_processed("callstream.calls.v1")
    response = scraper.get("/metrics", Accept="application/openmetrics-text; version=1.0.0")
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_probes_and_unknown_paths() -> None:
    ready = {"value": False}

    def readiness() -> bool:
        return ready["value"]

    def broken_liveness() -> bool:
        raise RuntimeError("event loop stalled")

    registry = CollectorRegistry()
    server = serve_metrics(registry, "127.0.0.1", 0, readiness=readiness)
    broken = serve_metrics(registry, "127.0.0.1", 0, liveness=broken_liveness)
    try:
        scraper = Scraper(server)
        assert scraper.get("/healthz").status_code == 200
        assert scraper.get("/readyz").status_code == 503
        ready["value"] = True
        assert scraper.get("/readyz").status_code == 200
        assert scraper.get("/readyz?verbose=1").text == "ok\n"
        assert scraper.get("/admin").status_code == 404
        assert httpx.post(scraper.base + "/metrics", content=b"x", timeout=5).status_code == 501
        assert httpx.head(scraper.base + "/metrics", timeout=5).status_code == 200
        assert Scraper(broken).get("/healthz").status_code == 503
    finally:
        server.close()
        broken.close()


def test_a_closed_server_stops_answering(metrics: Metrics) -> None:
    server = serve_metrics(metrics.registry, "127.0.0.1", 0)
    port = server.port
    server.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


@pytest.mark.parametrize(
    "record",
    [
        lambda m: m.record_command("Jane Doe", "BOOK_APPOINTMENT", "fhir"),
        lambda m: m.record_command("prac-0001\n", "BOOK_APPOINTMENT", "fhir"),
        lambda m: m.record_command("prac-0001", "BOOK_APPOINTMENT", "smtp"),
        lambda m: m.record_command("prac-0001", "BOOK_APPOINTMENT", "fhir", error_class=""),
        lambda m: m.record_guard_hit("prac-0001", "caller said: my DOB is 02/03/1980"),
        lambda m: m.record_bypass_attempt("prac-0001", "x" * 200),
        lambda m: m.record_siem_delivery("prac-0001", "lost"),
        lambda m: m.observe_fhir_request("Slot", "search", "success", float("nan")),
        lambda m: m.observe_ema_step("login", "success", -0.1),
        lambda m: m.observe_reply_latency("BOOK_APPOINTMENT", True),
        lambda m: m.set_consumer_lag("callstream.calls.v1", -1, "callstream-worker", 3),
        lambda m: m.set_consumer_lag("callstream.calls.v1", 0, "callstream-worker", 2.5),
        lambda m: m.set_alarm_state(None, "GUARDRAIL_BYPASS", True),
    ],
)
def test_malformed_or_phi_like_label_values_are_refused(record, metrics: Metrics) -> None:  # noqa: ANN001
    with pytest.raises(MetricLabelError) as refused:
        record(metrics)
    assert "Jane" not in str(refused.value) and "1980" not in str(refused.value)
    assert not any(
        sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )
