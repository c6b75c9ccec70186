"""Change mirror over the real broker: the _lastUpdated poller and the signed webhook receiver."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from fhir.resources.R4B.patient import Patient
from pydantic import SecretStr

from callstream.devstack import ensure_topics
from callstream.tenants import Practice
from callstream.webhooks import WebhookSecret, WebhookSecretError, sign
from connectors.changes import AppointmentPoller, ChangeSink, WebhookReceiver
from connectors.fhir import ModMedClient
from connectors.ledger import InMemoryLedger
from connectors.operations import ModMedConnector
from guards.model import VisitReason
from schemas.models import AppointmentChange, ChangeSource
from schemas.serde import AvroSerde
from tests.connectors.helpers import PracticeSet, serve

pytestmark = pytest.mark.broker


def read_changes(bootstrap: str, topic: str, expected: int, timeout_s: float = 10.0) -> list[tuple[bytes, AppointmentChange]]:
    """Everything on the topic (from the start) once ``expected`` records arrived, or what came in time."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{secrets.token_hex(4)}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])  # one partition; no group join needed
    serde = AvroSerde.for_topic("callstream.appointment-changes.v1")
    found: list[tuple[bytes, AppointmentChange]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            found.append((message.key(), AppointmentChange.from_avro(serde.decode(message.value()))))
        extra = consumer.poll(0.5)
        assert extra is None or extra.error(), "more change records than expected"
    finally:
        consumer.close()
    return found


@pytest.fixture
def change_topic(kafka_bootstrap: str, topic_name: str) -> str:
    ensure_topics(kafka_bootstrap, [(topic_name, 1)])
    return topic_name


@pytest.fixture
def sink(kafka_bootstrap: str, change_topic: str) -> Iterator[ChangeSink]:
    yield ChangeSink(Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5}), topic=change_topic)


async def test_poller_publishes_each_appointment_version_once(
    client: ModMedClient, private_practices: PracticeSet, sink: ChangeSink, kafka_bootstrap: str, change_topic: str
) -> None:
    practice: Practice = private_practices.proprietary(fhir_task_create=True)
    connector = ModMedConnector(client, InMemoryLedger())
    patient = (await client.search(practice, Patient, {"_count": "4"}, max_pages=1)).matches[3]
    today = dt.date.today()
    offer = (await connector.search_slots(practice, visit_reason=VisitReason.FOLLOW_UP,
                                          date_from=today + dt.timedelta(days=4), date_to=today + dt.timedelta(days=15)))[0]
    booked = await connector.book_appointment(practice, call_id="call-poll", patient_id=patient.id, slot_id=offer.slot_id)
    poller = AppointmentPoller(client, sink)
    first = await poller.poll_once(practice)
    assert first >= 1 and poller.watermark(practice.practice_id) is not None
    assert await poller.poll_once(practice) == 0  # the overlapping window brings nothing new
    await connector.cancel_appointment(practice, call_id="call-poll", appointment_id=booked.id)
    assert await poller.poll_once(practice) == 1
    records = read_changes(kafka_bootstrap, change_topic, first + 1)
    assert len(records) == first + 1
    assert {key for key, _ in records} == {practice.practice_id.encode()}
    ours = [change for _, change in records if change.appointment_id == booked.id]
    assert [(c.status.value, c.version_id, c.source) for c in ours] == [("booked", "1", ChangeSource.POLL),
                                                                        ("cancelled", "2", ChangeSource.POLL)]
    assert len({(c.appointment_id, c.version_id) for _, c in records}) == len(records)


async def test_poller_loop_keeps_polling_healthy_practices_when_one_fails(
    client: ModMedClient, private_practices: PracticeSet, sink: ChangeSink, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    healthy = private_practices.proprietary(fhir_task_create=False)
    listing = private_practices.listing(track="proprietary", fhir_task_create=True)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"username": listing["username"], "password": "nope", "api_key": listing["api_key"]}))
    broken = private_practices.entry(listing, auth={"credentials_ref": f"file:{wrong}"})
    poller = AppointmentPoller(client, sink)
    stop = asyncio.Event()
    loop_task = asyncio.create_task(poller.run([broken, healthy], interval_s=0.05, stop=stop))
    for _ in range(100):
        if poller.watermark(healthy.practice_id) is not None:
            break
        await asyncio.sleep(0.02)
    first = poller.watermark(healthy.practice_id)
    for _ in range(250):  # wait for the next poll of the healthy practice, however slow the machine
        if poller.watermark(healthy.practice_id) != first:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(loop_task, timeout=5)
    assert first is not None and poller.watermark(healthy.practice_id) > first  # it kept polling
    assert poller.watermark(broken.practice_id) is None
    assert f"practice {broken.practice_id}: change poll failed: AuthError" in caplog.text


WEBHOOK_SECRET = SecretStr("whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode())


def signed(body: bytes, *, webhook_id: str = "msg_1", timestamp: int | None = None,
           secret: SecretStr = WEBHOOK_SECRET) -> dict[str, str]:
    moment = int(time.time()) if timestamp is None else timestamp
    return {"webhook-id": webhook_id, "webhook-timestamp": str(moment),
            "webhook-signature": f"v1,bm90LXRoaXMtb25l {sign(WebhookSecret.parse(secret.get_secret_value()), webhook_id, moment, body)}",
            "content-type": "application/json"}


def appointment(appointment_id: str, status: str = "booked", version: str = "3") -> dict:
    return {"resourceType": "Appointment", "id": appointment_id, "status": status,
            "meta": {"versionId": version, "lastUpdated": "2026-11-20T15:04:05.123Z"},
            "participant": [{"actor": {"reference": "Patient/pt-9"}, "status": "accepted"}]}


def test_webhook_receiver_verifies_signatures_and_publishes(sink: ChangeSink, kafka_bootstrap: str, change_topic: str) -> None:
    receiver = WebhookReceiver({"pain-hook": WEBHOOK_SECRET}, sink)
    with serve(receiver.app) as base_url, httpx.Client(base_url=base_url) as http:
        url = "/webhooks/pain-hook/appointments"
        bundle = json.dumps({"resourceType": "Bundle", "type": "history", "entry": [
            {"resource": appointment("appt-1")}, {"resource": appointment("appt-2", "cancelled", "7")},
            {"resource": {"resourceType": "Patient", "id": "ignored"}}]}).encode()
        accepted = http.post(url, content=bundle, headers=signed(bundle))
        assert accepted.status_code == 200 and accepted.json() == {"published": 2}
        assert http.post(url, content=bundle, headers=signed(bundle)).json() == {"published": 0}  # same webhook-id

        single = json.dumps(appointment("appt-3")).encode()
        refusals = {
            "tampered": http.post(url, content=single + b" ", headers=signed(single, webhook_id="msg_2")),
            "wrong secret": http.post(url, content=single, headers=signed(
                single, webhook_id="msg_3", secret=SecretStr("whsec_" + base64.b64encode(b"x" * 32).decode()))),
            "stale": http.post(url, content=single, headers=signed(single, webhook_id="msg_4", timestamp=int(time.time()) - 3600)),
            "unsigned": http.post(url, content=single, headers={"content-type": "application/json"}),
            "unknown practice": http.post("/webhooks/pain-other/appointments", content=single, headers=signed(single)),
            "not json": http.post(url, content=b"{nope", headers=signed(b"{nope", webhook_id="msg_5")),
            "not fhir": http.post(url, content=b"[1,2]", headers=signed(b"[1,2]", webhook_id="msg_6")),
            "no lastUpdated": http.post(url, content=(body := json.dumps({**appointment("appt-4"), "meta": {}}).encode()),
                                        headers=signed(body, webhook_id="msg_7")),
            "too large": http.post(url, content=(big := b" " * (1024 * 1024 + 1)), headers=signed(big, webhook_id="msg_8")),
        }
        assert {name: r.status_code for name, r in refusals.items()} == {
            "tampered": 401, "wrong secret": 401, "stale": 401, "unsigned": 400, "unknown practice": 404,
            "not json": 400, "not fhir": 400, "no lastUpdated": 422, "too large": 413,
        }
        assert all("pt-9" not in r.text for r in refusals.values())
    records = read_changes(kafka_bootstrap, change_topic, 2)
    assert [(key, c.appointment_id, c.status.value, c.version_id, c.source) for key, c in records] == [
        (b"pain-hook", "appt-1", "booked", "3", ChangeSource.WEBHOOK),
        (b"pain-hook", "appt-2", "cancelled", "7", ChangeSource.WEBHOOK),
    ]
    assert records[0][1].last_updated == dt.datetime(2026, 11, 20, 15, 4, 5, 123000, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("whsec_", "24-64 bytes"),
        ("whsec_" + base64.b64encode(b"short-key").decode(), "24-64 bytes"),
        ("whsec_!!!not-base64", "not valid base64"),
        (base64.b64encode(b"0123456789abcdef0123456789abcdef").decode(), "must start with whsec_"),
    ],
)
def test_the_receiver_refuses_empty_short_or_malformed_secrets(secret: str, message: str) -> None:
    with pytest.raises(WebhookSecretError, match=message) as refused:
        WebhookReceiver({"pain-hook": WEBHOOK_SECRET, "pain-weak": SecretStr(secret)}, sink=None)  # type: ignore[arg-type]
    assert "pain-weak" in str(refused.value) and (secret.removeprefix("whsec_") or "whsec_") not in str(refused.value)


def test_a_delivery_signed_with_an_empty_key_is_refused(sink: ChangeSink) -> None:
    """What the empty-key receiver used to accept: anybody can compute an HMAC under b""."""
    receiver = WebhookReceiver({"pain-hook": WEBHOOK_SECRET}, sink)
    body = json.dumps(appointment("appt-forged")).encode()
    moment = int(time.time())
    forged = {"webhook-id": "msg_forged", "webhook-timestamp": str(moment), "content-type": "application/json",
              "webhook-signature": sign(WebhookSecret(b""), "msg_forged", moment, body)}
    with serve(receiver.app) as base_url, httpx.Client(base_url=base_url) as http:
        refused = http.post("/webhooks/pain-hook/appointments", content=body, headers=forged)
        malformed = http.post("/webhooks/pain-hook/appointments", content=body,
                              headers={**forged, "webhook-id": "x" * 300})
    assert (refused.status_code, refused.json()) == (401, {"error": "no webhook-signature matches"})
    assert malformed.status_code == 400
