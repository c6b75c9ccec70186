"""Alert webhook against a real Slack-compatible receiver on 127.0.0.1, and the drift alarm path."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from callstream.alerts import Alert, AlertContentError, AlertDeliveryError, AlertWebhook
from callstream.metrics_server import serve_metrics
from schemas.models import AlarmKind, AlarmState
from streams.drift import DriftMonitor, WindowStats
from streams.metrics import Metrics

SECRET_PATH = "/services/T0CALLSTREAM/B0ALERTS/xoxbSECRETwebhookTOKEN"
EPOCH = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=15)


@dataclass
class Reply:
    """One scripted answer of the receiver."""

    status: int = 200
    delay_seconds: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class SlackReceiver:
    """A Slack-incoming-webhook look-alike served by uvicorn in its own thread."""

    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.received: list[tuple[float, dict]] = []
        app = Starlette(routes=[Route(SECRET_PATH, self._receive, methods=["POST"])])
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{SECRET_PATH}"

    async def _receive(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return PlainTextResponse("invalid_payload", status_code=400)
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            return PlainTextResponse("no_text", status_code=400)
        self.received.append((time.monotonic(), body))
        reply = self.script.pop(0) if self.script else Reply()
        if reply.delay_seconds:
            await asyncio.sleep(reply.delay_seconds)
        if reply.status == 200:
            return PlainTextResponse("ok")
        return JSONResponse({"error": "scripted"}, status_code=reply.status, headers=reply.headers)

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def receiver() -> Iterator[SlackReceiver]:
    server = SlackReceiver()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def slack(receiver: SlackReceiver) -> SlackReceiver:
    receiver.script.clear()
    receiver.received.clear()
    return receiver


def quick_webhook(url: str, **overrides: float) -> AlertWebhook:
    options = {
        "timeout_seconds": 2.0,
        "max_attempts": 4,
        "backoff_base_seconds": 0.02,
        "backoff_max_seconds": 0.2,
    }
    options.update(overrides)
    return AlertWebhook(url, rng=random.Random(7), **options)  # type: ignore[arg-type]


def drift_alert() -> Alert:
    return Alert(
        practice_id="prac-0002",
        kind="WRITE_SUCCESS_DRIFT",
        state="FIRING",
        value=0.8,
        threshold=0.96,
        window_start=EPOCH,
        window_end=EPOCH + WINDOW,
        figures={"write_attempts": "100", "write_successes": "80"},
    )


async def test_delivers_a_slack_compatible_message(slack: SlackReceiver) -> None:
    async with quick_webhook(slack.url) as webhook:
        delivery = await webhook.send(drift_alert())
    assert (delivery.attempts, delivery.status_code) == (1, 200)
    [(_, body)] = slack.received
    assert (
        body["text"].splitlines()[0]
        == ":rotating_light: FIRING WRITE_SUCCESS_DRIFT (practice prac-0002)"
    )
    assert "value: 0.8" in body["text"] and "threshold: 0.96" in body["text"]
    assert "write_attempts: 100" in body["text"]
    assert body["blocks"][0]["type"] == "header"
    assert {"type": "mrkdwn", "text": "*value*\n0.8"} in body["blocks"][1]["fields"]


async def test_retries_server_errors_with_backoff_then_succeeds(slack: SlackReceiver) -> None:
    slack.script = [Reply(500), Reply(503)]
    async with quick_webhook(slack.url) as webhook:
        delivery = await webhook.send(drift_alert())
    assert delivery.attempts == 3
    assert len(slack.received) == 3
    bodies = [body for _, body in slack.received]
    assert bodies[0] == bodies[1] == bodies[2]
    gaps = [
        later - earlier
        for (earlier, _), (later, _) in zip(slack.received, slack.received[1:], strict=False)
    ]
    # Equal jitter: attempt n waits between half and all of base * 2^(n-1).
    assert gaps[0] >= 0.01 and gaps[1] >= 0.02


async def test_honours_retry_after_on_429(slack: SlackReceiver) -> None:
    slack.script = [Reply(429, headers={"Retry-After": "0.15"})]
    async with quick_webhook(slack.url, backoff_max_seconds=1.0) as webhook:
        delivery = await webhook.send(drift_alert())
    assert delivery.attempts == 2
    assert slack.received[1][0] - slack.received[0][0] >= 0.15


async def test_times_out_a_hung_receiver_and_retries(slack: SlackReceiver) -> None:
    slack.script = [Reply(200, delay_seconds=1.0)]
    async with quick_webhook(slack.url, timeout_seconds=0.2) as webhook:
        delivery = await webhook.send(drift_alert())
    assert delivery.attempts == 2


async def test_gives_up_after_the_retry_budget_without_leaking_the_url(
    slack: SlackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    slack.script = [Reply(502)] * 3
    caplog.set_level(logging.DEBUG)
    async with quick_webhook(slack.url, max_attempts=3) as webhook:
        with pytest.raises(AlertDeliveryError) as failure:
            await webhook.send(drift_alert())
        assert "xoxbSECRET" not in repr(webhook)
    assert (failure.value.attempts, failure.value.status_code) == (3, 502)
    assert "after 3 attempts: HTTP 502" in str(failure.value)
    assert len(slack.received) == 3
    assert "xoxbSECRET" not in str(failure.value) and "127.0.0.1" not in str(failure.value)
    assert caplog.records, "retries are logged"
    assert all("xoxbSECRET" not in record.getMessage() for record in caplog.records)


async def test_a_permanent_rejection_is_not_retried(slack: SlackReceiver) -> None:
    slack.script = [Reply(403)]
    async with quick_webhook(slack.url) as webhook:
        with pytest.raises(AlertDeliveryError, match="HTTP 403; not retrying") as failure:
            await webhook.send(drift_alert())
    assert failure.value.attempts == 1
    assert len(slack.received) == 1


async def test_an_unreachable_receiver_fails_with_a_transport_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    async with quick_webhook(
        f"http://127.0.0.1:{closed_port}{SECRET_PATH}", max_attempts=2
    ) as webhook:
        with pytest.raises(AlertDeliveryError, match="transport error ConnectError") as failure:
            await webhook.send(drift_alert())
    assert failure.value.status_code is None
    assert "xoxbSECRET" not in str(failure.value)
    assert failure.value.__cause__ is None and failure.value.__context__ is None


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("ftp://hooks.example/x", {}),
        ("not a url", {}),
        ("http://[::1", {}),
        ("http://127.0.0.1/x", {"max_attempts": 0}),
        ("http://127.0.0.1/x", {"timeout_seconds": 0}),
        ("http://127.0.0.1/x", {"backoff_base_seconds": 5, "backoff_max_seconds": 1}),
    ],
)
def test_misconfigured_webhooks_are_refused(url: str, options: dict[str, float]) -> None:
    with pytest.raises(AlertContentError):
        AlertWebhook(url, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"practice_id": "Jane Doe"},
        {"kind": "write success drift for +1 555 0100"},
        {"state": "MAYBE"},
        {"value": float("inf")},
        {"threshold": True},
        {"window_start": datetime(2026, 3, 2, 8, 0)},
        {"figures": {"caller_name": "Jane"}},
        {"figures": [("write_attempts", "100")]},
        {"figures": {"write_attempts": "100 calls from Jane Doe"}},
    ],
)
def test_alerts_carry_only_identifiers_and_numbers(changes: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "practice_id": "prac-0001",
        "kind": "EMA_LOCKOUT",
        "state": "FIRING",
    }
    fields.update(changes)
    with pytest.raises(AlertContentError):
        Alert(**fields)  # type: ignore[arg-type]


def test_from_alarm_drops_unlisted_and_free_text_detail() -> None:
    monitor = DriftMonitor()
    [transition] = monitor.observe(
        WindowStats("prac-0001", EPOCH, EPOCH + WINDOW, 0, 0, 0, 0, bypass_attempts=2)
    )
    transition.detail.update({"caller_phone": "+15550100", "bypass_attempts": "2 by Jane Doe"})
    alert = Alert.from_alarm(transition)
    assert alert.figures == {}
    assert (alert.kind, alert.state, alert.value) == ("GUARDRAIL_BYPASS", "FIRING", 2.0)
    text = alert.to_slack()["text"]
    assert "+1555" not in text and "Jane" not in text


async def test_a_failure_burst_reaches_gauge_and_webhook_and_clears(slack: SlackReceiver) -> None:
    """Issue 9 point 4 at the detector level: one practice bursts to 20 % failures and recovers,
    another stays healthy, a bypass attempt raises its own alarm. Each transition is mirrored
    into the scraped gauge and posted to the webhook, as the pipeline does."""
    rng = random.Random(9)
    monitor = DriftMonitor()
    metrics = Metrics(CollectorRegistry())
    server = serve_metrics(metrics.registry, "127.0.0.1", 0)
    gauge_url = f"http://127.0.0.1:{server.port}/metrics"

    def gauge(practice_id: str, kind: AlarmKind) -> float | None:
        httpx.get(gauge_url, timeout=5).raise_for_status()
        return metrics.registry.get_sample_value(
            "callstream_alarm_state", {"practice_id": practice_id, "kind": kind.value}
        )

    def stats(practice_id: str, index: int, failure_rate: float, bypass: int = 0) -> WindowStats:
        attempts = 60
        failures = sum(rng.random() < failure_rate for _ in range(attempts))
        return WindowStats(
            practice_id,
            EPOCH + index * WINDOW,
            EPOCH + (index + 1) * WINDOW,
            attempts,
            attempts - failures,
            2,
            2,
            bypass,
        )

    timeline = (
        [("prac-0001", 0.004, 0), ("prac-0002", 0.004, 0)] * 10
        + [("prac-0001", 0.20, 0), ("prac-0002", 0.004, 1)]
        + [("prac-0001", 0.004, 0), ("prac-0002", 0.004, 0)] * 4
    )
    fired_in: dict[tuple[str, AlarmKind], int] = {}
    cleared_in: dict[tuple[str, AlarmKind], int] = {}
    try:
        async with quick_webhook(slack.url) as webhook:
            for position, (practice_id, failure_rate, bypass) in enumerate(timeline):
                index = position // 2
                for transition in monitor.observe(stats(practice_id, index, failure_rate, bypass)):
                    firing = transition.state is AlarmState.FIRING
                    metrics.set_alarm_state(transition.practice_id, transition.kind.value, firing)
                    await webhook.send(Alert.from_alarm(transition))
                    (fired_in if firing else cleared_in)[
                        (transition.practice_id, transition.kind)
                    ] = index
                    assert gauge(transition.practice_id, transition.kind) == (1 if firing else 0)
    finally:
        server.close()

    burst_drift = ("prac-0001", AlarmKind.WRITE_SUCCESS_DRIFT)
    bypass_alarm = ("prac-0002", AlarmKind.GUARDRAIL_BYPASS)
    assert fired_in == {burst_drift: 10, bypass_alarm: 10}
    assert cleared_in == {burst_drift: 13, bypass_alarm: 11}
    assert ("prac-0002", AlarmKind.WRITE_SUCCESS_DRIFT) not in fired_in
    headlines = [body["text"].splitlines()[0] for _, body in slack.received]
    assert headlines == [
        ":rotating_light: FIRING WRITE_SUCCESS_DRIFT (practice prac-0001)",
        ":rotating_light: FIRING GUARDRAIL_BYPASS (practice prac-0002)",
        ":white_check_mark: CLEARED GUARDRAIL_BYPASS (practice prac-0002)",
        ":white_check_mark: CLEARED WRITE_SUCCESS_DRIFT (practice prac-0001)",
    ]
