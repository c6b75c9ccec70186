"""After a booking, the confirmation with the practice's intake link goes to the patient (pure call flow)."""

from __future__ import annotations

from typing import Any

from callstream.tenants import Practice
from schemas.models import AuditAction, CommandKind
from streams.callflow import CallPhase, IntakeSent, SendIntake, WorkFailed
from tests.streams.callflow.helpers import (
    CALLER_NUMBER,
    Answers,
    Call,
    Driver,
    audits,
    practice,
    replies,
    reviews,
    works,
)

INTAKE: dict[str, Any] = {
    "forms": {"new-patient-consult": "https://forms.example/np"},
    "procedure_form_url": "https://forms.example/pain-procedure",
    "link_secret_ref": "env:UNUSED_IN_PURE_TESTS",
    "sms": {"provider_url": "https://sms.example/v1/messages", "from_number": "+15125550100", "token_ref": "env:X"},
    "email": {"smtp_host": "smtp.example.org", "from_address": "desk@riverbend.example"},
}


def _practice(**intake: Any) -> Practice:
    return Practice.model_validate({**practice().model_dump(mode="json"), "intake": {**INTAKE, **intake}})


def _book(driver: Driver, visit_reason: str = "esi", **identity: Any) -> list[Any]:
    call = Call()
    driver.send(call.started())
    driver.send(call.event({"type": "caller_identified", "family_name": "Testpatient", "given_name": "Dana",
                            "birth_date": "1968-11-23", **identity}))
    driver.send(call.intent("BOOK_APPOINTMENT", visit_reason=visit_reason))
    return driver.send(call.chose("slot-1"))


def test_procedure_booking_sends_the_pain_variant_by_sms_to_the_caller_id() -> None:
    answers = Answers(overrides={SendIntake: lambda work: IntakeSent(work.channel)})
    driver = Driver(practice=_practice(), answers=answers)
    outputs = _book(driver)
    (sent,) = works(answers, SendIntake)
    assert (sent.channel, sent.to, sent.visit_reason.value) == ("sms", CALLER_NUMBER, "esi")
    assert CALLER_NUMBER not in repr(sent)
    assert [r.template.value for r in replies(outputs)] == ["BOOKING_CONFIRMED_INTAKE_SENT"]
    (message,) = audits(outputs, AuditAction.PATIENT_MESSAGE.value)
    assert message.outcome.value == "SUCCESS" and message.detail["channel"] == "sms"
    assert message.resource_ids == ("appt-1001-009001",)
    assert CALLER_NUMBER not in str(message) and "@" not in str(message.detail)
    assert driver.state is not None and driver.state.phase is CallPhase.BOOKED and driver.state.confirming is None


def test_the_callers_channel_wins_and_a_visit_without_a_form_sends_nothing() -> None:
    answers = Answers(overrides={SendIntake: lambda work: IntakeSent(work.channel)})
    _book(Driver(practice=_practice(), answers=answers), email="dana@example.org", contact_channel="email")
    assert [(w.channel, w.to) for w in works(answers, SendIntake)] == [("email", "dana@example.org")]
    quiet = Answers()
    outputs = _book(Driver(practice=_practice(procedure_form_url=None), answers=quiet))
    assert list(works(quiet, SendIntake)) == [] and replies(outputs)[-1].template.value == "BOOKING_CONFIRMED"
    sms_only = Answers(overrides={SendIntake: lambda work: IntakeSent(work.channel)})
    _book(Driver(practice=_practice(email=None), answers=sms_only), email="dana@example.org", contact_channel="email")
    assert [w.channel for w in works(sms_only, SendIntake)] == ["sms"]  # no e-mail channel: the phone still works


def test_a_failed_send_confirms_the_booking_and_staff_send_the_link() -> None:
    failing = Answers(overrides={SendIntake: lambda work: WorkFailed(CommandKind.CREATE_DOCUMENT_REFERENCE,
                                                                    "ProviderUnavailable")})
    driver = Driver(practice=_practice(), answers=failing)
    outputs = _book(driver)
    assert [r.template.value for r in replies(outputs)] == ["BOOKING_CONFIRMED"]
    (queued,) = reviews(outputs)
    assert queued.kind is CommandKind.CREATE_DOCUMENT_REFERENCE and queued.params["reason"] == "ProviderUnavailable"
    assert CALLER_NUMBER not in queued.params.values()
    (message,) = audits(outputs, AuditAction.PATIENT_MESSAGE.value)
    assert (message.outcome.value, message.error_class) == ("FAILURE", "ProviderUnavailable")
    assert driver.state is not None and driver.state.phase is CallPhase.BOOKED
