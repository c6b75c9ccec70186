"""Seeded, deterministic generator of realistic interventional pain practices.

Same seed, practice count, patient count and anchor date → byte-identical worlds, so a
regression scenario that names a patient keeps finding that patient. Timestamps are
derived from the anchor date (default: today), never from the wall clock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import re

from sandbox import demographics as demo
from sandbox.profile import (
    CertifiedAccess,
    PracticeProfile,
    ProcedureTemplate,
    Room,
    ScheduleBlock,
    StaffMember,
)
from sandbox.scheduling import SlotBook, SlotInfo
from sandbox.store import ResourceStore, fhir_instant
from sandbox.vocabulary import (
    CALL_REFERENCE_SYSTEM,
    CLINIC_VISIT_REASONS,
    COMPLIANCE_FLAG_CODES,
    COMPLIANCE_SYSTEM,
    EQUIPMENT,
    EQUIPMENT_SYSTEM,
    EXT_AGREEMENT_STATUS,
    EXT_LAST_REFILL_DATE,
    EXT_RESTRICTION,
    EXT_ROOM_EQUIPMENT,
    EXT_STAFF_ROLE,
    EXT_STATE_OF_RECORD,
    INTERPRETATION_SYSTEM,
    LOCATION_PHYSICAL_TYPE_SYSTEM,
    LOINC_SYSTEM,
    NPI_SYSTEM,
    OBSERVATION_CATEGORY_SYSTEM,
    PDMP_CHECK_CODE,
    ROOM_KIND_SYSTEM,
    ROOM_KINDS,
    STAFF_ROLE_SYSTEM,
    STAFF_ROLES,
    TASK_KIND_SYSTEM,
    TASK_KINDS,
    UCUM_SYSTEM,
    UDS_CODE,
    VISIT_REASON_SYSTEM,
    VISIT_REASONS,
)
from sandbox.world import SandboxWorld, Tenant, TenantSettings

# (track, fhir_task_create, fhir_compliance_flags, EMA-only visit reasons, rate limit per minute)
PRACTICE_VARIANTS: tuple[tuple[str, bool, bool, tuple[str, ...], int], ...] = (
    ("proprietary", False, True, ("kyphoplasty",), 1000),
    ("proprietary", True, True, (), 1250),
    ("certified", False, False, ("scs-trial",), 1000),
)

# visit reason, template name, minutes, block, room kinds, equipment, pre-op days, max per block
TEMPLATE_PLAN: tuple[tuple[str, str, int, str, tuple[str, ...], tuple[str, ...], int, int | None], ...] = (
    ("new-patient-consult", "New patient pain consult", 45, "clinic", ("exam-room",), (), 0, 3),
    ("follow-up", "Follow-up visit", 20, "clinic", ("exam-room",), (), 0, None),
    ("medication-management", "Medication management (controlled substance)", 30, "clinic", ("exam-room",), (), 0, None),
    ("agreement-review", "Opioid agreement review", 30, "clinic", ("exam-room",), (), 0, None),
    ("trigger-point", "Trigger-point injection", 20, "clinic", ("exam-room", "procedure-room"), (), 0, None),
    ("esi", "Lumbar epidural steroid injection (fluoro-guided)", 30, "procedure", ("procedure-room",), ("fluoroscopy",), 0, None),
    ("facet-injection", "Facet joint injection / medial branch block", 30, "procedure", ("procedure-room",), ("fluoroscopy",), 0, None),
    ("rfa", "Radiofrequency ablation", 45, "procedure", ("procedure-room",), ("fluoroscopy", "rf-generator"), 0, None),
    ("scs-trial", "Spinal cord stimulator trial", 90, "procedure", ("procedure-room",), ("fluoroscopy",), 14, 1),
    ("kyphoplasty", "Kyphoplasty", 60, "procedure", ("procedure-room",), ("fluoroscopy",), 7, 2),
)

# key, name, kind, equipment
ROOM_PLAN: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("exam1", "Exam Room 1", "exam-room", ()),
    ("exam2", "Exam Room 2", "exam-room", ()),
    ("exam3", "Exam Room 3", "exam-room", ()),
    ("exam4", "Exam Room 4", "exam-room", ()),
    ("proca", "Procedure Room A (fluoro + RF)", "procedure-room", ("fluoroscopy", "rf-generator")),
    ("procb", "Procedure Room B (fluoro)", "procedure-room", ("fluoroscopy",)),
    ("procc", "Procedure Room C (ultrasound)", "procedure-room", ("ultrasound",)),
)

_ALL_CLINIC = tuple(sorted(CLINIC_VISIT_REASONS))
_APP_NP = tuple(r for r in _ALL_CLINIC if r != "trigger-point")
# role, credential, performs (visit reasons)
STAFF_PLAN: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("interventionalist", "MD", _ALL_CLINIC + ("esi", "facet-injection", "rfa", "scs-trial", "kyphoplasty")),
    ("interventionalist", "MD", _ALL_CLINIC + ("esi", "facet-injection", "rfa", "scs-trial")),
    ("interventionalist", "DO", _ALL_CLINIC + ("esi", "facet-injection", "rfa", "kyphoplasty")),
    ("advanced-practice-provider", "NP", _APP_NP),
    ("advanced-practice-provider", "PA-C", _ALL_CLINIC),
    ("controlled-substance-coordinator", "RN", ()),
    ("nurse", "RN", ()),
    ("scheduler", "", ()),
)

AM, PM = (dt.time(8, 0), dt.time(12, 0)), (dt.time(13, 0), dt.time(17, 0))
# staff index, weekdays, half day, block kind, room key  (no room is double-booked)
WEEKLY_PLAN: tuple[tuple[int, tuple[str, ...], tuple[dt.time, dt.time], str, str], ...] = (
    (0, ("mon", "wed", "fri"), AM, "procedure", "proca"),
    (0, ("mon", "wed"), PM, "clinic", "exam1"),
    (0, ("tue", "thu"), AM, "clinic", "exam1"),
    (0, ("tue",), PM, "procedure", "procb"),
    (1, ("mon", "wed"), AM, "clinic", "exam2"),
    (1, ("mon",), PM, "procedure", "proca"),
    (1, ("tue", "thu"), AM, "procedure", "proca"),
    (1, ("tue", "thu"), PM, "clinic", "exam2"),
    (1, ("wed",), PM, "procedure", "procb"),
    (2, ("mon", "tue"), AM, "procedure", "procb"),
    (2, ("mon",), PM, "clinic", "exam3"),
    (2, ("wed", "thu"), AM, "clinic", "exam3"),
    (2, ("wed", "thu"), PM, "procedure", "proca"),
    (2, ("fri",), AM, "clinic", "exam2"),
    (3, ("mon", "tue", "wed", "thu", "fri"), AM, "clinic", "exam4"),
    (3, ("tue", "thu"), PM, "clinic", "exam3"),
    (4, ("mon", "tue", "wed", "thu"), PM, "clinic", "procc"),
    (4, ("tue", "fri"), AM, "clinic", "exam3"),
)

FAKE_PDMP_NOTE = (
    "SYNTHETIC SANDBOX PDMP REPORT - not real data. {prescribers} prescriber(s), {pharmacies} pharmacy(ies) "
    "in the last 6 months; current daily MME {mme}; last fill {fill}."
)


def _rng(seed: int, *labels: object) -> random.Random:
    """An independent stream per purpose, so adding one draw never shifts another's output."""
    return random.Random(hashlib.sha256(":".join(map(str, (seed, *labels))).encode()).digest())


def luhn_npi(rng: random.Random) -> str:
    """A ten-digit NPI with a valid Luhn check digit (prefix 80840, as CMS defines)."""
    body = "1" + "".join(str(rng.randrange(10)) for _ in range(8))
    digits = [int(c) for c in "80840" + body]
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2 == 0:
            digit *= 2
            digit = digit - 9 if digit > 9 else digit
        total += digit
    return body + str((10 - total % 10) % 10)


def _token(rng: random.Random, length: int) -> str:
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
    return "".join(rng.choice(alphabet) for _ in range(length))


def default_templates(ema_only: tuple[str, ...]) -> tuple[ProcedureTemplate, ...]:
    return tuple(
        ProcedureTemplate(
            visit_reason=reason, name=name, duration_minutes=minutes, block=block, room_kinds=kinds,
            equipment=equipment, preop_clearance_days=preop, max_per_block=per_block, ema_only=reason in ema_only,
        )
        for reason, name, minutes, block, kinds, equipment, preop, per_block in TEMPLATE_PLAN
    )


def generate_profile(seed: int, index: int, track: str | None = None) -> PracticeProfile:
    """The practice configuration of the `index`-th seeded practice (optionally forcing its API track)."""
    rng = _rng(seed, "practice", index)
    site_order = _rng(seed, "sites").sample(range(len(demo.PRACTICE_SITES)), len(demo.PRACTICE_SITES))
    stem, city, state, postal, zone, area_codes = demo.PRACTICE_SITES[site_order[index % len(site_order)]]
    firm_number = 1001 + index
    cycle = index // len(demo.PRACTICE_SITES)
    name = stem if cycle == 0 else f"{stem} ({city} {cycle + 1})"
    slug = "".join(re.sub(r"[^a-z0-9]", "", w.lower()) for w in stem.split()[:2])
    prefix = slug if cycle == 0 else f"{slug}{firm_number}"
    variant_track, task_create, compliance, ema_only, rate_limit = PRACTICE_VARIANTS[index % len(PRACTICE_VARIANTS)]
    track = track or variant_track
    practice_id = f"pain-{firm_number}"
    staff = []
    for number, (role, credential, performs) in enumerate(STAFF_PLAN, start=1):
        female = rng.random() < 0.5
        staff.append(
            StaffMember(
                practitioner_id=f"prac-{firm_number}-{number:02d}",
                given=rng.choice(demo.FEMALE_GIVEN if female else demo.MALE_GIVEN),
                family=rng.choice(demo.FAMILY),
                credential=credential,
                role=role,
                npi=luhn_npi(rng),
                performs=performs,
            )
        )
    rooms = tuple(
        Room(location_id=f"loc-{firm_number}-{key}", name=room_name, kind=kind, equipment=equipment)
        for key, room_name, kind, equipment in ROOM_PLAN
    )
    blocks = tuple(
        ScheduleBlock(
            practitioner_id=staff[who].practitioner_id, location_id=f"loc-{firm_number}-{room}",
            weekdays=days, start=half[0], end=half[1], kind=kind,
        )
        for who, days, half, kind, room in WEEKLY_PLAN
    )
    if cycle == 0:
        called = tuple(
            sorted({f"+1{rng.choice(area_codes)}55501{rng.randrange(100):02d}" for _ in range(1 + index % 2)})
        )
    else:  # the 555-01xx range holds 100 numbers an area code: past the first cycle, 555 and the firm number
        called = tuple(sorted(f"+1{area}555{firm_number:04d}" for area in area_codes[: 1 + index % 2]))
    certified = None
    if track == "certified":
        certified = CertifiedAccess(
            client_id=f"callstream-bulk-{firm_number}",
            key_id=f"callstream-{firm_number}-rs384",
            key_label=f"seed={seed}/practice={practice_id}",
        )
    proprietary = track == "proprietary"
    return PracticeProfile(
        practice_id=practice_id,
        firm_number=firm_number,
        name=name,
        firm_url_prefix=prefix,
        track=track,
        timezone=zone,
        city=city,
        state=state,
        postal_code=postal,
        street=f"{rng.randrange(100, 9900)} {rng.choice(demo.STREETS)} {rng.choice(demo.STREET_SUFFIXES)}, Suite {rng.randrange(100, 500)}",
        api_key=f"sbx_{_token(rng, 32)}" if proprietary else None,
        username=f"callstream.{slug}",
        password=_token(rng, 16),
        client_id=f"callstream-{firm_number}" if proprietary else None,
        client_secret=_token(rng, 40) if proprietary else None,
        called_numbers=called,
        fhir_task_create=task_create,
        fhir_compliance_flags=compliance,
        rate_limit_per_minute=rate_limit,
        staff=tuple(staff),
        rooms=rooms,
        templates=default_templates(ema_only),
        blocks=blocks,
        certified=certified,
    )


class _PracticeBuilder:
    """Turns a profile into a populated tenant: directory resources, patients, charts, bookings."""

    def __init__(self, profile: PracticeProfile, seed: int, patients: int, anchor: dt.date) -> None:
        self.profile = profile
        self.seed = seed
        self.patient_count = patients
        self.anchor = anchor
        self.anchor_moment = dt.datetime.combine(anchor, dt.time(6, 0), tzinfo=profile.zone)
        self.store = ResourceStore()
        self.slots = SlotBook(profile, anchor, self.anchor_moment)
        self.firm = profile.firm_number
        self.chronic: list[str] = []
        self.uds_due: list[str] = []
        self.patient_ids: list[str] = []

    def _add(self, resource: dict, days_ago: float) -> None:
        self.store.add(resource, self.anchor_moment - dt.timedelta(days=days_ago))

    def _sequence(self, prefix: str, counters: dict[str, int]) -> str:
        counters[prefix] = counters.get(prefix, 0) + 1
        return f"{prefix}-{counters[prefix]:06d}"

    def build(self) -> tuple[ResourceStore, SlotBook]:
        self._directory()
        counters: dict[str, int] = {}
        self._patients(counters)
        self._appointments(counters)
        self._groups()
        for prefix, used in counters.items():
            self.store.reserve_sequence(prefix, used)
        return self.store, self.slots

    # --- practice directory --------------------------------------------------------------

    def _directory(self) -> None:
        p = self.profile
        address = {"line": [p.street], "city": p.city, "state": p.state, "postalCode": p.postal_code, "country": "US"}
        self._add(
            {
                "resourceType": "Organization", "id": p.organization_id, "active": True, "name": p.name,
                "telecom": [{"system": "phone", "value": n, "use": "work"} for n in p.called_numbers],
                "address": [address],
            },
            400,
        )
        self._add(
            {
                "resourceType": "Location", "id": p.facility_id, "status": "active", "name": p.name, "mode": "instance",
                "physicalType": {"coding": [{"system": LOCATION_PHYSICAL_TYPE_SYSTEM, "code": "bu", "display": "Building"}]},
                "address": address, "managingOrganization": {"reference": f"Organization/{p.organization_id}"},
            },
            400,
        )
        for room in p.rooms:
            self._add(room_resource(p, room), 300)
        for member in p.staff:
            self._add(practitioner_resource(member), 300)
        for schedule in self.slots.schedules.values():
            provider = p.staff_member(schedule.practitioner_id)
            room = p.room(schedule.location_id)
            if provider is None or room is None:
                raise ValueError(f"schedule {schedule.schedule_id} names an unknown provider or room")
            self._add(
                {
                    "resourceType": "Schedule", "id": schedule.schedule_id, "active": True,
                    "serviceType": [
                        {"coding": [{"system": VISIT_REASON_SYSTEM, "code": r, "display": VISIT_REASONS[r]}]}
                        for r in schedule.visit_reasons
                    ],
                    "actor": [
                        {"reference": f"Practitioner/{schedule.practitioner_id}", "display": provider.display_name},
                        {"reference": f"Location/{schedule.location_id}", "display": room.name},
                    ],
                    "planningHorizon": {
                        "start": (self.anchor - dt.timedelta(days=7 * p.weeks_back)).isoformat(),
                        "end": (self.anchor + dt.timedelta(days=7 * p.weeks_ahead - 1)).isoformat(),
                    },
                },
                30,
            )

    # --- patients and their charts ---------------------------------------------------------

    def _patients(self, counters: dict[str, int]) -> None:
        rng = _rng(self.seed, self.profile.practice_id, "patients")
        area_codes = next(s[5] for s in demo.PRACTICE_SITES if s[1] == self.profile.city)
        counters[f"pt-{self.firm}"] = self.patient_count
        for number in range(1, self.patient_count + 1):
            patient_id = f"pt-{self.firm}-{number:06d}"
            self.patient_ids.append(patient_id)
            female = rng.random() < 0.56
            given = [rng.choice(demo.FEMALE_GIVEN if female else demo.MALE_GIVEN)]
            if rng.random() < 0.3:
                given.append(rng.choice(demo.FEMALE_GIVEN if female else demo.MALE_GIVEN))
            family = rng.choice(demo.FAMILY)
            age = int(rng.triangular(24, 92, 60))
            birth = self.anchor - dt.timedelta(days=age * 365 + rng.randrange(365))
            exchange = rng.randrange(200, 9999)
            while exchange in (1212, 4334):
                exchange = rng.randrange(200, 9999)
            telecom = [{"system": "phone", "value": f"+1{rng.choice(area_codes)}555{exchange:04d}", "use": rng.choice(["mobile", "mobile", "home"])}]
            if rng.random() < 0.4:
                telecom.append({"system": "email", "value": f"{given[0].lower()}.{family.lower()}{rng.randrange(10, 99)}@example.com"})
            patient = {
                "resourceType": "Patient", "id": patient_id,
                "identifier": [{
                    "use": "usual",
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                    "system": mrn_system(self.profile.practice_id), "value": f"E{self.firm}{number:05d}",
                }],
                "active": True,
                "name": [{"use": "official", "family": family, "given": given}],
                "telecom": telecom,
                "gender": "female" if female else "male",
                "birthDate": birth.isoformat(),
                "address": [{
                    "use": "home", "line": [f"{rng.randrange(10, 9999)} {rng.choice(demo.STREETS)} {rng.choice(demo.STREET_SUFFIXES)}"],
                    "city": self.profile.city, "state": self.profile.state,
                    "postalCode": self.profile.postal_code[:3] + f"{rng.randrange(100):02d}", "country": "US",
                }],
                "managingOrganization": {"reference": f"Organization/{self.profile.organization_id}"},
            }
            self._add(patient, rng.uniform(1, 900))
            self._coverage(rng, patient_id, counters)
            self._vitals(rng, patient_id, counters)
            if rng.random() < 0.30:
                self._chronic_opioid_chart(rng, patient_id, counters)
            else:
                if rng.random() < 0.01:
                    self._flag(rng, patient_id, "phone-request-restriction", counters,
                               extension=[{"url": EXT_RESTRICTION, "valueCode": "no-scheduling"}])
                if rng.random() < 0.4:
                    self._medication(rng, patient_id, rng.choice(demo.ADJUVANT_REGIMENS), counters)

    def _coverage(self, rng: random.Random, patient_id: str, counters: dict[str, int]) -> None:
        payer = rng.choice(demo.PAYERS)
        self._add(
            {
                "resourceType": "Coverage", "id": self._sequence(f"cov-{self.firm}", counters), "status": "active",
                "beneficiary": {"reference": f"Patient/{patient_id}"},
                "payor": [{"display": payer}],
                "subscriberId": f"{payer[:3].upper().replace(' ', 'X')}{rng.randrange(10**8, 10**9)}",
                "relationship": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "code": "self"}]},
            },
            rng.uniform(1, 400),
        )

    def _vitals(self, rng: random.Random, patient_id: str, counters: dict[str, int]) -> None:
        weight = rng.uniform(52, 135)
        for _ in range(rng.choice((1, 2, 2))):
            days_ago = rng.uniform(3, 300)
            when = fhir_instant(self.anchor_moment - dt.timedelta(days=days_ago))
            readings = (
                ("8867-4", "Heart rate", "vital-signs", rng.randrange(56, 98), "/min", "/min"),
                ("29463-7", "Body weight", "vital-signs", round(weight + rng.uniform(-2, 2), 1), "kg", "kg"),
                ("72514-3", "Pain severity - 0-10 verbal numeric rating [Score] - Reported", "survey", rng.randrange(2, 10), "{score}", "score"),
            )
            for code, display, category, value, ucum, unit in readings:
                self._add(
                    {
                        "resourceType": "Observation", "id": self._sequence(f"obs-{self.firm}", counters), "status": "final",
                        "category": [{"coding": [{"system": OBSERVATION_CATEGORY_SYSTEM, "code": category}]}],
                        "code": {"coding": [{"system": LOINC_SYSTEM, "code": code, "display": display}], "text": display},
                        "subject": {"reference": f"Patient/{patient_id}"},
                        "effectiveDateTime": when,
                        "valueQuantity": {"value": value, "unit": unit, "system": UCUM_SYSTEM, "code": ucum},
                    },
                    days_ago,
                )

    def _flag(self, rng: random.Random, patient_id: str, code: str, counters: dict[str, int], *,
              extension: list[dict] | None = None, period: dict | None = None, days_ago: float | None = None) -> None:
        flag: dict = {
            "resourceType": "Flag", "id": self._sequence(f"flag-{self.firm}", counters),
            "status": "active",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category", "code": "admin"}]}],
            "code": {"coding": [{"system": COMPLIANCE_SYSTEM, "code": code, "display": COMPLIANCE_FLAG_CODES[code]}]},
            "subject": {"reference": f"Patient/{patient_id}"},
        }
        if extension:
            flag["extension"] = extension
        if period:
            flag["period"] = period
        self._add(flag, days_ago if days_ago is not None else rng.uniform(1, 200))

    def _chronic_opioid_chart(self, rng: random.Random, patient_id: str, counters: dict[str, int]) -> None:
        self.chronic.append(patient_id)
        anchor = self.anchor
        last_refill = anchor - dt.timedelta(days=rng.randrange(3, 40))
        self._flag(rng, patient_id, "chronic-opioid", counters,
                   extension=[{"url": EXT_LAST_REFILL_DATE, "valueDate": last_refill.isoformat()}],
                   period={"start": (anchor - dt.timedelta(days=rng.randrange(200, 2500))).isoformat()},
                   days_ago=(anchor - last_refill).days)
        roll = rng.random()
        status = "active" if roll < 0.72 else "expired" if roll < 0.88 else "violated"
        if status == "active":
            signed = anchor - dt.timedelta(days=rng.randrange(5, 360))
            renewal = signed + dt.timedelta(days=365)
        elif status == "expired":
            renewal = anchor - dt.timedelta(days=rng.randrange(1, 150))
            signed = renewal - dt.timedelta(days=365)
        else:
            signed = anchor - dt.timedelta(days=rng.randrange(60, 300))
            renewal = signed + dt.timedelta(days=365)
        self._flag(rng, patient_id, "opioid-agreement", counters,
                   extension=[{"url": EXT_AGREEMENT_STATUS, "valueCode": status}],
                   period={"start": signed.isoformat(), "end": renewal.isoformat()},
                   days_ago=max(0, (anchor - signed).days))
        aberrant = rng.random() < (0.5 if status == "violated" else 0.08)
        if aberrant:
            self._flag(rng, patient_id, "aberrant-uds", counters)
        if rng.random() < 0.22:
            self.uds_due.append(patient_id)
            self._flag(rng, patient_id, "uds-due", counters, days_ago=rng.uniform(0, 20))
        if rng.random() < 0.10:
            restriction = rng.choices(("no-refill-requests", "no-phone-requests", "no-scheduling"), (0.6, 0.25, 0.15))[0]
            self._flag(rng, patient_id, "phone-request-restriction", counters,
                       extension=[{"url": EXT_RESTRICTION, "valueCode": restriction}])
        checked_days = rng.uniform(0, 120)
        self._add(
            {
                "resourceType": "Observation", "id": self._sequence(f"obs-{self.firm}", counters), "status": "final",
                "category": [{"coding": [{"system": OBSERVATION_CATEGORY_SYSTEM, "code": "social-history"}]}],
                "code": {"coding": [{"system": COMPLIANCE_SYSTEM, "code": PDMP_CHECK_CODE, "display": "PDMP check"}]},
                "subject": {"reference": f"Patient/{patient_id}"},
                "effectiveDateTime": fhir_instant(self.anchor_moment - dt.timedelta(days=checked_days)),
                "valueString": "PDMP reviewed",
                "extension": [{"url": EXT_STATE_OF_RECORD, "valueString": self.profile.state}],
                "note": [{"text": FAKE_PDMP_NOTE.format(
                    prescribers=rng.randrange(1, 4), pharmacies=rng.randrange(1, 3), mme=rng.randrange(10, 120, 5),
                    fill=(anchor - dt.timedelta(days=rng.randrange(3, 40))).isoformat())}],
            },
            checked_days,
        )
        for result_number in range(rng.choice((1, 2))):
            latest = result_number == 0
            inconsistent = aberrant and latest
            days_ago = rng.uniform(5, 60) if latest else rng.uniform(90, 300)
            self._add(
                {
                    "resourceType": "Observation", "id": self._sequence(f"obs-{self.firm}", counters), "status": "final",
                    "category": [{"coding": [{"system": OBSERVATION_CATEGORY_SYSTEM, "code": "laboratory"}]}],
                    "code": {"coding": [{"system": COMPLIANCE_SYSTEM, "code": UDS_CODE, "display": "Urine drug screen"}]},
                    "subject": {"reference": f"Patient/{patient_id}"},
                    "effectiveDateTime": fhir_instant(self.anchor_moment - dt.timedelta(days=days_ago)),
                    "valueString": "SYNTHETIC: inconsistent with prescribed therapy" if inconsistent
                    else "SYNTHETIC: consistent with prescribed therapy",
                    "interpretation": [{"coding": [{"system": INTERPRETATION_SYSTEM, "code": "A" if inconsistent else "N"}]}],
                },
                days_ago,
            )
        self._medication(rng, patient_id, rng.choice(demo.CHRONIC_OPIOID_REGIMENS), counters)
        if rng.random() < 0.8:
            self._add(
                {
                    "resourceType": "DocumentReference", "id": self._sequence(f"doc-{self.firm}", counters), "status": "current",
                    "type": {"text": "Opioid treatment agreement (signed)"},
                    "category": [{"text": "agreement"}],
                    "subject": {"reference": f"Patient/{patient_id}"},
                    "date": fhir_instant(dt.datetime.combine(signed, dt.time(10, 0), tzinfo=self.profile.zone)),
                    "content": [{"attachment": {
                        "contentType": "application/pdf", "title": "Signed opioid agreement",
                        "url": f"https://documents.sandbox.invalid/{self.profile.practice_id}/agreement-{patient_id}.pdf",
                    }}],
                },
                max(0, (anchor - signed).days),
            )

    def _medication(self, rng: random.Random, patient_id: str, regimen: str, counters: dict[str, int]) -> None:
        prescriber = rng.choice([m for m in self.profile.staff if m.role == "interventionalist"])
        days_ago = rng.uniform(5, 200)
        self._add(
            {
                "resourceType": "MedicationRequest", "id": self._sequence(f"medrx-{self.firm}", counters),
                "status": "active", "intent": "order",
                "medicationCodeableConcept": {"text": regimen.split(",")[0]},
                "subject": {"reference": f"Patient/{patient_id}"},
                "authoredOn": fhir_instant(self.anchor_moment - dt.timedelta(days=days_ago)),
                "requester": {"reference": f"Practitioner/{prescriber.practitioner_id}"},
                "dosageInstruction": [{"text": regimen.split(",", 1)[1].strip()}],
            },
            days_ago,
        )

    # --- bookings and tasks ----------------------------------------------------------------

    def _appointments(self, counters: dict[str, int]) -> None:
        rng = _rng(self.seed, self.profile.practice_id, "appointments")
        chronic = self.chronic or self.patient_ids
        if not self.patient_ids:
            return
        blocks: dict[str, list[SlotInfo]] = {}
        for slot in sorted(self.slots.slots.values(), key=lambda s: (s.start, s.slot_id)):
            blocks.setdefault(slot.block_key, []).append(slot)
        coordinator = self.profile.coordinator()
        nurse = next((m for m in self.profile.staff if m.role == "nurse"), coordinator)
        for block_slots in blocks.values():
            first = block_slots[0].start
            past = first < self.anchor_moment
            weeks_out = max(0, (first - self.anchor_moment).days // 7)
            fill = 0.75 if past else (0.6, 0.45, 0.3, 0.2, 0.12, 0.08)[min(weeks_out, 5)]
            span = (max(s.end for s in block_slots) - first).total_seconds()
            booked_seconds = 0.0
            candidates = block_slots[:]
            rng.shuffle(candidates)
            for slot in candidates:
                length = (slot.end - slot.start).total_seconds()
                if booked_seconds + length > fill * span or self.slots.conflict(slot) is not None:
                    continue
                if not past and self.slots.timing_problem(slot, self.anchor_moment):
                    continue
                booked_seconds += length
                self._book_generated(rng, counters, slot, past, chronic, nurse)
        for patient_id in self.uds_due[: max(1, len(self.uds_due) // 3)]:
            if coordinator:
                self._task(rng, counters, "uds-scheduling", patient_id, coordinator.practitioner_id,
                           "UDS due per controlled-substance protocol")

    def _book_generated(self, rng: random.Random, counters: dict[str, int], slot: SlotInfo, past: bool,
                        chronic: list[str], nurse: StaffMember | None) -> None:
        needs_chronic = slot.visit_reason in ("medication-management", "agreement-review")
        patient_id = rng.choice(chronic if needs_chronic else self.patient_ids)
        if past:
            status = rng.choices(("fulfilled", "noshow", "cancelled"), (0.85, 0.07, 0.08))[0]
        else:
            status = "cancelled" if rng.random() < 0.05 else "booked"
        appointment_id = self._sequence(f"appt-{self.firm}", counters)
        created_days = (self.anchor_moment - slot.start).days + rng.uniform(2, 40) if past else rng.uniform(0, 30)
        created = self.anchor_moment - dt.timedelta(days=max(created_days, 0.1))
        resource = appointment_resource(appointment_id, slot, patient_id, status, fhir_instant(created))
        updated_days = max((self.anchor_moment - slot.end).days, 0) if past else created_days
        self._add(resource, updated_days)
        if status in ("booked", "fulfilled"):
            self.slots.book(appointment_id, slot, self.anchor_moment)
        if status == "booked" and slot.visit_reason in ("scs-trial", "kyphoplasty") and nurse:
            self._task(rng, counters, "preop-clearance", patient_id, nurse.practitioner_id,
                       f"Pre-op clearance for {VISIT_REASONS[slot.visit_reason]} on {slot.start.date().isoformat()}")
        elif status == "booked" and slot.visit_reason == "rfa" and rng.random() < 0.3 and nurse:
            self._task(rng, counters, "prior-auth-followup", patient_id, nurse.practitioner_id,
                       "Prior authorization pending with payer")

    def _task(self, rng: random.Random, counters: dict[str, int], kind: str, patient_id: str, owner: str, text: str) -> None:
        days_ago = rng.uniform(0, 14)
        self._add(
            {
                "resourceType": "Task", "id": self._sequence(f"task-{self.firm}", counters),
                "status": rng.choice(("requested", "requested", "in-progress")), "intent": "order", "priority": "routine",
                "code": {"coding": [{"system": TASK_KIND_SYSTEM, "code": kind, "display": TASK_KINDS[kind]}]},
                "description": text,
                "for": {"reference": f"Patient/{patient_id}"},
                "owner": {"reference": f"Practitioner/{owner}"},
                "authoredOn": fhir_instant(self.anchor_moment - dt.timedelta(days=days_ago)),
                "identifier": [{"system": CALL_REFERENCE_SYSTEM, "value": f"staff-{rng.randrange(10**6, 10**7)}"}],
            },
            days_ago,
        )

    def _groups(self) -> None:
        for suffix, name, members in (
            ("all-patients", "All active patients", self.patient_ids),
            ("chronic-opioid", "Chronic opioid therapy cohort", self.chronic),
        ):
            self._add(
                {
                    "resourceType": "Group", "id": f"grp-{self.firm}-{suffix}", "type": "person", "actual": True,
                    "name": name, "quantity": len(members),
                    "member": [{"entity": {"reference": f"Patient/{pid}"}} for pid in members],
                },
                1,
            )


def mrn_system(practice_id: str) -> str:
    return f"https://sandbox.callstream.dev/{practice_id}/mrn"


def room_resource(profile: PracticeProfile, room: Room) -> dict:
    """A room as FHIR Location: kind in `type`, each device as a room-equipment extension."""
    return {
        "resourceType": "Location", "id": room.location_id, "status": "active", "name": room.name, "mode": "instance",
        "type": [{"coding": [{"system": ROOM_KIND_SYSTEM, "code": room.kind, "display": ROOM_KINDS[room.kind]}]}],
        "physicalType": {"coding": [{"system": LOCATION_PHYSICAL_TYPE_SYSTEM, "code": "ro", "display": "Room"}]},
        "extension": [
            {"url": EXT_ROOM_EQUIPMENT, "valueCoding": {"system": EQUIPMENT_SYSTEM, "code": item, "display": EQUIPMENT[item]}}
            for item in room.equipment
        ],
        "partOf": {"reference": f"Location/{profile.facility_id}"},
        "managingOrganization": {"reference": f"Organization/{profile.organization_id}"},
    }


def practitioner_resource(member: StaffMember) -> dict:
    resource: dict = {
        "resourceType": "Practitioner", "id": member.practitioner_id, "active": True,
        "identifier": [{"system": NPI_SYSTEM, "value": member.npi}],
        "name": [{"use": "official", "family": member.family, "given": [member.given],
                  **({"suffix": [member.credential]} if member.credential else {})}],
        "extension": [{"url": EXT_STAFF_ROLE, "valueCoding": {
            "system": STAFF_ROLE_SYSTEM, "code": member.role, "display": STAFF_ROLES[member.role]}}],
    }
    if member.credential:
        resource["qualification"] = [{"code": {"text": member.credential}}]
    return resource


def appointment_resource(appointment_id: str, slot: SlotInfo, patient_id: str, status: str, created: str) -> dict:
    reason = {"system": VISIT_REASON_SYSTEM, "code": slot.visit_reason, "display": VISIT_REASONS[slot.visit_reason]}
    return {
        "resourceType": "Appointment", "id": appointment_id, "status": status,
        "serviceType": [{"coding": [reason]}],
        "appointmentType": {"coding": [reason]},
        "start": slot.start.isoformat(), "end": slot.end.isoformat(),
        "minutesDuration": int((slot.end - slot.start).total_seconds() // 60),
        "slot": [{"reference": f"Slot/{slot.slot_id}"}],
        "created": created,
        "participant": [
            {"actor": {"reference": f"Patient/{patient_id}"}, "status": "accepted"},
            {"actor": {"reference": f"Practitioner/{slot.practitioner_id}"}, "status": "accepted"},
            {"actor": {"reference": f"Location/{slot.location_id}"}, "status": "accepted"},
        ],
    }


def build_tenant(profile: PracticeProfile, seed: int, patients: int, anchor: dt.date,
                 access_token_ttl_seconds: int = 3600) -> Tenant:
    store, slots = _PracticeBuilder(profile, seed, patients, anchor).build()
    settings = TenantSettings(
        rate_limit_per_minute=profile.rate_limit_per_minute,
        access_token_ttl_seconds=access_token_ttl_seconds,
        refresh_token_ttl_seconds=24 * 3600,
        ema_lockout_threshold=profile.ema_lockout_threshold,
    )
    return Tenant(profile=profile, store=store, slots=slots, anchor=anchor, settings=settings)


def build_world(
    seed: int = 7,
    practices: int = 3,
    patients_per_practice: int = 1000,
    anchor: dt.date | None = None,
    profiles: list[PracticeProfile] | None = None,
    access_token_ttl_seconds: int = 3600,
    generate_now: int | None = None,
) -> SandboxWorld:
    """Generate `practices` seeded practices (or use the given profiles, e.g. after a mirror).

    The first `generate_now` practices' data is generated before this returns (None: all of them); the
    others' on first use (SandboxWorld.tenant), with the same result.
    """
    if practices < 1 or patients_per_practice < 0:
        raise ValueError("need at least one practice and a non-negative patient count")
    day = anchor or dt.datetime.now(dt.UTC).date()
    chosen = profiles if profiles is not None else [generate_profile(seed, i) for i in range(practices)]

    def generate(profile: PracticeProfile) -> Tenant:
        return build_tenant(profile, seed, patients_per_practice, day, access_token_ttl_seconds)

    world = SandboxWorld(chosen, generate, seed=seed)
    for practice_id in list(world.profiles)[:generate_now]:
        world.tenant(practice_id)
    return world
