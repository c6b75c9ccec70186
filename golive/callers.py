"""Sandbox patients for the catalogue's callers, by chart state, one per scenario.

The harness builds the same deterministic world the sandbox serves (same mirror, seed, size and anchor
date) and reads each patient's compliance flags, PDMP checks and appointments from it, so a scenario
asking for an 'aberrant-uds' caller gets a patient whose chart says exactly that. Only patients whose
family name and birth date identify one chart are used (the voice agent's search must match them), and
no patient serves two scenarios: each call's Appointments and Tasks are its own.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from golive.catalogue import CallerKind
from sandbox.vocabulary import COMPLIANCE_SYSTEM, PDMP_CHECK_CODE, VISIT_REASON_SYSTEM
from sandbox.world import Tenant
from devkit.cast import MOVABLE_VISITS, Caller

Flags = Mapping[str, str | None]
"""Compliance flag code → its value code (agreement status, restriction) or None."""


@dataclass(frozen=True, slots=True)
class Chart:
    caller: Caller
    flags: Flags
    restrictions: frozenset[str]
    pdmp_checked: bool
    upcoming: tuple[str, str] | None
    """A booked, movable appointment at least two days ahead: (id, visit reason)."""
    appointment_ids: frozenset[str]


def _chronic(chart: Chart, agreement: str, *, aberrant: bool = False, uds_due: bool = False) -> bool:
    """Chronic opioid with this agreement status, no restriction, and exactly the UDS flags asked for (each
    flag adds its own task, so a scenario's expected tasks hold only for the chart it names)."""
    return ("chronic-opioid" in chart.flags and chart.flags.get("opioid-agreement") == agreement
            and not chart.restrictions and ("aberrant-uds" in chart.flags) == aberrant
            and ("uds-due" in chart.flags) == uds_due)


def _restricted(chart: Chart, restriction: str) -> bool:
    return chart.restrictions == {restriction} and not {"aberrant-uds", "uds-due"} & set(chart.flags)


FITS: dict[CallerKind, Callable[[Chart], bool]] = {
    CallerKind.PLAIN: lambda c: not c.flags and not c.restrictions,
    CallerKind.CHRONIC_ACTIVE: lambda c: _chronic(c, "active"),
    CallerKind.CHRONIC_ACTIVE_PDMP: lambda c: _chronic(c, "active") and c.pdmp_checked,
    CallerKind.CHRONIC_EXPIRED: lambda c: _chronic(c, "expired"),
    CallerKind.CHRONIC_VIOLATED: lambda c: _chronic(c, "violated"),
    CallerKind.ABERRANT_UDS: lambda c: _chronic(c, "active", aberrant=True),
    CallerKind.UDS_DUE: lambda c: _chronic(c, "active", uds_due=True),
    CallerKind.NO_REFILL_REQUESTS: lambda c: _restricted(c, "no-refill-requests"),
    CallerKind.NO_SCHEDULING: lambda c: _restricted(c, "no-scheduling"),
    CallerKind.NO_PHONE_REQUESTS: lambda c: "no-phone-requests" in c.restrictions,  # rare: any chart with it
    CallerKind.WITH_APPOINTMENT: lambda c: not c.flags and not c.restrictions and c.upcoming is not None,
}


class CallerPool:
    """The practice's identifiable patients; ``take`` hands each out once."""

    def __init__(self, tenant: Tenant, now: datetime | None = None) -> None:
        self.charts = _charts(tenant, now or datetime.now(UTC))
        self._used: set[str] = set()
        self._strangers = _strangers()

    def take(self, kind: CallerKind) -> Chart | None:
        """An unused patient of this kind (None: the mirror's practice has no more of them)."""
        if kind is CallerKind.UNKNOWN:
            return next(self._strangers)
        fits = FITS[kind]
        for chart in self.charts:
            if chart.caller.patient_id not in self._used and fits(chart):
                self._used.add(chart.caller.patient_id)
                return chart
        return None

    def other_patients_appointment(self) -> str | None:
        """An appointment of a patient no scenario calls as (for 'not your appointment')."""
        for chart in reversed(self.charts):
            if chart.caller.patient_id not in self._used and chart.upcoming is not None:
                self._used.add(chart.caller.patient_id)
                return chart.upcoming[0]
        return None


def _strangers() -> Iterator[Chart]:
    """Callers no chart matches: invented names the generator never uses."""
    number = 0
    while True:
        number += 1
        caller = Caller(patient_id="", family=f"Zzgolive{number:04d}", given="Stranger",
                        birth_date=f"1961-0{1 + number % 9}-1{number % 10}", phone=f"+1555555{number % 10000:04d}")
        yield Chart(caller, {}, frozenset(), False, None, frozenset())


def _reference_id(reference: Any) -> str:
    return str(reference or "").rsplit("/", 1)[-1]


def _charts(tenant: Tenant, now: datetime) -> list[Chart]:
    store = tenant.store
    flags: dict[str, dict[str, str | None]] = defaultdict(dict)
    restrictions: dict[str, set[str]] = defaultdict(set)
    for flag in store.all_of("Flag"):
        if flag.get("status") != "active":
            continue
        patient = _reference_id(flag.get("subject", {}).get("reference"))
        code = next((c.get("code") for c in flag.get("code", {}).get("coding", []) if c.get("system") == COMPLIANCE_SYSTEM), None)
        value = next((e.get("valueCode") for e in flag.get("extension", []) if "valueCode" in e), None)
        if code == "phone-request-restriction" and value:
            restrictions[patient].add(value)
        elif code:
            flags[patient][str(code)] = value
    pdmp = {_reference_id(o.get("subject", {}).get("reference")) for o in store.all_of("Observation")
            if any(c.get("code") == PDMP_CHECK_CODE for c in o.get("code", {}).get("coding", []))}
    appointments: dict[str, list[dict]] = defaultdict(list)
    for appointment in store.all_of("Appointment"):
        for participant in appointment.get("participant", []):
            reference = str(participant.get("actor", {}).get("reference", ""))
            if reference.startswith("Patient/"):
                appointments[_reference_id(reference)].append(appointment)
    patients = [p for p in store.all_of("Patient") if p.get("active", True)]
    identity = Counter((p["name"][0]["family"].casefold(), p["birthDate"]) for p in patients)
    charts = []
    for patient in patients:
        if identity[(patient["name"][0]["family"].casefold(), patient["birthDate"])] != 1:
            continue
        phone = next((t["value"] for t in patient.get("telecom", []) if t.get("system") == "phone"), "+15555550100")
        caller = Caller(patient["id"], patient["name"][0]["family"], patient["name"][0]["given"][0],
                        patient["birthDate"], phone)
        own = appointments.get(patient["id"], [])
        charts.append(Chart(
            caller=caller,
            flags=dict(flags.get(patient["id"], {})),
            restrictions=frozenset(restrictions.get(patient["id"], ())),
            pdmp_checked=patient["id"] in pdmp,
            upcoming=_movable(own, now),
            appointment_ids=frozenset(a["id"] for a in own),
        ))
    return charts


def _movable(appointments: list[dict], now: datetime) -> tuple[str, str] | None:
    for appointment in sorted(appointments, key=lambda a: str(a.get("start"))):
        if appointment.get("status") != "booked":
            continue
        reason = next((c.get("code") for c in appointment.get("appointmentType", {}).get("coding", [])
                       if c.get("system") == VISIT_REASON_SYSTEM), None)
        if reason in MOVABLE_VISITS and datetime.fromisoformat(str(appointment["start"])) > now + timedelta(days=2):
            return str(appointment["id"]), str(reason)
    return None
