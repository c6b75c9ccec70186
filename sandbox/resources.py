"""Reading and searching a tenant's resources, shared by the proprietary and certified tracks.

Visibility rules live here so both tracks apply them identically: a tenant without the
`fhir_compliance_flags` capability exposes neither Flags nor the PDMP/UDS Observations
(those exist only behind its EMA screens), and EMA-only slots are never enumerated.
"""

from __future__ import annotations

import datetime as dt

from sandbox.errors import FhirError
from sandbox.search import Builder, SearchContext, compile_search, date_bounds, parse_paging
from sandbox.store import reference_id
from sandbox.vocabulary import COMPLIANCE_SYSTEM, VISIT_REASON_SYSTEM, VISIT_REASONS
from sandbox.world import Tenant

SLOT_PARAMS = frozenset({"appointment-type", "date", "provider", "location", "schedule", "status", "_format"})


def visible(tenant: Tenant, resource: dict) -> bool:
    if tenant.profile.fhir_compliance_flags:
        return True
    if resource["resourceType"] == "Flag":
        return False
    if resource["resourceType"] == "Observation":
        codings = (resource.get("code") or {}).get("coding") or []
        return not any(c.get("system") == COMPLIANCE_SYSTEM for c in codings)
    return True


def not_found(resource_type: str, resource_id: str) -> FhirError:
    return FhirError(404, f"{resource_type}/{resource_id} was not found")


def read(tenant: Tenant, resource_type: str, resource_id: str, now: dt.datetime) -> dict:
    if resource_type == "Slot":
        slot = tenant.slots.slots.get(resource_id)
        if slot is None or not slot.api_visible:
            raise not_found(resource_type, resource_id)
        return tenant.slots.slot_resource(slot, now)
    resource = tenant.store.get(resource_type, resource_id)
    if resource is None or not visible(tenant, resource):
        raise not_found(resource_type, resource_id)
    return resource


def search(
    tenant: Tenant, spec: dict[str, Builder], resource_type: str, params: dict[str, list[str]]
) -> tuple[list[dict], int, int, int]:
    """Matching resources of one page, the total, and the page's offset and size."""
    count, offset = parse_paging(params)
    predicate = compile_search(spec, resource_type, params, SearchContext(zone=tenant.profile.zone))
    matches = [r for r in _candidates(tenant, resource_type, params) if visible(tenant, r) and predicate(r)]
    return matches[offset : offset + count], len(matches), offset, count


def _candidates(tenant: Tenant, resource_type: str, params: dict[str, list[str]]) -> list[dict]:
    """Use the patient or identifier index when the search names one patient or one identifier (chart
    look-ups and the connector's "did my write land?" checks are the hot path); the predicate still
    applies every parameter to the candidates."""
    for name in ("patient", "beneficiary"):
        values = params.get(name, [])
        if len(values) == 1 and "," not in values[0] and resource_type != "Patient":
            return tenant.store.for_patient(resource_type, reference_id(values[0], "Patient") or values[0])
    identifiers = params.get("identifier", [])
    if len(identifiers) == 1 and "," not in identifiers[0]:
        return tenant.store.with_identifier(resource_type, identifiers[0].rpartition("|")[2])
    return tenant.store.all_of(resource_type)


def _single(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) != 1:
        raise FhirError(400, f"{name} may appear once")
    return values[0]


def search_slots(tenant: Tenant, params: dict[str, list[str]], now: dt.datetime) -> list[dict]:
    """ModMed Slot search: appointment-type required, date ge/le, provider/location, no paging,
    free slots only. EMA-only templates are not enumerated (empty result)."""
    unknown = set(params) - SLOT_PARAMS
    if unknown & {"_count", "_offset"}:
        raise FhirError(400, "Slot search does not paginate; narrow the date range instead")
    if unknown:
        raise FhirError(400, f"unsupported Slot search parameter; supported: {', '.join(sorted(SLOT_PARAMS - {'_format'}))}")
    reason_token = _single(params, "appointment-type")
    if reason_token is None:
        raise FhirError(400, "Slot search requires appointment-type (a visit-reason code)")
    system, _, code = reason_token.rpartition("|")
    if code not in VISIT_REASONS or (system and system != VISIT_REASON_SYSTEM):
        raise FhirError(400, "appointment-type is not a visit-reason code of this practice")
    status = _single(params, "status")
    if status is not None and status != "free":
        raise FhirError(400, "Slot search returns free slots only; status may only be 'free'")
    template = tenant.profile.template_for(code)
    if template is None or template.ema_only:
        return []
    start_from, start_until = _slot_window(params.get("date", []), tenant)
    providers = _id_set(params, "provider", "Practitioner")
    locations = _id_set(params, "location", "Location")
    if locations is not None:
        rooms = {r.location_id for r in tenant.profile.rooms}
        expanded = set(locations) & rooms
        if tenant.profile.facility_id in locations:
            expanded |= rooms
        locations = expanded
    schedules = _id_set(params, "schedule", "Schedule")
    found = tenant.slots.search(code, start_from, start_until, providers, locations, now, include_ema_only=False)
    return [tenant.slots.slot_resource(s, now) for s in found if schedules is None or s.schedule_id in schedules]


def _slot_window(values: list[str], tenant: Tenant) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The date bounds as an inclusive [from, until] window on slot starts."""
    if len(values) > 2:
        raise FhirError(400, "date may appear at most twice (a ge and a le bound)")
    start_from: dt.datetime | None = None
    start_until: dt.datetime | None = None
    tick = dt.timedelta(microseconds=1)
    for value in values:
        prefix, low, high = date_bounds(value, tenant.profile.zone)
        lower = {"eq": low, "ge": low, "gt": high}.get(prefix)
        upper = {"eq": high - tick, "le": high - tick, "lt": low - tick}.get(prefix)
        if lower is not None:
            start_from = lower if start_from is None else max(start_from, lower)
        if upper is not None:
            start_until = upper if start_until is None else min(start_until, upper)
    return start_from, start_until


def _id_set(params: dict[str, list[str]], name: str, resource_type: str) -> set[str] | None:
    values = params.get(name)
    if not values:
        return None
    ids: set[str] = set()
    for value in values:
        for option in value.split(","):
            option = option.strip()
            if not option:
                raise FhirError(400, f"empty {name} value")
            ids.add(reference_id(option, resource_type) or option)
    return ids

