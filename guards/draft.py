"""The turn being decided: what the rules may look at (Facts) and the decision they build (Draft).

Writes come only from the intent's own commands (INTENT_COMMANDS); every Draft operation is monotone
(forbid commands, add a read, add a task, raise the outcome, propose a reply), so no rule of
guards/rules.py can add a write or lower an outcome. `Draft.to_decision` freezes the result: reads
first, the writes the read-only phase or a practice's after-hours rule holds moved to the queue, and
the reply earliest in REPLY_PRECEDENCE.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date
from typing import Literal

from guards.bypass import SnippetFindings, bypass_signals, scan_snippet
from guards.decision import Decision
from guards.model import (
    OUTCOME_STRICTNESS,
    TASK_AUDIENCE,
    WRITE_COMMANDS,
    AgreementStatus,
    BypassSignal,
    CallContext,
    ChartFlags,
    Command,
    GoLivePhase,
    GuardName,
    Intent,
    IntentRequest,
    Outcome,
    PhoneRestriction,
    TaskAudience,
    TaskKind,
    TaskReason,
    TaskSpec,
    VisitReason,
)
from guards.replies import ReplyTemplate, adapt_reply

INTENT_COMMANDS: dict[Intent, tuple[Command, ...]] = {
    Intent.BOOK_APPOINTMENT: (Command.SEARCH_SLOTS, Command.BOOK_APPOINTMENT),
    Intent.RESCHEDULE_APPOINTMENT: (Command.SEARCH_SLOTS, Command.RESCHEDULE_APPOINTMENT),
    Intent.CANCEL_APPOINTMENT: (Command.CANCEL_APPOINTMENT,),
    Intent.REFILL_REQUEST: (),
    Intent.OPIOID_AGREEMENT_RENEWAL: (Command.SEARCH_SLOTS, Command.BOOK_APPOINTMENT),
    Intent.UDS_QUESTION: (),
    Intent.RESULTS_REQUEST: (),
    Intent.INTAKE: (Command.CREATE_DOCUMENT_REFERENCE,),
    Intent.PRIOR_AUTH_FOLLOWUP: (),
    Intent.PREOP_CLEARANCE: (),
    Intent.GENERAL_QUESTION: (),
    Intent.UNKNOWN: (),
}
"""The only source of writes: what each intent asks for before any rule has looked at it."""

INTENT_REPLY: dict[Intent, ReplyTemplate] = {
    Intent.BOOK_APPOINTMENT: ReplyTemplate.OFFER_SLOTS,
    Intent.RESCHEDULE_APPOINTMENT: ReplyTemplate.OFFER_SLOTS,
    Intent.CANCEL_APPOINTMENT: ReplyTemplate.CANCELLATION_CONFIRMED,
    Intent.REFILL_REQUEST: ReplyTemplate.MEDICATION_REQUEST_FORWARDED,
    Intent.OPIOID_AGREEMENT_RENEWAL: ReplyTemplate.OFFER_SLOTS,
    Intent.UDS_QUESTION: ReplyTemplate.MESSAGE_FORWARDED,
    Intent.RESULTS_REQUEST: ReplyTemplate.RESULTS_NOT_SHARED_BY_PHONE,
    Intent.INTAKE: ReplyTemplate.INTAKE_LINK_SENT,
    Intent.PRIOR_AUTH_FOLLOWUP: ReplyTemplate.MESSAGE_FORWARDED,
    Intent.PREOP_CLEARANCE: ReplyTemplate.MESSAGE_FORWARDED,
    Intent.GENERAL_QUESTION: ReplyTemplate.MESSAGE_FORWARDED,
    Intent.UNKNOWN: ReplyTemplate.CLARIFY,
}
"""The reply when no rule proposes a more important one."""

REPLY_PRECEDENCE: tuple[ReplyTemplate, ...] = (
    ReplyTemplate.MEDICATION_REQUEST_FORWARDED_NEED_IDENTITY,
    ReplyTemplate.MEDICATION_REQUEST_FORWARDED,
    ReplyTemplate.RESULTS_NOT_SHARED_BY_PHONE,
    ReplyTemplate.ROUTED_TO_CARE_TEAM,
    ReplyTemplate.ROUTED_OFFER_AGREEMENT_REVIEW,
    ReplyTemplate.ASK_IDENTITY,
    ReplyTemplate.PLEASE_HOLD,
    ReplyTemplate.ASK_VISIT_REASON,
    ReplyTemplate.MESSAGE_FORWARDED,
    ReplyTemplate.NEW_PATIENT_CONSULT_OFFER,
    ReplyTemplate.OFFER_SLOTS,
    ReplyTemplate.CANCELLATION_CONFIRMED,
    ReplyTemplate.INTAKE_LINK_SENT,
    ReplyTemplate.CLARIFY,
)
"""When several replies are proposed the earliest here is spoken: a medication request is always
acknowledged as sent to the provider's team, and a refusal outranks any offer."""

NO_IDENTITY_INTENTS = frozenset({Intent.GENERAL_QUESTION, Intent.UNKNOWN, Intent.RESULTS_REQUEST})
"""Intents handled without knowing who calls (a results request is refused and routed either way)."""
CHART_INTENTS = frozenset(
    {
        Intent.BOOK_APPOINTMENT, Intent.RESCHEDULE_APPOINTMENT, Intent.CANCEL_APPOINTMENT,
        Intent.OPIOID_AGREEMENT_RENEWAL, Intent.INTAKE, Intent.PRIOR_AUTH_FOLLOWUP,
        Intent.PREOP_CLEARANCE, Intent.UDS_QUESTION,
    }
)
"""Intents acted on only once the chart's flags are known (restrictions and agreement apply to them).
Refill and controlled-substance requests are not here: they escalate at once, whatever is known."""
SCHEDULING_INTENTS = frozenset(
    {Intent.BOOK_APPOINTMENT, Intent.RESCHEDULE_APPOINTMENT, Intent.CANCEL_APPOINTMENT, Intent.OPIOID_AGREEMENT_RENEWAL}
)
BOOKING_INTENTS = frozenset({Intent.BOOK_APPOINTMENT, Intent.RESCHEDULE_APPOINTMENT, Intent.OPIOID_AGREEMENT_RENEWAL})
SCHEDULE_WRITES = frozenset({Command.BOOK_APPOINTMENT, Command.RESCHEDULE_APPOINTMENT, Command.CANCEL_APPOINTMENT})
"""The writes a practice's after-hours rule can hold for staff (never a task: escalations are never held)."""


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything the rules may look at for one turn, derived once by gather_facts."""

    ctx: CallContext
    request: IntentRequest
    chart: ChartFlags | None
    """None while an existing patient's flags are unread; empty flags for a new patient (no chart yet)."""
    phase: GoLivePhase
    text: SnippetFindings
    visit_reason: VisitReason | None
    agreement: AgreementStatus
    """The agreement as the rules treat it: an active one past its renewal date counts as expired."""
    agreement_overdue: bool
    signals: tuple[BypassSignal, ...]

    @property
    def intent(self) -> Intent:
        """The recognised intent (what INTENT_COMMANDS and INTENT_REPLY are keyed by)."""
        return self.request.intent

    @property
    def ready(self) -> bool:
        """The caller is identified and the flags are known, as far as this intent needs them."""
        identified = self.intent in NO_IDENTITY_INTENTS or self.ctx.caller_identified
        return identified and (self.intent not in CHART_INTENTS or self.chart is not None)

    @property
    def refill_request(self) -> bool:
        """A refill or a prescription change is asked for, by intent or in words."""
        return self.intent is Intent.REFILL_REQUEST or self.text.refill or self.text.medication_write

    @property
    def controlled_request(self) -> bool:
        """A controlled-substance request: it escalates to a provider, 100% of the time."""
        return self.refill_request or self.request.controlled_substance_mentioned or self.text.controlled_substance

    @property
    def controlled_visit(self) -> bool:
        """Booking the in-office controlled-substance visit (medication management, docs/CONTRACTS.md)."""
        return self.intent in BOOKING_INTENTS and self.ready and self.visit_reason is VisitReason.MEDICATION_MANAGEMENT

    @property
    def restriction(self) -> PhoneRestriction | None:
        """The provider-set phone restriction that covers this request, if any."""
        if self.chart is None or self.intent is Intent.UNKNOWN:
            return None
        restrictions = self.chart.phone_restrictions
        if PhoneRestriction.NO_PHONE_REQUESTS in restrictions:
            return PhoneRestriction.NO_PHONE_REQUESTS
        if PhoneRestriction.NO_REFILL_REQUESTS in restrictions and self.refill_request:
            return PhoneRestriction.NO_REFILL_REQUESTS
        if PhoneRestriction.NO_SCHEDULING in restrictions and self.intent in SCHEDULING_INTENTS:
            return PhoneRestriction.NO_SCHEDULING
        return None

    @property
    def plain_request(self) -> bool:
        """Ready, and no stronger rule (escalation, results, restriction) claims the turn."""
        return (
            self.ready
            and not self.controlled_request
            and not self.text.protected_content
            and self.restriction is None
        )


def effective_visit_reason(ctx: CallContext, request: IntentRequest) -> VisitReason | None:
    """The visit the turn is really about (rule VISIT_TYPE_MATCHES_PATIENT).

    New patients start with a consultation, whatever they asked for; an established patient cannot
    be booked into a new-patient consultation (new-patient visit codes are billable for new
    patients only), so they get a follow-up; an agreement renewal is an agreement-review visit.
    """
    if request.intent is Intent.OPIOID_AGREEMENT_RENEWAL:
        return VisitReason.AGREEMENT_REVIEW
    if request.intent in (Intent.BOOK_APPOINTMENT, Intent.RESCHEDULE_APPOINTMENT):
        if ctx.is_new_patient:
            return VisitReason.NEW_PATIENT_CONSULT
        if ctx.patient_id is not None and request.visit_reason is VisitReason.NEW_PATIENT_CONSULT:
            return VisitReason.FOLLOW_UP
    return request.visit_reason


def gather_facts(
    ctx: CallContext, request: IntentRequest, chart: ChartFlags | None, phase: GoLivePhase, today: date
) -> Facts:
    """Derive the facts of one turn; the snippet is scanned here and never kept."""
    known_chart = chart if chart is not None else (ChartFlags() if ctx.is_new_patient else None)
    agreement = known_chart.agreement_status if known_chart is not None else AgreementStatus.NONE
    renewal_due = known_chart.agreement_renewal_due if known_chart is not None else None
    overdue = agreement is AgreementStatus.ACTIVE and renewal_due is not None and renewal_due < today
    text = scan_snippet(request.transcript_snippet)
    facts = Facts(
        ctx=ctx,
        request=request,
        chart=known_chart,
        phase=phase,
        text=text,
        visit_reason=effective_visit_reason(ctx, request),
        agreement=AgreementStatus.EXPIRED if overdue else agreement,
        agreement_overdue=overdue,
        signals=(),
    )
    signals = bypass_signals(
        text,
        controlled_turn=facts.controlled_request or facts.controlled_visit,
        earlier_controlled_requests=ctx.refill_requests_earlier_in_call,
        controlled_request=facts.controlled_request,
    )
    return replace(facts, signals=signals)


@dataclass(slots=True)
class Draft:
    """The decision being built. Every operation is monotone: it can only make the decision stricter."""

    facts: Facts
    outcome: Outcome = Outcome.ALLOW
    forbidden: set[Command] = field(default_factory=set)
    reads: list[Command] = field(default_factory=list)
    tasks: list[TaskSpec] = field(default_factory=list)
    proposed_replies: list[ReplyTemplate] = field(default_factory=list)
    fired: list[GuardName] = field(default_factory=list)
    after_hours_wording: bool = False
    writes_queued: bool = False
    schedule_held: bool = False
    """After hours at a practice whose rule is staff_confirm: appointment writes wait for staff (tasks do not)."""

    def fire(self, guard: GuardName) -> None:
        """Record that a rule applied (once per turn)."""
        if guard not in self.fired:
            self.fired.append(guard)

    def raise_outcome(self, outcome: Outcome) -> None:
        """Keep the stricter of the current and the given outcome."""
        if OUTCOME_STRICTNESS[outcome] > OUTCOME_STRICTNESS[self.outcome]:
            self.outcome = outcome

    def forbid_intent_commands(self) -> None:
        """Nothing the intent asked for runs in this turn."""
        self.forbidden.update(INTENT_COMMANDS[self.facts.intent])

    def read(self, command: Literal[Command.SEARCH_PATIENT, Command.READ_COMPLIANCE_FLAGS]) -> None:
        """Ask for a read the decision needs before it can act."""
        if command not in self.reads:
            self.reads.append(command)

    def propose(self, reply: ReplyTemplate) -> None:
        """Offer a reply; the one earliest in REPLY_PRECEDENCE is spoken."""
        self.proposed_replies.append(reply)

    def add_task(self, kind: TaskKind, reason: TaskReason) -> None:
        """A task with the call context; provider tasks also get the PDMP check time, and nothing else from PDMP."""
        ctx, chart = self.facts.ctx, self.facts.chart
        audience = TASK_AUDIENCE[kind]
        pdmp_checked = chart.pdmp_last_checked if chart is not None and audience is TaskAudience.PROVIDER else None
        task = TaskSpec(
            kind=kind,
            audience=audience,
            reason=reason,
            call_id=ctx.call_id,
            practice_id=ctx.practice_id,
            patient_id=ctx.patient_id,
            transcript_ref=ctx.transcript_ref,
            after_hours=ctx.after_hours,
            pdmp_last_checked=pdmp_checked,
        )
        for index, existing in enumerate(self.tasks):
            if existing.kind is kind:
                if reason not in existing.reasons:
                    merged = existing.merged_reasons + (reason,)
                    self.tasks[index] = existing.model_copy(update={"merged_reasons": merged})
                return
        self.tasks.append(task)

    def escalate_to_provider(self, kind: TaskKind, reason: TaskReason) -> None:
        """ESCALATE with a provider task: the only way a controlled-substance request is answered."""
        self.add_task(kind, reason)
        self.raise_outcome(Outcome.ESCALATE)

    def route_to_clinical_team(self, reason: TaskReason, reply: ReplyTemplate) -> None:
        """Do not act on the request; a clinical-team review task takes it instead."""
        self.forbid_intent_commands()
        self.add_task(TaskKind.CLINICAL_TEAM_REVIEW, reason)
        self.raise_outcome(Outcome.BLOCK_AND_ROUTE)
        self.propose(reply)

    def dispatchable(self) -> tuple[Command, ...]:
        """Reads first, then what the intent asked for minus everything forbidden, then CREATE_TASK."""
        allowed = [c for c in INTENT_COMMANDS[self.facts.intent] if c not in self.forbidden]
        ordered = [*self.reads, *allowed, *([Command.CREATE_TASK] if self.tasks else [])]
        return tuple(dict.fromkeys(ordered))

    def to_decision(self) -> Decision:
        """Freeze the draft; in the read-only phase the writes move to the review queue."""
        commands = self.dispatchable()
        queued: tuple[Command, ...] = ()
        held = WRITE_COMMANDS if self.writes_queued else SCHEDULE_WRITES if self.schedule_held else frozenset()
        if held:
            queued = tuple(c for c in commands if c in held)
            commands = tuple(c for c in commands if c not in held)
        proposals = [*self.proposed_replies, INTENT_REPLY[self.facts.intent]]
        spoken = min(proposals, key=REPLY_PRECEDENCE.index)
        if spoken is ReplyTemplate.MEDICATION_REQUEST_FORWARDED and Command.SEARCH_SLOTS in commands:
            spoken = ReplyTemplate.OFFER_SLOTS_MEDICATION_FORWARDED  # a booking kept beside a medication request
        provider_first = sorted(self.tasks, key=lambda t: list(TaskAudience).index(t.audience))
        return Decision(
            outcome=self.outcome,
            commands=commands,
            queued_commands=queued,
            tasks=tuple(provider_first),
            visit_reason=self.facts.visit_reason,
            reply=adapt_reply(spoken, after_hours=self.after_hours_wording, writes_queued=bool(queued)),
            guards_fired=tuple(self.fired),
            bypass_signals=self.facts.signals,
        )
