"""The EMA port: what the dispatcher runs on EMA screens where ModMed's FHIR API stops for a practice.

``EmaCommands`` implements the four EmaPort operations of connectors/dispatch.py and nothing else:
procedure-template slot search and booking (templates FHIR Slot search does not enumerate), staff
tasks in the PM task queue (practices without FHIR Task create), and the compliance flags read from
the chart, opioid-agreement and PDMP screens (practices without FHIR Flags). There is no prescription
or medication operation, and the screens it may open are the closed set of ``screens.Screen``.

It only runs what the guard decided: a task must be the guard's ``TaskSpec`` for this practice and
call, and a booking must name a slot this layer offered (the guard ranks the offers; an unknown slot id
is refused) for the visit reason the guard decided. Writes are idempotent without EMA's help: before
writing, and whenever the outcome of a submission is unknown, the screens are asked whether the write
is already there (the patient's appointment at that start; the queued task whose note carries the
TaskSpec's idempotency key), so a redelivered event never books or queues twice, while two different
tasks of one call (a nurse task, then a provider escalation) never collapse into one. Results carry the
id ModMed shows over FHIR and the chart deep link.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from datetime import date, datetime, timedelta
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fhir.resources.R4B.slot import Slot

from callstream.references import clean_reference
from callstream.tenants import Practice
from callstream.work_scope import BACKGROUND, WorkScope
from connectors.compliance import ComplianceFlags
from connectors.ema.directory import EmaDirectory, EmaRoom
from connectors.ema.errors import (
    EmaConflictError,
    EmaError,
    EmaInvalidCommand,
    EmaScreenError,
    EmaUnavailableError,
    EmaVisitReasonMismatch,
)
from connectors.ema.keeper import EmaSessionKeeper
from connectors.ema.page import EmaPage, SessionEnded
from connectors.ema.results import EmaWriteResult
from connectors.ema.screens import (
    FHIR_ID,
    Screen,
    ScreenValueError,
    read_agreement_status,
    read_id,
    read_optional_date,
    read_optional_instant,
    read_phone_restrictions,
    read_yes_no,
)
from connectors.ema.session import EmaSessions
from connectors.errors import InvalidRequestError
from connectors.preconditions import expected_reason, require_write_phase
from connectors.slot_offers import SlotOffer
from connectors.vocabulary import OCCUPYING_APPOINTMENT_STATUSES, VISIT_REASON_SYSTEM
from guards.model import AgreementStatus, TaskAudience, TaskKind, TaskReason, TaskSpec, VisitReason

R = TypeVar("R")

MAX_SEARCH_DAYS = 31
MAX_NOTE_CHARS = 2000
OFFER_TTL_S = 3600.0
MAX_CACHED_OFFERS = 10_000
CALL_REFERENCE = re.compile(r"^[A-Za-z0-9._:\-]{1,100}\Z")
"""What the PM task queue accepts as a call reference (the FHIR Task identifier of system call-id)."""
NOTE_TEXT = re.compile(r"^[^\x00-\x08\x0b-\x1f\x7f]*\Z")
TASK_KEY_LINE = "Callstream task key: "
"""The note's last line: the TaskSpec's idempotency key, the only thing that tells two tasks of one call apart."""
SLOT_LABEL = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2}) (.+)\Z")
EMA_SCHEDULE_SYSTEM = "https://callstream.dev/fhir/NamingSystem/ema-schedule"
"""EMA's slot list names a provider and a room, not a FHIR Schedule: offers identify the schedule by
this logical key (``{practitioner_id}:{location_id}``) instead of a FHIR reference."""

TASK_KIND_CODES: dict[TaskKind, str] = {
    TaskKind.PROVIDER_REFILL_REVIEW: "refill-request",
    TaskKind.PROVIDER_CONTROLLED_SUBSTANCE_REVIEW: "provider-review",
    TaskKind.CLINICAL_TEAM_REVIEW: "clinical-review",
    TaskKind.CS_COORDINATOR_UDS: "uds-scheduling",
    TaskKind.PRIOR_AUTH_FOLLOWUP: "prior-auth-followup",
    TaskKind.PREOP_CLEARANCE: "preop-clearance",
    TaskKind.FRONT_DESK_MESSAGE: "general",
}
"""Guard task kind → PM task-queue kind (the FHIR Task.code the queue writes)."""
AGREEMENT_RENEWAL_REASONS = frozenset({TaskReason.AGREEMENT_EXPIRED, TaskReason.AGREEMENT_NOT_ON_FILE})
AUDIENCE_ROLES: dict[TaskAudience, tuple[str, ...]] = {
    TaskAudience.PROVIDER: ("interventionalist", "advanced-practice-provider"),
    TaskAudience.CLINICAL_TEAM: ("nurse",),
    TaskAudience.CS_COORDINATOR: ("controlled-substance-coordinator",),
    TaskAudience.FRONT_DESK: ("scheduler",),
}
"""Who works each audience's tasks, by the staff role the PM queue shows, in order of preference."""

_LABELS = "elements => elements.map(e => [e.getAttribute('data-testid') || '', e.textContent || ''])"
_OPTIONS = "elements => elements.map(e => [e.getAttribute('value') || '', e.textContent || ''])"
_ROWS = (
    "elements => elements.map(e => [e.getAttribute('data-testid') || '',"
    " ...Array.from(e.querySelectorAll('td')).map(td => td.textContent || '')])"
)
_TASK_ROWS = (
    "elements => elements.map(e => [e.getAttribute('data-testid') || '',"
    " ...['task-kind', 'task-assignee', 'task-patient', 'task-call-ref', 'task-note'].map("
    "id => (e.querySelector(`[data-testid=\"${id}\"]`) || {}).textContent || '')])"
)


def task_kind_code(task: TaskSpec) -> str:
    """The PM queue kind for a guard task: agreement renewals have their own queue kind."""
    if task.kind is TaskKind.CLINICAL_TEAM_REVIEW and task.reason in AGREEMENT_RENEWAL_REASONS:
        return "agreement-renewal"
    return TASK_KIND_CODES[task.kind]


class EmaCommands:
    """EmaPort over the EMA / ModMed PM screens (see the module docstring)."""

    def __init__(
        self,
        sessions: EmaSessions,
        directory: EmaDirectory,
        *,
        task_assignees: Mapping[str, Mapping[TaskAudience, str]] | None = None,
    ) -> None:
        """``task_assignees`` pins a practitioner per practice and audience (e.g. the provider pool that
        works refill requests); without a pin the first staff member with the audience's role is used."""
        self._sessions = sessions
        self._directory = directory
        self._assignees = {pid: dict(pins) for pid, pins in (task_assignees or {}).items()}
        self._offers: OrderedDict[tuple[str, str], tuple[float, SlotOffer]] = OrderedDict()

    # ------------------------------------------------------------------------------ booking

    async def search_template_slots(
        self, practice: Practice, *, visit_reason: VisitReason, date_from: date, date_to: date,
        patient_id: str | None = None, scope: WorkScope = BACKGROUND,
    ) -> list[SlotOffer]:
        """Free slots of a procedure template, day by day from the EMA booking screen.

        ``patient_id`` is the chart the booking is for; EMA screens that only list slots for a chosen
        patient (the sandbox's) need it. ``scope`` bounds the FHIR reads that name providers and rooms.
        """
        reason = _visit_reason(practice, visit_reason)
        days = _days(practice, date_from, date_to)
        if patient_id is not None:
            _screen_id(practice, patient_id, "Patient")
        zone = _zone(practice)
        providers = await self._directory.providers(practice, scope=scope)
        rooms = await self._directory.rooms(practice, scope=scope)

        async def search(keeper: EmaSessionKeeper, page: EmaPage) -> list[SlotOffer]:
            await self._open_booking(keeper, page, reason)
            offers: list[SlotOffer] = []
            for day in days:
                async with keeper.step("find_slots", page):
                    await self._find_slots(page, reason, day, patient_id)
                    offers.extend(await self._offers_on_screen(page, practice, reason, day, zone, providers, rooms))
            return offers

        offers = await self._run(practice, search)
        for offer in offers:
            self._remember(practice, offer)
        return offers

    async def book_template(
        self,
        practice: Practice,
        *,
        call_id: str,
        patient_id: str,
        slot_id: str,
        expected_visit_reason: VisitReason | None = None,
    ) -> EmaWriteResult:
        """Book a slot this layer offered (and the guard ranked) on the procedure-template booking screen.

        ``expected_visit_reason`` is the guard's decision: an offer of another template is refused with
        EmaVisitReasonMismatch before any screen is opened.
        """
        require_write_phase(practice, "Appointment")
        _call_reference(practice, call_id)
        _screen_id(practice, patient_id, "Patient")
        _screen_id(practice, slot_id, "Slot")
        try:
            expected = expected_reason(practice, expected_visit_reason)
        except InvalidRequestError as exc:
            raise EmaInvalidCommand(str(exc.args[0]), practice_id=practice.practice_id, resource_type="Slot") from None
        offer = self._offered(practice, slot_id)
        if expected is not None and offer.visit_reason is not expected:
            raise EmaVisitReasonMismatch(
                f"the slot is for {offer.visit_reason.value}, the guard decided {expected.value}",
                practice_id=practice.practice_id, resource_type="Slot",
            )
        day = offer.start.astimezone(_zone(practice)).date()

        async def book(keeper: EmaSessionKeeper, page: EmaPage) -> EmaWriteResult:
            await self._open_booking(keeper, page, offer.visit_reason)
            async with keeper.step("find_slots", page):
                await self._find_slots(page, offer.visit_reason, day, patient_id)
                free = await page.has(f"slot-radio-{slot_id}")
            if not free:
                return await self._booked_already(keeper, page, practice, patient_id, offer, None)
            try:
                async with keeper.step("book", page):
                    await page.check(f"slot-radio-{slot_id}")
                    await page.submit("book-submit")
                    await page.one("booking-confirmation")
                    appointment_id = await page.read("booking-appointment-id", read_id)
                    if await page.read("booking-start", read_optional_instant) != offer.start:
                        raise EmaScreenError("EMA confirmed another start time", practice_id=practice.practice_id)
            except (EmaConflictError, EmaUnavailableError) as failure:
                return await self._booked_already(keeper, page, practice, patient_id, offer, failure)
            return EmaWriteResult("Appointment", appointment_id, practice.chart_deep_link(patient_id))

        return await self._run(practice, book)

    # -------------------------------------------------------------------------- staff tasks

    async def create_staff_task(self, practice: Practice, *, call_id: str, task: TaskSpec, note: str) -> EmaWriteResult:
        """Queue the guard's task in the PM task queue for the audience's staff (refill → provider,
        UDS due → controlled-substance coordinator, PA follow-up, pre-op clearance, ...)."""
        require_write_phase(practice, "Task")
        if not isinstance(task, TaskSpec):
            raise EmaInvalidCommand("a staff task must be the guard's TaskSpec", practice_id=practice.practice_id)
        if task.practice_id != practice.practice_id or task.call_id != call_id:
            raise EmaInvalidCommand(
                "the TaskSpec was decided for another practice or call", practice_id=practice.practice_id,
                resource_type="Task",
            )
        _call_reference(practice, call_id)
        if task.patient_id is None:
            raise EmaInvalidCommand(
                "the PM task queue needs the patient's chart id", practice_id=practice.practice_id, resource_type="Task"
            )
        patient_id = _screen_id(practice, task.patient_id, "Patient")
        body = _task_note(practice, note, task)
        kind = task_kind_code(task)
        key = task.idempotency_key

        async def create(keeper: EmaSessionKeeper, page: EmaPage) -> EmaWriteResult:
            async with keeper.step("open_task_queue", page):
                await page.open(Screen.TASK_QUEUE)
                existing = await self._queued_task(page, call_id, key, patient_id)
                if existing is not None:
                    return EmaWriteResult("Task", existing, practice.chart_deep_link(patient_id))
                if not await page.has(f"task-kind-option-{kind}"):
                    raise EmaScreenError(
                        f"the PM task queue offers no {kind} task kind", practice_id=practice.practice_id
                    )
                assignee = await self._assignee(page, practice, task.audience)
            try:
                async with keeper.step("create_task", page):
                    await page.select("task-kind-select", kind)
                    await page.select("task-assignee-select", assignee)
                    await page.fill("task-patient-input", patient_id)
                    await page.fill("task-call-ref-input", call_id)
                    await page.select("task-priority-select", "routine")
                    await page.fill("task-note-input", body)
                    await page.submit("task-submit")
                    task_id = await page.read("task-created-id", read_id)
                    await page.one(f"task-row-{task_id}")
            except EmaUnavailableError as failure:
                async with keeper.step("verify_task", page):
                    await page.open(Screen.TASK_QUEUE)
                    landed = await self._queued_task(page, call_id, key, patient_id)
                if landed is None:
                    raise failure
                task_id = landed
            return EmaWriteResult("Task", task_id, practice.chart_deep_link(patient_id))

        return await self._run(practice, create)

    # ----------------------------------------------------------------------- compliance read

    async def read_compliance(self, practice: Practice, patient_id: str) -> ComplianceFlags:
        """Routing flags from the chart, opioid-agreement and PDMP screens.

        From the PDMP screen only the last-check timestamp element is read; the report on that screen
        never leaves the browser (and is removed before any evidence screenshot).
        """
        _screen_id(practice, patient_id, "Patient")

        async def read(keeper: EmaSessionKeeper, page: EmaPage) -> ComplianceFlags:
            async with keeper.step("read_chart", page):
                await page.open(Screen.CHART, patient_id=patient_id)
                if await page.read("patient-id", read_id) != patient_id:
                    raise EmaScreenError("EMA opened another chart", practice_id=practice.practice_id)
                chronic = await page.read("chart-chronic-opioid", read_yes_no)
                last_refill = await page.read("chart-last-refill", read_optional_date)
                restrictions = await page.read("chart-phone-restriction", read_phone_restrictions)
                aberrant_uds = await page.read("chart-aberrant-uds", read_yes_no)
                uds_due = await page.read("chart-uds-due", read_yes_no)
            async with keeper.step("read_agreement", page):
                await page.open(Screen.OPIOID_AGREEMENT, patient_id=patient_id)
                agreement = await page.read("agreement-status", read_agreement_status)
                renewal = await page.read("agreement-renewal-date", read_optional_date)
            async with keeper.step("read_pdmp", page):
                await page.open(Screen.PDMP, patient_id=patient_id)
                pdmp_checked = await page.read("pdmp-last-checked", read_optional_instant)
            return ComplianceFlags(
                patient_id=patient_id,
                agreement_status=agreement,
                agreement_renewal_due=renewal if agreement is not AgreementStatus.NONE else None,
                chronic_opioid=chronic,
                last_refill_date=last_refill if chronic else None,
                aberrant_uds=aberrant_uds,
                uds_due=uds_due,
                pdmp_last_checked=pdmp_checked,
                phone_restrictions=restrictions,
            )

        return await self._run(practice, read)

    # ----------------------------------------------------------------------------- internals

    async def _run(self, practice: Practice, command: Callable[[EmaSessionKeeper, EmaPage], Awaitable[R]]) -> R:
        """Run a command on a lent page; a form EMA bounced to the login screen runs once more after the re-login."""
        keeper = self._sessions.keeper(practice)
        async with keeper.page() as page:
            try:
                return await command(keeper, page)
            except SessionEnded:
                try:
                    return await command(keeper, page)
                except SessionEnded:
                    raise EmaScreenError(
                        "EMA ended the session twice during one command", practice_id=practice.practice_id
                    ) from None

    async def _open_booking(self, keeper: EmaSessionKeeper, page: EmaPage, reason: VisitReason) -> None:
        async with keeper.step("open_booking", page):
            await page.open(Screen.BOOKING)
            if not await page.has(f"template-option-{reason.value}"):
                raise EmaInvalidCommand(
                    f"the practice has no {reason.value} procedure template",
                    practice_id=keeper.practice_id,
                )

    @staticmethod
    async def _find_slots(page: EmaPage, reason: VisitReason, day: date, patient_id: str | None) -> None:
        """The booking screen's "Find slots" (a GET form): its result page, opened by its URL."""
        query = {"template": reason.value, "date": day.isoformat()}
        if patient_id is not None:
            query = {"patient_id": patient_id, **query}
        await page.open(Screen.BOOKING, query=query)
        await page.one("booking-slot-list")

    @staticmethod
    async def _offers_on_screen(
        page: EmaPage,
        practice: Practice,
        reason: VisitReason,
        day: date,
        zone: ZoneInfo,
        providers: Mapping[str, str | None],
        rooms: Mapping[str, EmaRoom | None],
    ) -> list[SlotOffer]:
        offers = []
        for testid, label in _pairs(practice, await page.elements("slot-option-", _LABELS), "slot list"):
            slot_id = _screen_value(practice, testid.removeprefix("slot-option-"), read_id, "slot-option")
            text = " ".join(label.split())
            match = SLOT_LABEL.match(text)
            if match is None:
                raise EmaScreenError("a slot label is unreadable", practice_id=practice.practice_id)
            try:
                start = datetime.combine(day, datetime.strptime(f"{match[1]}:{match[2]}", "%H:%M").time(), zone)
                end = datetime.combine(day, datetime.strptime(f"{match[3]}:{match[4]}", "%H:%M").time(), zone)
            except ValueError:
                raise EmaScreenError("a slot label has an unreadable time", practice_id=practice.practice_id) from None
            practitioner_id, provider_label, room = _slot_actors(practice, match[5], providers, rooms)
            if end <= start:
                raise EmaScreenError("a slot label ends before it starts", practice_id=practice.practice_id)
            schedule_key = f"{practitioner_id}:{room.location_id}"
            coding = {"system": VISIT_REASON_SYSTEM, "code": reason.value}
            slot = Slot.model_validate({
                "resourceType": "Slot",
                "id": slot_id,
                "status": "free",
                "schedule": {
                    "identifier": {"system": EMA_SCHEDULE_SYSTEM, "value": schedule_key},
                    "display": f"{provider_label}, {room.name}",
                },
                "start": start.isoformat(),
                "end": end.isoformat(),
                "appointmentType": {"coding": [coding]},
                "serviceType": [{"coding": [coding]}],
            })
            offers.append(SlotOffer(
                practice_id=practice.practice_id,
                slot=slot,
                visit_reason=reason,
                schedule_id=schedule_key,
                practitioner_id=practitioner_id,
                practitioner_name=provider_label,
                location_id=room.location_id,
                location_name=room.name,
                room_kind=room.kind,
                equipment=room.equipment,
            ))
        return offers

    async def _booked_already(
        self,
        keeper: EmaSessionKeeper,
        page: EmaPage,
        practice: Practice,
        patient_id: str,
        offer: SlotOffer,
        failure: EmaError | None,
    ) -> EmaWriteResult:
        """The slot is gone or the booking's outcome is unknown: our earlier booking, or a real conflict?"""
        async with keeper.step("verify_booking", page):
            await page.open(Screen.CHART, patient_id=patient_id)
            rows = _rows(practice, await page.elements("chart-appointment-", _ROWS), 3)
        for testid, start_text, _visit, status in rows:
            appointment_id = _screen_value(practice, testid.removeprefix("chart-appointment-"), read_id, "appointment")
            start = _screen_value(practice, start_text, read_optional_instant, "appointment start")
            if start == offer.start and " ".join(status.split()) in OCCUPYING_APPOINTMENT_STATUSES:
                return EmaWriteResult("Appointment", appointment_id, practice.chart_deep_link(patient_id))
        if failure is not None:
            raise failure
        raise EmaConflictError(
            "the slot is no longer free", practice_id=practice.practice_id, resource_type="Slot", status=409
        )

    @staticmethod
    async def _queued_task(page: EmaPage, call_id: str, key: str, patient_id: str) -> str | None:
        """The task already queued for this TaskSpec (same idempotency key: a redelivered event), if any.

        Call and kind alone do not identify a task: one call may queue a nurse task and later a provider
        escalation, or two clinical-team tasks for different reasons.
        """
        practice = page.practice
        key_line = f"{TASK_KEY_LINE}{key}"
        for testid, _kind, _assignee, row_patient, row_call, row_note in _rows(
            practice, await page.elements("task-row-", _TASK_ROWS), 5, max_cell_chars=MAX_NOTE_CHARS
        ):
            if (row_call.strip(), row_patient.strip()) == (call_id, patient_id) and key_line in (
                line.strip() for line in row_note.splitlines()
            ):
                return _screen_value(practice, testid.removeprefix("task-row-"), read_id, "task row")
        return None

    async def _assignee(self, page: EmaPage, practice: Practice, audience: TaskAudience) -> str:
        """The practitioner the audience's tasks go to: a pinned one, else the first with the audience's role."""
        options = _pairs(practice, await page.elements("task-assignee-option-", _OPTIONS), "assignee list")
        pinned = self._assignees.get(practice.practice_id, {}).get(audience)
        if pinned is not None:
            if pinned not in {value for value, _ in options}:
                raise EmaScreenError(
                    f"the pinned {audience.value} assignee is not in the PM task queue",
                    practice_id=practice.practice_id,
                )
            return pinned
        roles = {value: _role(text) for value, text in options}
        for role in AUDIENCE_ROLES[audience]:
            for value, staff_role in roles.items():
                if staff_role == role and FHIR_ID.match(value):
                    return value
        raise EmaScreenError(
            f"the PM task queue lists nobody for the {audience.value} audience", practice_id=practice.practice_id
        )

    def _remember(self, practice: Practice, offer: SlotOffer) -> None:
        key = (practice.practice_id, offer.slot_id)
        self._offers[key] = (time.monotonic(), offer)
        self._offers.move_to_end(key)
        while len(self._offers) > MAX_CACHED_OFFERS:
            self._offers.popitem(last=False)

    def _offered(self, practice: Practice, slot_id: str) -> SlotOffer:
        entry = self._offers.get((practice.practice_id, slot_id))
        if entry is None or time.monotonic() - entry[0] > OFFER_TTL_S:
            raise EmaInvalidCommand(
                "the slot was not offered by an EMA template search of this practice (search again)",
                practice_id=practice.practice_id, resource_type="Slot",
            )
        return entry[1]


def _visit_reason(practice: Practice, visit_reason: object) -> VisitReason:
    try:
        return VisitReason(visit_reason)
    except ValueError:
        raise EmaInvalidCommand("not a visit reason", practice_id=practice.practice_id, resource_type="Slot") from None


def _days(practice: Practice, date_from: object, date_to: object) -> list[date]:
    if (
        not isinstance(date_from, date) or not isinstance(date_to, date)
        or isinstance(date_from, datetime) or isinstance(date_to, datetime)
    ):
        raise EmaInvalidCommand("date_from and date_to must be dates", practice_id=practice.practice_id)
    span = (date_to - date_from).days
    if span < 0 or span >= MAX_SEARCH_DAYS:
        raise EmaInvalidCommand(
            f"a template slot search covers 1 to {MAX_SEARCH_DAYS} days, in order", practice_id=practice.practice_id
        )
    return [date_from + timedelta(days=offset) for offset in range(span + 1)]


def _zone(practice: Practice) -> ZoneInfo:
    try:
        return ZoneInfo(practice.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise EmaInvalidCommand("the practice's time zone is unknown", practice_id=practice.practice_id) from None


def _screen_id(practice: Practice, value: object, resource_type: str) -> str:
    if not isinstance(value, str) or not FHIR_ID.match(value):
        raise EmaInvalidCommand("not a ModMed id", practice_id=practice.practice_id, resource_type=resource_type)
    return value


def _call_reference(practice: Practice, call_id: object) -> str:
    if not isinstance(call_id, str) or not CALL_REFERENCE.match(call_id):
        raise EmaInvalidCommand(
            "the call id is not a PM call reference (1-100 of A-Z a-z 0-9 . _ : -)", practice_id=practice.practice_id
        )
    return call_id


def _task_note(practice: Practice, note: object, task: TaskSpec) -> str:
    """The dispatcher's note plus what the PM screen has no field for: the call context (PDMP: the time
    only) and, last, the TaskSpec's idempotency key that identifies the task on redelivery."""
    if not isinstance(note, str) or not NOTE_TEXT.match(note):
        raise EmaInvalidCommand(
            "the task note must be text without control characters", practice_id=practice.practice_id
        )
    lines = [note.strip()]
    transcript = clean_reference(task.transcript_ref) if task.transcript_ref is not None else None
    if transcript is not None:  # scrubbed like every reference that leaves callstream
        lines.append(f"Transcript reference: {transcript}")
    if task.pdmp_last_checked is not None:
        lines.append(f"PDMP last checked: {task.pdmp_last_checked.isoformat()}")
    lines.append(f"{TASK_KEY_LINE}{task.idempotency_key}")
    body = "\n".join(line for line in lines if line)
    if len(body) > MAX_NOTE_CHARS:
        raise EmaInvalidCommand(
            f"the task note exceeds the PM queue's {MAX_NOTE_CHARS} characters", practice_id=practice.practice_id
        )
    return body


def _role(option_text: str) -> str | None:
    """The staff role in an assignee option "Name, MD (role)"."""
    match = re.search(r"\(([a-z-]{1,60})\)\s*$", option_text)
    return match[1] if match else None


def _slot_actors(
    practice: Practice, text: str, providers: Mapping[str, str | None], rooms: Mapping[str, EmaRoom | None]
) -> tuple[str, str, EmaRoom]:
    """Split "Provider label, Room name" by the known room names (labels themselves contain commas)."""
    for room_name in sorted(rooms, key=len, reverse=True):
        if text.endswith(f", {room_name}"):
            provider_label = text[: -len(room_name) - 2]
            practitioner_id = providers.get(provider_label)
            room = rooms[room_name]
            if practitioner_id is None or room is None:
                break
            return practitioner_id, provider_label, room
    raise EmaScreenError(
        "a slot names a provider or room the practice directory does not know (or knows twice)",
        practice_id=practice.practice_id,
    )


def _pairs(practice: Practice, raw: list[object], what: str) -> list[tuple[str, str]]:
    return [(first, second) for first, second, *_ in _rows(practice, raw, 1, what)]


def _rows(
    practice: Practice, raw: list[object], cells: int, what: str = "table", *, max_cell_chars: int = 1000
) -> list[tuple[str, ...]]:
    """Rows read by a page script, checked for shape: a test id plus at least ``cells`` bounded strings."""
    rows: list[tuple[str, ...]] = []
    for row in raw:
        if (
            not isinstance(row, list) or len(row) < cells + 1
            or not all(isinstance(cell, str) and len(cell) <= max_cell_chars for cell in row)
        ):
            raise EmaScreenError(f"the {what} is malformed", practice_id=practice.practice_id)
        rows.append(tuple(row[: cells + 1]))
    return rows


def _screen_value(practice: Practice, raw: str, reader: Callable[[str, str], R], what: str) -> R:
    try:
        return reader(what, raw)
    except ScreenValueError:
        raise EmaScreenError(f"unreadable {what} on screen", practice_id=practice.practice_id) from None
