"""New-patient registration in the pure call flow: search again, Patient, Coverage, then the booking."""

from __future__ import annotations

from typing import Any

from guards import MatchKind
from schemas.models import CommandKind
from streams.callflow import (
    CallPhase,
    CoverageCreated,
    CreateCoverage,
    PatientLookedUp,
    PatientRegistered,
    RegisterPatient,
    SearchPatient,
    WorkFailed,
    WriteAppointment,
)
from tests.streams.callflow.helpers import Answers, Call, Driver, audits, consult_slot, replies, reviews, works

NEW_ID = "pt-1001-000900"
DETAILS: dict[str, Any] = {
    "gender": "female",
    "address": {"line": "12 Elm Street", "city": "Austin", "state": "TX", "postal_code": "78701"},
    "insurance": {"payer_name": "Aetna", "member_id": "W123456789", "group_number": "GRP-77"},
    "preferred_pharmacy": {"name": "Walgreens on Main", "phone": "+15125550177"},
}


def _answers(lookups: list[MatchKind], overrides: dict[type, Any] | None = None) -> Answers:
    queue = list(lookups)

    def lookup(work: SearchPatient) -> PatientLookedUp:
        kind = queue.pop(0)
        return PatientLookedUp(kind, "pt-1001-000042" if kind is MatchKind.UNIQUE else None)

    return Answers(lookup=MatchKind.NONE, slots=(consult_slot("slot-c1", 2), consult_slot("slot-c2", 3)),
                   overrides={SearchPatient: lookup, RegisterPatient: lambda w: PatientRegistered(NEW_ID),
                              CreateCoverage: lambda w: CoverageCreated("cov-1001-000001"), **(overrides or {})})


def _identified(call: Call, registration: dict[str, Any] | None = None):
    payload: dict[str, Any] = {"type": "caller_identified", "family_name": "Newcaller", "given_name": "Rosa",
                               "birth_date": "1980-02-03", "email": "rosa@example.org", "contact_channel": "email"}
    if registration is not None:
        payload["registration"] = registration
    return call.event(payload)


def _to_slot_choice(driver: Driver, call: Call) -> None:
    driver.send(call.started())
    driver.send(_identified(call))
    offered = replies(driver.send(call.intent("BOOK_APPOINTMENT", visit_reason="new-patient-consult")))
    assert offered[-1].offered_slots and driver.state is not None and driver.state.patient_id is None


def test_new_patient_is_asked_for_details_then_registered_insured_and_booked() -> None:
    driver, call = Driver(answers=_answers([MatchKind.NONE, MatchKind.NONE])), Call()
    _to_slot_choice(driver, call)
    asked = driver.send(call.chose("slot-c1"))
    assert [r.template.value for r in replies(asked)] == ["ASK_NEW_PATIENT_DETAILS"]
    assert driver.state is not None and driver.state.phase is CallPhase.AWAITING_REGISTRATION
    assert list(works(driver.answers, RegisterPatient)) == []

    outputs = driver.send(_identified(call, DETAILS))
    kinds = [type(work).__name__ for work in driver.answers.seen[-4:]]
    assert kinds == ["SearchPatient", "RegisterPatient", "CreateCoverage", "WriteAppointment"]
    registered = next(works(driver.answers, RegisterPatient))
    assert registered.details.address.city == "Austin" and registered.email == "rosa@example.org"
    assert "Newcaller" not in repr(registered) and "Austin" not in repr(registered)
    booked = next(works(driver.answers, WriteAppointment))
    assert booked.patient_id == NEW_ID and booked.slot.slot_id == "slot-c1"
    writes = [(a.resource_type, a.command, a.resource_ids) for a in audits(outputs, "FHIR_WRITE")]
    assert writes == [("Patient", CommandKind.REGISTER_PATIENT, (NEW_ID,)),
                      ("Coverage", CommandKind.CREATE_COVERAGE, ("cov-1001-000001",)),
                      ("Appointment", CommandKind.BOOK_APPOINTMENT, ("appt-1001-009001",))]
    assert [a.detail.get("operation") for a in audits(outputs, "FHIR_READ")] == ["recheck_none"]
    assert replies(outputs)[-1].template.value == "BOOKING_CONFIRMED"
    assert driver.state.phase is CallPhase.BOOKED and driver.state.registered and driver.state.patient_id == NEW_ID


def test_details_given_up_front_skip_the_question_and_self_pay_books_without_coverage() -> None:
    answers = _answers([MatchKind.NONE, MatchKind.NONE])
    driver, call = Driver(answers=answers), Call()
    driver.send(call.started())
    driver.send(_identified(call, {**DETAILS, "insurance": None}))
    driver.send(call.intent("BOOK_APPOINTMENT", visit_reason="new-patient-consult"))
    outputs = driver.send(call.chose("slot-c2"))
    assert replies(outputs)[-1].template.value == "BOOKING_CONFIRMED"
    assert list(works(answers, CreateCoverage)) == [] and len(list(works(answers, RegisterPatient))) == 1


def test_a_chart_found_on_the_second_search_is_never_duplicated_and_never_described() -> None:
    driver, call = Driver(answers=_answers([MatchKind.NONE, MatchKind.UNIQUE])), Call()
    _to_slot_choice(driver, call)
    driver.send(call.chose("slot-c1"))
    outputs = driver.send(_identified(call, DETAILS))
    assert list(works(driver.answers, RegisterPatient)) == []
    assert [r.template.value for r in replies(outputs)] == ["BOOKING_QUEUED_FOR_REVIEW"]
    (queued,) = reviews(outputs)
    assert queued.kind is CommandKind.BOOK_APPOINTMENT
    assert queued.params["reason"] == "chart_found_before_registration" and "patient_id" not in queued.params
    assert queued.params["member_id"] == "W123456789" and queued.params["address_city"] == "Austin"


def test_modmed_refusing_a_duplicate_chart_hands_the_booking_to_staff() -> None:
    refuse = {RegisterPatient: lambda w: WorkFailed(CommandKind.REGISTER_PATIENT, "ConflictError", slot_taken=True)}
    driver, call = Driver(answers=_answers([MatchKind.NONE, MatchKind.NONE], refuse)), Call()
    _to_slot_choice(driver, call)
    driver.send(call.chose("slot-c1"))
    outputs = driver.send(_identified(call, DETAILS))
    (failed,) = audits(outputs, "FHIR_WRITE")
    assert (failed.resource_type, failed.outcome.value, failed.error_class) == ("Patient", "FAILURE", "DuplicatePatient")
    assert reviews(outputs)[0].params["reason"] == "DuplicatePatient"
    assert replies(outputs)[-1].template.value == "BOOKING_QUEUED_FOR_REVIEW"
    assert list(works(driver.answers, WriteAppointment)) == []


def test_a_refused_coverage_goes_to_staff_and_the_booking_still_happens() -> None:
    refuse = {CreateCoverage: lambda w: WorkFailed(CommandKind.CREATE_COVERAGE, "InvalidRequestError")}
    driver, call = Driver(answers=_answers([MatchKind.NONE, MatchKind.NONE], refuse)), Call()
    _to_slot_choice(driver, call)
    driver.send(call.chose("slot-c1"))
    outputs = driver.send(_identified(call, DETAILS))
    (queued,) = reviews(outputs)
    assert queued.kind is CommandKind.CREATE_COVERAGE and queued.params["patient_id"] == NEW_ID
    assert "address_city" not in queued.params  # the chart has the address already
    assert replies(outputs)[-1].template.value == "BOOKING_CONFIRMED"


def test_details_for_someone_else_start_over_and_phi_leaves_with_the_call() -> None:
    driver, call = Driver(answers=_answers([MatchKind.NONE, MatchKind.NONE])), Call()
    _to_slot_choice(driver, call)
    driver.send(call.chose("slot-c1"))
    other = call.event({"type": "caller_identified", "family_name": "Other", "given_name": "Person",
                        "birth_date": "1990-01-01", "registration": DETAILS})
    driver.send(other)
    assert driver.state is not None and driver.state.offer is None and list(works(driver.answers, RegisterPatient)) == []
    driver.send(call.ended())
    assert driver.state is not None and not driver.state.holds_phi and driver.state.registration is None
