"""A new patient's registration: the chart searched again right before it is created, the Patient and its
Coverage written, then the chosen slot booked; what fails goes to staff with the details.
"""

from __future__ import annotations

from datetime import datetime

from callstream.tenants import Practice
from guards import MatchKind
from schemas.models import AuditAction, AuditOutcome, CommandKind, CommandRoute
from streams.callflow.audits import read_audit, transition, write_audit
from streams.callflow.booking import book_chosen, booking_to_staff
from streams.callflow.protocol import AuditOut, Step
from streams.callflow.review_queue import queue_for_review, registration_params
from streams.callflow.state import CallPhase, CallState
from streams.callflow.work import (
    CoverageCreated,
    CreateCoverage,
    PatientLookedUp,
    PatientRegistered,
    RegisterPatient,
    SearchPatient,
    Work,
    WorkFailed,
)


def register_again(state: CallState) -> Step:
    """Search the chart again right before creating one: another call, or staff, may have created it since."""
    identity = state.identity
    assert identity is not None
    state, moved = transition(state, CallPhase.REGISTERING)
    work = SearchPatient(family_name=identity.family_name, given_name=identity.given_name,
                         birth_date=identity.birth_date, phone=identity.callback_number or state.caller_number)
    return Step(state, work=work, outputs=moved)


def on_recheck(state: CallState, result: PatientLookedUp, practice: Practice, now: datetime) -> Step:
    """The search right before registering: still no chart, create it; a chart now (someone registered the
    caller meanwhile, or several match) goes to staff with the chosen slot. The caller hears that staff will
    confirm the visit, nothing about any chart."""
    audit = read_audit("Patient", [result.patient_id] if result.patient_id else [], result.route, result.latency_ms,
                       CommandKind.SEARCH_PATIENT, operation=f"recheck_{result.kind.value}")
    if result.kind is not MatchKind.NONE:
        step = booking_to_staff(state, "chart_found_before_registration", practice, now)
        return Step(step.state, step.work, (audit, *step.outputs))
    identity, details = state.identity, state.registration
    assert identity is not None and details is not None
    work = RegisterPatient(family_name=identity.family_name, given_name=identity.given_name,
                           birth_date=identity.birth_date, details=details,
                           phone=identity.callback_number or state.caller_number, email=identity.email)
    return Step(state, work=work, outputs=(audit,))


def on_registered(state: CallState, result: PatientRegistered) -> Step:
    """The new chart exists: its insurance card next when the caller gave one, else the chosen slot is booked."""
    audit = write_audit(result.route, AuditOutcome.SUCCESS, CommandKind.REGISTER_PATIENT, "Patient",
                        (result.patient_id,), result.latency_ms, result.deep_link, operation="register_patient")
    state = state.model_copy(update={"patient_id": result.patient_id, "registered": True})
    insurance = state.registration.insurance if state.registration is not None else None
    work: Work = CreateCoverage(result.patient_id, insurance) if insurance is not None else book_chosen(state)
    return Step(state, work=work, outputs=(audit,))


def on_coverage(state: CallState, result: CoverageCreated) -> Step:
    """The insurance card is on the new chart: book the chosen slot."""
    audit = write_audit(CommandRoute.FHIR, AuditOutcome.SUCCESS, CommandKind.CREATE_COVERAGE, "Coverage",
                        (result.coverage_id,), result.latency_ms, operation="create_coverage")
    return Step(state, work=book_chosen(state), outputs=(audit,))


def registration_failed(state: CallState, failure: WorkFailed, practice: Practice, now: datetime) -> Step:
    """A new patient's registration could not finish. No chart, or a chart ModMed refused as a duplicate
    (409: the search missed it): staff register and book with the details. A Coverage ModMed refused does not
    hold up the booking: staff add the insurance."""
    if failure.command is CommandKind.SEARCH_PATIENT:
        audit = AuditOut(action=AuditAction.FHIR_READ, outcome=AuditOutcome.FAILURE, resource_type="Patient",
                         command=failure.command, error_class=failure.error_class, latency_ms=failure.latency_ms,
                         detail={"operation": "recheck"})
        step = booking_to_staff(state, failure.error_class, practice, now)
        return Step(step.state, step.work, (audit, *step.outputs))
    resource = "Patient" if failure.command is CommandKind.REGISTER_PATIENT else "Coverage"
    error_class = "DuplicatePatient" if failure.slot_taken and resource == "Patient" else failure.error_class
    audit = write_audit(failure.route or CommandRoute.FHIR, AuditOutcome.FAILURE, failure.command, resource, (),
                        failure.latency_ms, error_class=error_class)
    if resource == "Patient":
        step = booking_to_staff(state, error_class, practice, now)
        return Step(step.state, step.work, (audit, *step.outputs))
    assert state.patient_id is not None
    queued = queue_for_review(state, CommandKind.CREATE_COVERAGE, state.patient_id,
                              {"patient_id": state.patient_id, **registration_params(state, insurance_only=True)},
                              error_class, resource_type="Patient", resource_ids=(state.patient_id,))
    return Step(state, work=book_chosen(state), outputs=(audit, *queued))
