"""Patient messages against local receivers: the SMS provider shape (bearer, {to, from, body}), retries and typed
errors; e-mail through aiosmtpd; the signed intake reference; no number or address in any log line."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from callstream.tenants import EmailChannel, Practice, SmsChannel
from callstream.messaging import (
    MessageRejected,
    Messenger,
    ProviderUnavailable,
    intake_reference,
    send_booking_confirmation,
    verified_appointment,
)
from callstream.retry import Backoff
from guards.model import VisitReason
from tests.fixtures.receivers import SmsReceiver, SmtpReceiver, sms_receiver, smtp_receiver  # noqa: F401

PATIENT_PHONE = "+15125550161"
PATIENT_EMAIL = "rosa.patient@example.org"
START = datetime(2026, 3, 10, 16, 0, tzinfo=UTC)


def _practice(sms: SmsReceiver, smtp: SmtpReceiver) -> Practice:
    return Practice.model_validate({
        "practice_id": "pain-9001", "name": "Riverbend Pain", "called_numbers": ["+15125550100"],
        "base_url": "http://127.0.0.1:1", "firm_url_prefix": "riverbend",
        "auth": {"method": "password", "credentials_ref": "env:UNUSED"},
        "intake": {
            "brand": "Riverbend Spine & Pain",
            "forms": {"new-patient-consult": "https://forms.example/riverbend/new-patient"},
            "procedure_form_url": "https://forms.example/riverbend/pain-procedure?lang=en",
            "link_secret_ref": "env:NOTIFY_TEST_LINK_SECRET",
            "sms": {"provider_url": sms.url, "from_number": "+15125550100", "token_ref": "env:NOTIFY_TEST_SMS_TOKEN"},
            "email": {"smtp_host": "127.0.0.1", "smtp_port": smtp.port, "security": "none",
                      "from_address": "frontdesk@riverbend.example"},
        },
    })


@pytest.fixture
def practice(sms_receiver: SmsReceiver, smtp_receiver: SmtpReceiver, monkeypatch: pytest.MonkeyPatch) -> Practice:
    monkeypatch.setenv("NOTIFY_TEST_LINK_SECRET", "link-secret-1")
    monkeypatch.setenv("NOTIFY_TEST_SMS_TOKEN", sms_receiver.token)
    sms_receiver.fail_next.clear()
    return _practice(sms_receiver, smtp_receiver)


async def test_sms_confirmation_with_the_visit_form_in_the_provider_shape(
    practice: Practice, sms_receiver: SmsReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    messenger = Messenger(backoff=Backoff(0.01, 0.05))
    sms_receiver.fail_next.extend([503, 429])  # retried with the backoff, then sent
    before = len(sms_receiver.received)
    message_id = await send_booking_confirmation(messenger, practice, channel="sms", to=PATIENT_PHONE,
                                                 visit_reason=VisitReason.ESI, start=START, appointment_id="appt-77")
    await messenger.aclose()
    sent = sms_receiver.received[before]
    assert message_id.startswith("SM") and set(sent) == {"to", "from", "body"}
    assert (sent["to"], sent["from"]) == (PATIENT_PHONE, "+15125550100")
    assert sent["body"].startswith("Riverbend Spine & Pain: your epidural steroid injection is booked for Tuesday, "
                                   "March 10 at 12:00 PM.")
    link = sent["body"].rsplit(" ", 1)[-1]
    assert link.startswith("https://forms.example/riverbend/pain-procedure?lang=en&ref=appt-77.")  # pain variant
    assert verified_appointment("link-secret-1", "pain-9001", link.split("ref=")[1]) == "appt-77"
    assert PATIENT_PHONE not in caplog.text and "retrying" in caplog.text


async def test_sms_errors_are_typed(practice: Practice, sms_receiver: SmsReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    messenger = Messenger(attempts=2, backoff=Backoff(0.01, 0.02))
    sms_receiver.fail_next.extend([400])
    with pytest.raises(MessageRejected) as rejected:
        await send_booking_confirmation(messenger, practice, channel="sms", to=PATIENT_PHONE,
                                        visit_reason=VisitReason.NEW_PATIENT_CONSULT, start=START, appointment_id="a-1")
    assert rejected.value.status == 400 and PATIENT_PHONE not in str(rejected.value)
    sms_receiver.fail_next.extend([502, 502])
    with pytest.raises(ProviderUnavailable):
        await send_booking_confirmation(messenger, practice, channel="sms", to=PATIENT_PHONE,
                                        visit_reason=VisitReason.NEW_PATIENT_CONSULT, start=START, appointment_id="a-1")
    monkeypatch.setenv("NOTIFY_TEST_SMS_TOKEN", "wrong-token")
    with pytest.raises(MessageRejected):  # 401: the credentials are wrong, retrying cannot help
        await send_booking_confirmation(messenger, practice, channel="sms", to=PATIENT_PHONE,
                                        visit_reason=VisitReason.NEW_PATIENT_CONSULT, start=START, appointment_id="a-1")
    await messenger.aclose()
    down = SmsChannel(provider_url="http://127.0.0.1:9/v1/messages", from_number="+15125550100",
                      token_ref="env:NOTIFY_TEST_LINK_SECRET")
    with pytest.raises(ProviderUnavailable):
        await Messenger(attempts=2, backoff=Backoff(0.01, 0.02)).send_sms(down, PATIENT_PHONE, "x")


async def test_email_confirmation_through_smtp_and_a_refused_mailbox(
    practice: Practice, smtp_receiver: SmtpReceiver
) -> None:
    messenger = Messenger(backoff=Backoff(0.01, 0.02))
    await send_booking_confirmation(messenger, practice, channel="email", to=PATIENT_EMAIL,
                                    visit_reason=VisitReason.NEW_PATIENT_CONSULT, start=START, appointment_id="appt-78")
    mail = smtp_receiver.messages[-1]
    assert mail["To"] == PATIENT_EMAIL and mail["From"] == "frontdesk@riverbend.example"
    assert mail["Subject"] == "Riverbend Spine & Pain: your new patient consultation on Tuesday, March 10 at 12:00 PM"
    assert "https://forms.example/riverbend/new-patient?ref=appt-78." in mail.get_payload(decode=True).decode()
    smtp_receiver.refuse.add("gone@example.org")
    with pytest.raises(MessageRejected):
        await send_booking_confirmation(messenger, practice, channel="email", to="gone@example.org",
                                        visit_reason=VisitReason.NEW_PATIENT_CONSULT, start=START, appointment_id="a-2")
    with pytest.raises(ValueError):  # plain SMTP only on the loopback
        EmailChannel(smtp_host="smtp.example.org", security="none", from_address="a@b.example")


def test_intake_references_are_bound_to_practice_appointment_and_secret() -> None:
    reference = intake_reference("s3cret", "pain-1", "appt-1")
    assert verified_appointment("s3cret", "pain-1", reference) == "appt-1"
    assert verified_appointment("s3cret", "pain-2", reference) is None
    assert verified_appointment("other", "pain-1", reference) is None
    forged = "appt-2." + reference.split(".", 1)[1]
    assert verified_appointment("s3cret", "pain-1", forged) is None
    assert verified_appointment("s3cret", "pain-1", "no-dot") is None
