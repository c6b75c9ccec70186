"""Every guard and routing rule: one small function per GuardName, run in the order of RULES.

A rule reads the turn's Facts and can only make the Draft stricter (guards/draft.py): forbid commands,
add a read (SEARCH_PATIENT, READ_COMPLIANCE_FLAGS), add a task, raise the outcome, propose a reply.
Writes come only from the intent's own commands (INTENT_COMMANDS) and no rule can add one or lower an
outcome, so a rule that fires — a bypass marker included — can never weaken a decision.
The rule table in guards/README.md follows this file.
"""

from __future__ import annotations

from collections.abc import Callable

from guards.draft import (
    BOOKING_INTENTS,
    CHART_INTENTS,
    NO_IDENTITY_INTENTS,
    SCHEDULE_WRITES,
    SCHEDULING_INTENTS,
    Draft,
    Facts,
)
from guards.model import (
    WRITE_COMMANDS,
    AgreementStatus,
    Command,
    GoLivePhase,
    GuardName,
    Intent,
    Outcome,
    TaskKind,
    TaskReason,
    VisitReason,
)
from guards.replies import ReplyTemplate

MESSAGE_ROUTES: dict[Intent, tuple[TaskKind, TaskReason]] = {
    Intent.PRIOR_AUTH_FOLLOWUP: (TaskKind.PRIOR_AUTH_FOLLOWUP, TaskReason.PRIOR_AUTH_QUESTION),
    Intent.PREOP_CLEARANCE: (TaskKind.PREOP_CLEARANCE, TaskReason.PREOP_CLEARANCE_QUESTION),
    Intent.GENERAL_QUESTION: (TaskKind.FRONT_DESK_MESSAGE, TaskReason.GENERAL_MESSAGE),
}
"""Messages the receptionist takes for the team that handles them."""


# --- Gates: who is calling and what the chart says must be known before acting. ---


def caller_identification_required(f: Facts, d: Draft) -> None:
    """Nothing is done for an unidentified caller but ask for name and date of birth."""
    if f.intent not in NO_IDENTITY_INTENTS and not f.ctx.caller_identified:
        d.fire(GuardName.CALLER_IDENTIFICATION_REQUIRED)
        d.forbid_intent_commands()
        d.raise_outcome(Outcome.NEEDS_INFORMATION)
        d.propose(ReplyTemplate.ASK_IDENTITY)


def patient_lookup_required(f: Facts, d: Draft) -> None:
    """An identified caller whose chart has not been searched yet: search before acting."""
    if f.intent in CHART_INTENTS and f.ctx.caller_identified and f.ctx.patient_id is None and not f.ctx.is_new_patient:
        d.fire(GuardName.PATIENT_LOOKUP_REQUIRED)
        d.forbid_intent_commands()
        d.read(Command.SEARCH_PATIENT)
        d.raise_outcome(Outcome.NEEDS_INFORMATION)
        d.propose(ReplyTemplate.PLEASE_HOLD)


def compliance_flags_required(f: Facts, d: Draft) -> None:
    """A known patient whose flags are unread: read them first, so restrictions and agreement apply."""
    if f.intent in CHART_INTENTS and f.ctx.patient_id is not None and f.chart is None:
        d.fire(GuardName.COMPLIANCE_FLAGS_REQUIRED)
        d.forbid_intent_commands()
        d.read(Command.READ_COMPLIANCE_FLAGS)
        d.raise_outcome(Outcome.NEEDS_INFORMATION)
        d.propose(ReplyTemplate.PLEASE_HOLD)


def visit_type_matches_patient(f: Facts, d: Draft) -> None:
    """New patients are offered a consultation, established ones a follow-up (see effective_visit_reason)."""
    booking = f.intent in (Intent.BOOK_APPOINTMENT, Intent.RESCHEDULE_APPOINTMENT)
    if booking and f.ready and f.visit_reason is not f.request.visit_reason:
        d.fire(GuardName.VISIT_TYPE_MATCHES_PATIENT)
        if f.visit_reason is VisitReason.NEW_PATIENT_CONSULT:
            d.propose(ReplyTemplate.NEW_PATIENT_CONSULT_OFFER)


def visit_reason_required(f: Facts, d: Draft) -> None:
    """Slots depend on the procedure: without a visit reason, ask instead of guessing."""
    if f.intent in BOOKING_INTENTS and f.ready and f.visit_reason is None:
        d.fire(GuardName.VISIT_REASON_REQUIRED)
        d.forbid_intent_commands()
        d.raise_outcome(Outcome.NEEDS_INFORMATION)
        d.propose(ReplyTemplate.ASK_VISIT_REASON)


# --- Controlled substances: 100% escalate to a provider; nothing is ever promised. ---


def refill_escalates_to_provider(f: Facts, d: Draft) -> None:
    """Every refill request becomes a provider task with the call context, whoever calls and whatever the chart says."""
    if f.intent is Intent.REFILL_REQUEST:
        d.fire(GuardName.REFILL_ESCALATES_TO_PROVIDER)
        d.escalate_to_provider(TaskKind.PROVIDER_REFILL_REVIEW, TaskReason.REFILL_REQUESTED)
        d.propose(_medication_acknowledgement(f))


def controlled_substance_escalates(f: Facts, d: Draft) -> None:
    """A controlled substance or refill raised under any other intent escalates too.

    A controlled substance or a refill named while booking or moving a visit escalates and the booking
    goes on (offered, or queued in the read-only phase), and the reply says both; a prescription change
    ("call it in", "change my dose") or a refill under any other intent takes the whole turn, so the
    caller hears where the request went.
    """
    if f.intent is Intent.REFILL_REQUEST or not f.controlled_request:
        return
    d.fire(GuardName.CONTROLLED_SUBSTANCE_ESCALATES)
    if f.text.medication_write:
        d.escalate_to_provider(TaskKind.PROVIDER_CONTROLLED_SUBSTANCE_REVIEW, TaskReason.MEDICATION_CHANGE_REQUESTED)
    elif f.text.refill:
        d.escalate_to_provider(TaskKind.PROVIDER_REFILL_REVIEW, TaskReason.REFILL_REQUESTED)
    else:
        d.escalate_to_provider(TaskKind.PROVIDER_CONTROLLED_SUBSTANCE_REVIEW, TaskReason.CONTROLLED_SUBSTANCE_MENTIONED)
    if f.intent in BOOKING_INTENTS and not f.text.medication_write:
        if f.refill_request:  # the booking goes on; the reply says both (Draft.to_decision)
            d.propose(_medication_acknowledgement(f))
    elif f.refill_request or f.intent not in SCHEDULING_INTENTS:
        d.forbid_intent_commands()
        d.propose(_medication_acknowledgement(f))


def medication_write_refused(f: Facts, d: Draft) -> None:
    """Asked to "call it in" or "change my dose": no command can do it, and nothing else runs in that turn."""
    if f.text.medication_write:
        d.fire(GuardName.MEDICATION_WRITE_REFUSED)
        d.forbid_intent_commands()


def controlled_visit_escalates(f: Facts, d: Draft) -> None:
    """Booking a chronic-opioid patient's medication-management visit tells the provider (with the PDMP check time)."""
    if f.controlled_visit and f.chart is not None and f.chart.chronic_opioid:
        d.fire(GuardName.CONTROLLED_VISIT_ESCALATES)
        d.escalate_to_provider(TaskKind.PROVIDER_CONTROLLED_SUBSTANCE_REVIEW, TaskReason.CONTROLLED_SUBSTANCE_VISIT)


def _medication_acknowledgement(f: Facts) -> ReplyTemplate:
    """The medication reply; an unidentified caller is also asked who they are so the team finds the chart."""
    if f.ctx.caller_identified:
        return ReplyTemplate.MEDICATION_REQUEST_FORWARDED
    return ReplyTemplate.MEDICATION_REQUEST_FORWARDED_NEED_IDENTITY


# --- Chart flags route; they never make a clinical decision and are never read aloud. ---


def agreement_blocks_controlled_visit(f: Facts, d: Draft) -> None:
    """Expired or violated agreement: the controlled-substance visit is hard-blocked and routed to the clinical team.

    An expired agreement may still book an agreement-review visit, so the reply offers one (unless
    a scheduling restriction forbids booking by phone); after a violation the clinical team decides.
    Other visits (procedures, follow-ups) are not blocked: that would let a flag make a clinical decision.
    """
    if not f.controlled_visit or f.agreement not in (AgreementStatus.EXPIRED, AgreementStatus.VIOLATED):
        return
    d.fire(GuardName.AGREEMENT_BLOCKS_CONTROLLED_VISIT)
    if f.agreement_overdue:
        d.fire(GuardName.AGREEMENT_RENEWAL_OVERDUE)
    if f.agreement is AgreementStatus.VIOLATED:
        d.route_to_clinical_team(TaskReason.AGREEMENT_VIOLATED, ReplyTemplate.ROUTED_TO_CARE_TEAM)
    elif f.restriction is None:
        d.route_to_clinical_team(TaskReason.AGREEMENT_EXPIRED, ReplyTemplate.ROUTED_OFFER_AGREEMENT_REVIEW)
    else:
        d.route_to_clinical_team(TaskReason.AGREEMENT_EXPIRED, ReplyTemplate.ROUTED_TO_CARE_TEAM)


def agreement_review_gated(f: Facts, d: Draft) -> None:
    """An agreement-review visit is booked for an active or expired agreement; after a violation, or with
    no agreement on file, the clinical team decides."""
    if not (f.intent in BOOKING_INTENTS and f.ready and f.visit_reason is VisitReason.AGREEMENT_REVIEW):
        return
    if f.agreement is AgreementStatus.VIOLATED:
        d.fire(GuardName.AGREEMENT_REVIEW_GATED)
        d.route_to_clinical_team(TaskReason.AGREEMENT_VIOLATED, ReplyTemplate.ROUTED_TO_CARE_TEAM)
    elif f.agreement is AgreementStatus.NONE:
        d.fire(GuardName.AGREEMENT_REVIEW_GATED)
        d.route_to_clinical_team(TaskReason.AGREEMENT_NOT_ON_FILE, ReplyTemplate.ROUTED_TO_CARE_TEAM)


def aberrant_uds_routes(f: Facts, d: Draft) -> None:
    """Aberrant UDS (the flag only, never the result): controlled-substance requests and visits also go to
    clinical-team review, and the controlled-substance visit is not booked by phone."""
    if f.chart is None or not f.chart.aberrant_uds or not (f.controlled_request or f.controlled_visit):
        return
    d.fire(GuardName.ABERRANT_UDS_ROUTES)
    if f.controlled_visit:
        d.route_to_clinical_team(TaskReason.ABERRANT_UDS, ReplyTemplate.ROUTED_TO_CARE_TEAM)
    else:
        d.add_task(TaskKind.CLINICAL_TEAM_REVIEW, TaskReason.ABERRANT_UDS)


def phone_restriction_honoured(f: Facts, d: Draft) -> None:
    """A provider-set phone restriction: the request is not acted on but routed to the clinical team
    (a controlled-substance request still escalates to the provider as well)."""
    if f.restriction is not None:
        d.fire(GuardName.PHONE_RESTRICTION_HONOURED)
        d.route_to_clinical_team(TaskReason.PHONE_REQUEST_RESTRICTED, ReplyTemplate.ROUTED_TO_CARE_TEAM)


def protected_results_withheld(f: Facts, d: Draft) -> None:
    """Results, PDMP content and UDS results are never given by phone; the clinical team follows up."""
    if f.intent is Intent.RESULTS_REQUEST or f.text.protected_content:
        d.fire(GuardName.PROTECTED_RESULTS_WITHHELD)
        d.route_to_clinical_team(TaskReason.RESULTS_REQUESTED, ReplyTemplate.RESULTS_NOT_SHARED_BY_PHONE)


def pdmp_timestamp_only(f: Facts, d: Draft) -> None:
    """Record that a provider task carries the PDMP check time (TaskSpec has no field for PDMP content)."""
    if any(task.pdmp_last_checked is not None for task in d.tasks):
        d.fire(GuardName.PDMP_TIMESTAMP_ONLY)


# --- Routing of messages and coordinator work. ---


def uds_question_to_coordinator(f: Facts, d: Draft) -> None:
    """UDS questions go to the controlled-substance coordinator; the system never schedules a UDS.

    A chronic-opioid patient's UDS question reaches the coordinator whatever else the turn does (results
    withheld, a restriction, a controlled request), and with an aberrant-UDS flag their provider too (a
    task, not an escalation: nothing controlled was asked for)."""
    if f.intent is not Intent.UDS_QUESTION or not f.ready:
        return
    chronic = f.chart is not None and f.chart.chronic_opioid
    if f.plain_request or chronic:
        d.fire(GuardName.UDS_QUESTION_TO_COORDINATOR)
        d.add_task(TaskKind.CS_COORDINATOR_UDS, TaskReason.UDS_QUESTION)
    if chronic and f.chart is not None and f.chart.aberrant_uds:
        d.add_task(TaskKind.PROVIDER_CONTROLLED_SUBSTANCE_REVIEW, TaskReason.ABERRANT_UDS)


def uds_due_to_coordinator(f: Facts, d: Draft) -> None:
    """A UDS due on the chart becomes a coordinator task, on any call of that patient; the caller is not told."""
    if f.chart is not None and f.chart.uds_due and f.ctx.patient_id is not None:
        d.fire(GuardName.UDS_DUE_TO_COORDINATOR)
        d.add_task(TaskKind.CS_COORDINATOR_UDS, TaskReason.UDS_DUE)


def message_routed_to_team(f: Facts, d: Draft) -> None:
    """Prior-auth, pre-op clearance and general questions become a task for the team that handles them;
    a question about a (non-controlled) medication goes to the clinical team, not the front desk."""
    if f.intent not in MESSAGE_ROUTES or not f.plain_request:
        return
    d.fire(GuardName.MESSAGE_ROUTED_TO_TEAM)
    if f.intent is Intent.GENERAL_QUESTION and f.request.medication_mentioned:
        d.add_task(TaskKind.CLINICAL_TEAM_REVIEW, TaskReason.MEDICATION_QUESTION)
    else:
        d.add_task(*MESSAGE_ROUTES[f.intent])


def unrecognised_intent_clarified(f: Facts, d: Draft) -> None:
    """An unknown intent does nothing but ask again (unless the words themselves escalate or route)."""
    if f.intent is Intent.UNKNOWN and f.plain_request:
        d.fire(GuardName.UNRECOGNISED_INTENT_CLARIFIED)


# --- Time of day, go-live phase and bypass attempts: applied to the draft the rules above built. ---


def after_hours_policy(f: Facts, d: Draft) -> None:
    """After hours, intake and booking still run (the schedule is live) unless the practice's rule holds bookings,
    reschedules and cancellations for staff to confirm (``after_hours_bookings: staff_confirm``: offered, then
    queued, like the read-only phase, with "staff will confirm"); escalations and messages are still tasks, and
    their reply says the office is closed and points emergencies to 911."""
    if f.ctx.after_hours:
        d.fire(GuardName.AFTER_HOURS_POLICY)
        d.after_hours_wording = True
        if f.ctx.after_hours_bookings_held and any(c in SCHEDULE_WRITES for c in d.dispatchable()):
            d.schedule_held = True
            d.raise_outcome(Outcome.REVIEW_QUEUE)


def read_only_writes_queued(f: Facts, d: Draft) -> None:
    """Read-only phase: reads run live, every write waits for a human, and the reply says staff will confirm."""
    if f.phase is GoLivePhase.READ_ONLY and any(c in WRITE_COMMANDS for c in d.dispatchable()):
        d.fire(GuardName.READ_ONLY_WRITES_QUEUED)
        d.writes_queued = True
        d.raise_outcome(Outcome.REVIEW_QUEUE)


def bypass_attempt_recorded(f: Facts, d: Draft) -> None:
    """A bypass attempt is recorded for the audit and the alarm; it changes nothing else."""
    if f.signals:
        d.fire(GuardName.BYPASS_ATTEMPT_RECORDED)


Rule = Callable[[Facts, Draft], None]

RULES: tuple[Rule, ...] = (
    caller_identification_required,
    patient_lookup_required,
    compliance_flags_required,
    visit_type_matches_patient,
    visit_reason_required,
    refill_escalates_to_provider,
    controlled_substance_escalates,
    medication_write_refused,
    controlled_visit_escalates,
    agreement_blocks_controlled_visit,
    agreement_review_gated,
    aberrant_uds_routes,
    phone_restriction_honoured,
    protected_results_withheld,
    uds_question_to_coordinator,
    uds_due_to_coordinator,
    message_routed_to_team,
    pdmp_timestamp_only,
    unrecognised_intent_clarified,
    after_hours_policy,
    read_only_writes_queued,
    bypass_attempt_recorded,
)
"""Run in this order; pdmp_timestamp_only and the last three look at what the others built."""
