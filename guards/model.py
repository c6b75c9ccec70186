"""Closed vocabularies and frozen input models of the guards core.

Every outside value reaches the rules through these models, so a malformed or hostile event fails
here with a pydantic ValidationError (inputs hidden from its text) before any rule runs. Names and
values follow docs/CONTRACTS.md and the event models of `schemas`.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints, model_validator

OpaqueId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")]
"""Ids from other systems (call, practice, FHIR ids): no spaces, no control characters."""
TranscriptRef = Annotated[str, StringConstraints(min_length=1, max_length=2048, pattern=r"^[^\x00-\x1f\x7f]*$")]
"""Where the transcript is stored (an opaque reference, not the transcript)."""
TranscriptSnippet = Annotated[str, StringConstraints(max_length=4000)]
"""Caller words: hostile text. Only bypass.scan_snippet reads it, and nothing echoes it."""


class FrozenModel(BaseModel):
    """Immutable, no unknown fields, and validation errors that never quote the (possibly PHI) input."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class Intent(StrEnum):
    """What the voice agent recognised; exactly the intent symbols of docs/CONTRACTS.md."""

    BOOK_APPOINTMENT = "BOOK_APPOINTMENT"
    RESCHEDULE_APPOINTMENT = "RESCHEDULE_APPOINTMENT"
    CANCEL_APPOINTMENT = "CANCEL_APPOINTMENT"
    REFILL_REQUEST = "REFILL_REQUEST"
    OPIOID_AGREEMENT_RENEWAL = "OPIOID_AGREEMENT_RENEWAL"
    UDS_QUESTION = "UDS_QUESTION"
    RESULTS_REQUEST = "RESULTS_REQUEST"
    INTAKE = "INTAKE"
    PRIOR_AUTH_FOLLOWUP = "PRIOR_AUTH_FOLLOWUP"
    PREOP_CLEARANCE = "PREOP_CLEARANCE"
    GENERAL_QUESTION = "GENERAL_QUESTION"
    UNKNOWN = "UNKNOWN"


class VisitReason(StrEnum):
    """Appointment types (FHIR appointment-type codes of docs/CONTRACTS.md)."""

    NEW_PATIENT_CONSULT = "new-patient-consult"
    FOLLOW_UP = "follow-up"
    MEDICATION_MANAGEMENT = "medication-management"
    """The in-office controlled-substance visit (docs/CONTRACTS.md)."""
    AGREEMENT_REVIEW = "agreement-review"
    ESI = "esi"
    FACET_INJECTION = "facet-injection"
    RFA = "rfa"
    SCS_TRIAL = "scs-trial"
    KYPHOPLASTY = "kyphoplasty"
    TRIGGER_POINT = "trigger-point"


class GoLivePhase(StrEnum):
    """Where a practice is on the road to production writes."""

    SANDBOX = "sandbox"
    """Writes go to the practice's sandbox tenant: decided exactly like WRITE."""
    READ_ONLY = "read_only"
    """Live reads; every write waits in the human review queue."""
    WRITE = "write"


class AgreementStatus(StrEnum):
    """Opioid treatment agreement on the chart; NONE when the chart has no agreement Flag."""

    ACTIVE = "active"
    EXPIRED = "expired"
    VIOLATED = "violated"
    NONE = "none"


class PhoneRestriction(StrEnum):
    """Provider-set restrictions on what a patient may ask for by phone."""

    NO_REFILL_REQUESTS = "no-refill-requests"
    NO_SCHEDULING = "no-scheduling"
    NO_PHONE_REQUESTS = "no-phone-requests"


class Command(StrEnum):
    """Everything the guard can let the dispatcher do. Closed: there is no medication or prescription write."""

    SEARCH_PATIENT = "SEARCH_PATIENT"
    READ_COMPLIANCE_FLAGS = "READ_COMPLIANCE_FLAGS"
    SEARCH_SLOTS = "SEARCH_SLOTS"
    BOOK_APPOINTMENT = "BOOK_APPOINTMENT"
    RESCHEDULE_APPOINTMENT = "RESCHEDULE_APPOINTMENT"
    CANCEL_APPOINTMENT = "CANCEL_APPOINTMENT"
    CREATE_TASK = "CREATE_TASK"
    CREATE_DOCUMENT_REFERENCE = "CREATE_DOCUMENT_REFERENCE"
    REGISTER_PATIENT = "REGISTER_PATIENT"
    """Create the chart of a caller no chart matched: never on its own, only as the first step of a new
    patient's BOOK_APPOINTMENT the guard allowed (streams.callflow), after a second search found no chart."""
    CREATE_COVERAGE = "CREATE_COVERAGE"
    """The insurance of a patient registered in the same call (ModMed's Coverage is create-only)."""


READ_COMMANDS = frozenset({Command.SEARCH_PATIENT, Command.READ_COMPLIANCE_FLAGS, Command.SEARCH_SLOTS})
"""Commands that only read; in the read-only phase they still run live."""
WRITE_COMMANDS = frozenset(Command) - READ_COMMANDS
"""Commands that change the chart or the schedule; in the read-only phase they wait for a human."""


class Outcome(StrEnum):
    """What happens to the caller's request, from least to most strict (see OUTCOME_STRICTNESS)."""

    ALLOW = "ALLOW"
    """The commands run."""
    REVIEW_QUEUE = "REVIEW_QUEUE"
    """Read-only phase: reads run, writes wait for a human; staff will confirm."""
    NEEDS_INFORMATION = "NEEDS_INFORMATION"
    """Nothing is written yet: the caller must identify themselves or say which visit, or the chart must be read."""
    BLOCK_AND_ROUTE = "BLOCK_AND_ROUTE"
    """The request is not carried out; a review task goes to a human team."""
    ESCALATE = "ESCALATE"
    """A provider task carrying the call context; nothing clinical is promised."""


OUTCOME_STRICTNESS: dict[Outcome, int] = {outcome: rank for rank, outcome in enumerate(Outcome)}
"""Higher is stricter. When several rules apply, the strictest outcome wins."""


class TaskAudience(StrEnum):
    """Who works a task in the practice."""

    PROVIDER = "provider"
    CLINICAL_TEAM = "clinical_team"
    CS_COORDINATOR = "cs_coordinator"
    FRONT_DESK = "front_desk"


class TaskKind(StrEnum):
    """The tasks the guard can ask for; each goes to exactly one audience (TASK_AUDIENCE)."""

    PROVIDER_REFILL_REVIEW = "PROVIDER_REFILL_REVIEW"
    PROVIDER_CONTROLLED_SUBSTANCE_REVIEW = "PROVIDER_CONTROLLED_SUBSTANCE_REVIEW"
    CLINICAL_TEAM_REVIEW = "CLINICAL_TEAM_REVIEW"
    CS_COORDINATOR_UDS = "CS_COORDINATOR_UDS"
    PRIOR_AUTH_FOLLOWUP = "PRIOR_AUTH_FOLLOWUP"
    PREOP_CLEARANCE = "PREOP_CLEARANCE"
    FRONT_DESK_MESSAGE = "FRONT_DESK_MESSAGE"


TASK_AUDIENCE: dict[TaskKind, TaskAudience] = {
    TaskKind.PROVIDER_REFILL_REVIEW: TaskAudience.PROVIDER,
    TaskKind.PROVIDER_CONTROLLED_SUBSTANCE_REVIEW: TaskAudience.PROVIDER,
    TaskKind.CLINICAL_TEAM_REVIEW: TaskAudience.CLINICAL_TEAM,
    TaskKind.CS_COORDINATOR_UDS: TaskAudience.CS_COORDINATOR,
    TaskKind.PRIOR_AUTH_FOLLOWUP: TaskAudience.FRONT_DESK,
    TaskKind.PREOP_CLEARANCE: TaskAudience.CLINICAL_TEAM,
    TaskKind.FRONT_DESK_MESSAGE: TaskAudience.FRONT_DESK,
}


class TaskReason(StrEnum):
    """Why a task was created: a code for the team's queue, never clinical content."""

    REFILL_REQUESTED = "REFILL_REQUESTED"
    CONTROLLED_SUBSTANCE_MENTIONED = "CONTROLLED_SUBSTANCE_MENTIONED"
    MEDICATION_CHANGE_REQUESTED = "MEDICATION_CHANGE_REQUESTED"
    CONTROLLED_SUBSTANCE_VISIT = "CONTROLLED_SUBSTANCE_VISIT"
    AGREEMENT_EXPIRED = "AGREEMENT_EXPIRED"
    AGREEMENT_VIOLATED = "AGREEMENT_VIOLATED"
    AGREEMENT_NOT_ON_FILE = "AGREEMENT_NOT_ON_FILE"
    ABERRANT_UDS = "ABERRANT_UDS"
    PHONE_REQUEST_RESTRICTED = "PHONE_REQUEST_RESTRICTED"
    RESULTS_REQUESTED = "RESULTS_REQUESTED"
    UDS_DUE = "UDS_DUE"
    UDS_QUESTION = "UDS_QUESTION"
    PRIOR_AUTH_QUESTION = "PRIOR_AUTH_QUESTION"
    PREOP_CLEARANCE_QUESTION = "PREOP_CLEARANCE_QUESTION"
    GENERAL_MESSAGE = "GENERAL_MESSAGE"
    MEDICATION_QUESTION = "MEDICATION_QUESTION"


class GuardAction(StrEnum):
    """What a guard hit truly did to the caller's request (a GUARD_HIT record's guard_action)."""

    BLOCKED = "BLOCKED"
    """The request's path was refused and handed to nobody (e.g. a prescription change)."""
    ROUTED = "ROUTED"
    """The request went to a team instead of (or besides) being handled on the phone."""
    ESCALATED = "ESCALATED"
    """A provider task was created (controlled substances, refills)."""
    NOTED = "NOTED"
    """Recorded or asked for information only: nothing was blocked."""


class GuardName(StrEnum):
    """Every rule of guards/rules.py, by name, so the audit can show which ones fired."""

    CALLER_IDENTIFICATION_REQUIRED = "CALLER_IDENTIFICATION_REQUIRED"
    PATIENT_LOOKUP_REQUIRED = "PATIENT_LOOKUP_REQUIRED"
    COMPLIANCE_FLAGS_REQUIRED = "COMPLIANCE_FLAGS_REQUIRED"
    VISIT_TYPE_MATCHES_PATIENT = "VISIT_TYPE_MATCHES_PATIENT"
    VISIT_REASON_REQUIRED = "VISIT_REASON_REQUIRED"
    REFILL_ESCALATES_TO_PROVIDER = "REFILL_ESCALATES_TO_PROVIDER"
    CONTROLLED_SUBSTANCE_ESCALATES = "CONTROLLED_SUBSTANCE_ESCALATES"
    MEDICATION_WRITE_REFUSED = "MEDICATION_WRITE_REFUSED"
    CONTROLLED_VISIT_ESCALATES = "CONTROLLED_VISIT_ESCALATES"
    AGREEMENT_BLOCKS_CONTROLLED_VISIT = "AGREEMENT_BLOCKS_CONTROLLED_VISIT"
    AGREEMENT_RENEWAL_OVERDUE = "AGREEMENT_RENEWAL_OVERDUE"
    AGREEMENT_REVIEW_GATED = "AGREEMENT_REVIEW_GATED"
    ABERRANT_UDS_ROUTES = "ABERRANT_UDS_ROUTES"
    PHONE_RESTRICTION_HONOURED = "PHONE_RESTRICTION_HONOURED"
    PROTECTED_RESULTS_WITHHELD = "PROTECTED_RESULTS_WITHHELD"
    PDMP_TIMESTAMP_ONLY = "PDMP_TIMESTAMP_ONLY"
    UDS_QUESTION_TO_COORDINATOR = "UDS_QUESTION_TO_COORDINATOR"
    UDS_DUE_TO_COORDINATOR = "UDS_DUE_TO_COORDINATOR"
    MESSAGE_ROUTED_TO_TEAM = "MESSAGE_ROUTED_TO_TEAM"
    UNRECOGNISED_INTENT_CLARIFIED = "UNRECOGNISED_INTENT_CLARIFIED"
    AFTER_HOURS_POLICY = "AFTER_HOURS_POLICY"
    READ_ONLY_WRITES_QUEUED = "READ_ONLY_WRITES_QUEUED"
    BYPASS_ATTEMPT_RECORDED = "BYPASS_ATTEMPT_RECORDED"


class BypassSignal(StrEnum):
    """Guardrail-bypass attempts seen in a turn; recorded and alarmed on, never obeyed."""

    PROMPT_INJECTION = "PROMPT_INJECTION"
    """Instructions aimed at the AI ("ignore previous instructions", "you are now", "system prompt")."""
    AUTHORITY_CLAIM = "AUTHORITY_CLAIM"
    """The caller claims a clinician's or staff member's authority or approval ("this is Dr. Okafor",
    "the doctor always approves it", "that's an order from Dr. Smith")."""
    CALLER_PRESSURE = "CALLER_PRESSURE"
    """Pressure: "just approve it", "override", early refills, threats; urgency and insistence ("just book me")
    count on controlled-substance turns (a controlled request or the medication-management visit)."""
    MEDICATION_WRITE_ATTEMPT = "MEDICATION_WRITE_ATTEMPT"
    """The caller asks for something only a prescription write could do (call it in, change my dose)."""
    PROTECTED_CONTENT_REQUEST = "PROTECTED_CONTENT_REQUEST"
    """The caller asks for PDMP content or UDS results."""
    CHART_DISPUTE = "CHART_DISPUTE"
    """The caller disputes a compliance flag ("my agreement isn't expired", "remove that flag"): the flags still route."""
    REPEATED_REFILL_PRESSURE = "REPEATED_REFILL_PRESSURE"
    """A second (or later) controlled-substance request within the same call."""


class ChartFlags(FrozenModel):
    """The chart's compliance flags (docs/CONTRACTS.md). They route the call; no rule makes a clinical call on them.

    There is deliberately no field for PDMP content or UDS results: only the PDMP check time and the
    aberrant-UDS flag ever enter callstream. `last_refill_date` is carried for the provider's chart
    context but no rule reads it: judging refill timing is a clinical decision.
    """

    chronic_opioid: StrictBool = False
    last_refill_date: date | None = None
    agreement_status: AgreementStatus = AgreementStatus.NONE
    agreement_renewal_due: date | None = None
    aberrant_uds: StrictBool = False
    uds_due: StrictBool = False
    pdmp_last_checked: AwareDatetime | None = None
    phone_restrictions: frozenset[PhoneRestriction] = frozenset()


class MatchKind(StrEnum):
    """How many charts a caller's patient search matched: the connector's answer, the call flow's state."""

    UNIQUE = "unique"
    AMBIGUOUS = "ambiguous"
    """More than one chart: the voice agent must ask for more before anything is read or written."""
    NONE = "none"
    """No chart: the caller is new to the practice (`CallContext.is_new_patient`)."""


class CallContext(FrozenModel):
    """What callstream knows about the call so far (no PHI: ids and booleans only)."""

    call_id: OpaqueId
    practice_id: OpaqueId
    caller_identified: StrictBool = False
    """The caller gave name and date of birth."""
    patient_id: OpaqueId | None = None
    """The FHIR Patient id the search matched; None until the search has run or when nothing matched."""
    is_new_patient: StrictBool = False
    """The search ran and found no chart: the caller is new to the practice."""
    transcript_ref: TranscriptRef | None = None
    after_hours: StrictBool = False
    after_hours_bookings_held: StrictBool = False
    """The practice's after-hours rule is staff_confirm: after hours, appointment writes wait for staff."""
    refill_requests_earlier_in_call: Annotated[StrictInt, Field(ge=0, le=1000)] = 0
    """Controlled-substance requests already decided in this call (repeated pressure is a bypass signal)."""

    @model_validator(mode="after")
    def _patient_needs_identified_caller(self) -> Self:
        """A chart is only ever matched from the caller's name and date of birth."""
        if self.patient_id is not None and not self.caller_identified:
            raise ValueError("patient_id is set but the caller is not identified")
        return self


class DateRange(FrozenModel):
    """The dates the caller asked for, inclusive."""

    start: date
    end: date

    @model_validator(mode="after")
    def _bounded_and_ordered(self) -> Self:
        """A window that ends before it starts, or spans years, cannot be searched sensibly."""
        if self.end < self.start:
            raise ValueError("end must not be before start")
        if (self.end - self.start).days > 366:
            raise ValueError("a requested window spans at most 366 days")
        return self


class IntentRequest(FrozenModel):
    """One recognised intent with the entities the voice agent extracted (mirrors schemas IntentRecognised).

    `controlled_substance_mentioned` counts even when `medication_mentioned` is false: an
    inconsistent pair is read the strict way rather than rejected, so a controlled-substance request
    can never be lost to a validation error.
    """

    intent: Intent
    visit_reason: VisitReason | None = None
    medication_mentioned: StrictBool = False
    controlled_substance_mentioned: StrictBool = False
    transcript_snippet: TranscriptSnippet | None = Field(default=None, repr=False)
    requested_dates: DateRange | None = None
    """Not a guard input: the dispatcher passes it to scheduling.filter_and_rank."""


class TaskSpec(FrozenModel):
    """A task for a human team, carrying the call context but never clinical content.

    The only clinical-adjacent field is `pdmp_last_checked`, and only on provider tasks: PDMP
    content and UDS results have no field here, so they cannot travel in a task.
    """

    kind: TaskKind
    audience: TaskAudience
    reason: TaskReason
    call_id: OpaqueId
    practice_id: OpaqueId
    patient_id: OpaqueId | None = None
    transcript_ref: TranscriptRef | None = None
    after_hours: StrictBool = False
    pdmp_last_checked: AwareDatetime | None = None
    merged_reasons: tuple[TaskReason, ...] = ()
    """Further reasons of the same turn for the same team: one task per kind per call, its reasons merged."""

    @model_validator(mode="after")
    def _audience_and_pdmp(self) -> Self:
        """Each kind has one audience, and the PDMP check time reaches providers only."""
        if TASK_AUDIENCE[self.kind] is not self.audience:
            raise ValueError(f"{self.kind} tasks go to {TASK_AUDIENCE[self.kind]}, not {self.audience}")
        if self.pdmp_last_checked is not None and self.audience is not TaskAudience.PROVIDER:
            raise ValueError("pdmp_last_checked may only reach a provider task")
        return self

    @property
    def reasons(self) -> tuple[TaskReason, ...]:
        """Every reason this task carries, the first one first."""
        return (self.reason, *self.merged_reasons)

    @property
    def idempotency_key(self) -> str:
        """Stable per call, kind, reasons and patient: a turn's reasons for one team make one task, the same
        task decided again (a redelivery, a later turn asking the same) is that task, and a later turn with
        another reason gets a task of its own, never swallowed by a task already written without it."""
        return f"{self.call_id}:{self.kind}:{'+'.join(self.reasons)}:{self.patient_id or 'unmatched'}"
