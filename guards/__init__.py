"""Pure compliance guards and procedure-aware scheduling rules (stdlib + pydantic, no I/O, no clock).

`decide()` turns a call's context, the recognised intent, the chart's compliance flags and the
practice's go-live phase into a `Decision`; `filter_and_rank()` picks the slots worth offering.
"""

from guards.decision import Decision
from guards.engine import decide
from guards.errors import GuardInputError
from guards.model import (
    AgreementStatus,
    BypassSignal,
    CallContext,
    ChartFlags,
    Command,
    DateRange,
    GoLivePhase,
    GuardName,
    Intent,
    IntentRequest,
    MatchKind,
    Outcome,
    PhoneRestriction,
    TaskAudience,
    TaskKind,
    TaskReason,
    TaskSpec,
    VisitReason,
)
from guards.replies import ReplyTemplate, ReplyValues, after_booking, after_slot_search, render_reply
from guards.scheduling import (
    BlockKind,
    Equipment,
    ProcedureRule,
    RoomKind,
    SlotCandidate,
    SlotRejection,
    filter_and_rank,
    procedure_rule,
    slot_rejections,
)

__all__ = [
    "AgreementStatus",
    "BlockKind",
    "BypassSignal",
    "CallContext",
    "ChartFlags",
    "Command",
    "DateRange",
    "Decision",
    "Equipment",
    "GoLivePhase",
    "GuardInputError",
    "GuardName",
    "Intent",
    "IntentRequest",
    "MatchKind",
    "Outcome",
    "PhoneRestriction",
    "ProcedureRule",
    "ReplyTemplate",
    "ReplyValues",
    "RoomKind",
    "SlotCandidate",
    "SlotRejection",
    "TaskAudience",
    "TaskKind",
    "TaskReason",
    "TaskSpec",
    "VisitReason",
    "after_booking",
    "after_slot_search",
    "decide",
    "filter_and_rank",
    "procedure_rule",
    "render_reply",
    "slot_rejections",
]
