"""The pure, synchronous core of the pipeline: one call's state machine.

Everything the pipeline decides lives here, with no I/O and no clock (``now`` is passed in), so every
path of a call can be tested in microseconds and replayed exactly. The Faust agent is thin wiring
around two functions:

- ``on_event(state, event, practice, now)`` for a call event from the telephony side, and
- ``on_result(state, result, practice, now)`` for the outcome of the ModMed work the core asked for.

Both return a ``Step``: the next state, at most one piece of ``Work`` for the dispatcher (the shell
runs it and feeds the result back), and the ``Output``s to publish (reply, audit records, review-queue
entries). A turn of the call is therefore a short loop: event → work → result → work → … → reply.

Why one work item at a time: each result can change what comes next (a patient search decides whether
flags are read; a taken slot means searching again), and the guard's decision for the turn is kept in
the state so every step of the turn acts on the same decision.

PHI (caller number, name, date of birth, the caller's words) is held in the state only while the call
lives: ``call_ended`` replaces the state by an ``ended`` marker without PHI; the state of an abandoned
call is purged by the TTL timer (``streams.retention``).

The modules, each importing only those above it: ``work`` (work and results), ``state``, ``protocol``
(steps and outputs), ``audits`` (the records practices reconcile against), ``replies``, ``review_queue``,
``tasks``, ``booking``, ``registration``, ``turn`` (the guards' decision carried out), ``events`` and
``results``. This package exposes what the shell, the review queue and the tools use.
"""

from streams.callflow.audits import dialogue_path, dropped_audit, expiry_audit
from streams.callflow.events import on_event
from streams.callflow.protocol import (
    DROPPED_DETAIL,
    AuditOut,
    CallFlowError,
    DropReason,
    Output,
    ReplyOut,
    ReviewOut,
    Step,
)
from streams.callflow.replies import REPLY_NAMESPACE, awaits_reply, interim_reply, interim_reply_for, reply_id_for
from streams.callflow.results import on_result
from streams.callflow.review_queue import CS_REQUEST_PARAM, EARLIER_CS_REQUESTS_PARAM, GUARD_REQUEST_PARAM
from streams.callflow.state import (
    CallerIdentity,
    CallPhase,
    CallState,
    Offer,
    PendingIntent,
    SentReply,
    Turn,
    new_state,
)
from streams.callflow.tasks import task_note
from streams.callflow.turn import is_after_hours
from streams.callflow.work import (
    AppointmentChecked,
    AppointmentWritten,
    CancelAppointment,
    ChartFlagsRead,
    CheckAppointment,
    CoverageCreated,
    CreateCoverage,
    CreateTask,
    FoundSlot,
    IntakeSent,
    PatientLookedUp,
    PatientRegistered,
    ReadChartFlags,
    RegisterPatient,
    SearchPatient,
    SearchSlots,
    SendIntake,
    SlotChoice,
    SlotsFound,
    TaskWritten,
    Work,
    WorkFailed,
    WorkResult,
    WriteAppointment,
)

__all__ = [
    "CS_REQUEST_PARAM",
    "DROPPED_DETAIL",
    "EARLIER_CS_REQUESTS_PARAM",
    "GUARD_REQUEST_PARAM",
    "REPLY_NAMESPACE",
    "AppointmentChecked",
    "AppointmentWritten",
    "AuditOut",
    "CallFlowError",
    "CallPhase",
    "CallState",
    "CallerIdentity",
    "CancelAppointment",
    "ChartFlagsRead",
    "CheckAppointment",
    "CoverageCreated",
    "CreateCoverage",
    "CreateTask",
    "DropReason",
    "FoundSlot",
    "IntakeSent",
    "Offer",
    "Output",
    "PatientLookedUp",
    "PatientRegistered",
    "PendingIntent",
    "ReadChartFlags",
    "RegisterPatient",
    "ReplyOut",
    "ReviewOut",
    "SearchPatient",
    "SearchSlots",
    "SendIntake",
    "SentReply",
    "SlotChoice",
    "SlotsFound",
    "Step",
    "TaskWritten",
    "Turn",
    "Work",
    "WorkFailed",
    "WorkResult",
    "WriteAppointment",
    "awaits_reply",
    "dialogue_path",
    "dropped_audit",
    "expiry_audit",
    "interim_reply",
    "interim_reply_for",
    "is_after_hours",
    "new_state",
    "on_event",
    "on_result",
    "reply_id_for",
    "task_note",
]
