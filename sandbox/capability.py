"""CapabilityStatements (`GET .../metadata`) describing what each tenant really offers.

A client can read here, rather than guess, that Task create is missing at most practices
or that writes are absent on the certified track.
"""

from __future__ import annotations

import datetime as dt

from sandbox.search import CERTIFIED_SEARCH, PROPRIETARY_SEARCH
from sandbox.store import fhir_instant
from sandbox.world import Tenant

CREATE_TYPES = frozenset({"Patient", "Appointment", "DocumentReference", "Coverage", "ChargeItem"})
UPDATE_TYPES = frozenset({"Patient", "Appointment"})
SLOT_SEARCH_PARAMS = ("appointment-type", "date", "provider", "location", "schedule", "status")


def _search_params(names: list[str]) -> list[dict]:
    kinds = {
        "_id": "token", "_lastUpdated": "date", "date": "date", "birthdate": "date", "authoredon": "date",
        "patient": "reference", "beneficiary": "reference", "actor": "reference", "practitioner": "reference",
        "location": "reference", "owner": "reference", "partof": "reference", "provider": "reference",
        "schedule": "reference", "family": "string", "given": "string", "name": "string",
    }
    return [{"name": n, "type": kinds.get(n, "token")} for n in names]


def _statement(tenant: Tenant, now: dt.datetime, rest_resources: list[dict], description: str) -> dict:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": fhir_instant(now),
        "kind": "instance",
        "publisher": "callstream sandbox",
        "description": description,
        "implementation": {"description": tenant.profile.name},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{"mode": "server", "resource": rest_resources}],
    }


def proprietary_capability_statement(tenant: Tenant, now: dt.datetime) -> dict:
    entries = []
    types = dict(PROPRIETARY_SEARCH)
    if not tenant.profile.fhir_compliance_flags:
        types.pop("Flag")
    for resource_type in sorted([*types, "Slot"]):
        interactions = ["read", "search-type"]
        if resource_type in CREATE_TYPES or (resource_type == "Task" and tenant.profile.fhir_task_create):
            interactions.append("create")
        if resource_type in UPDATE_TYPES:
            interactions.append("update")
        params = list(SLOT_SEARCH_PARAMS) if resource_type == "Slot" else list(types[resource_type])
        entries.append(
            {"type": resource_type, "interaction": [{"code": i} for i in interactions], "searchParam": _search_params(params)}
        )
    return _statement(tenant, now, entries, "ModMed proprietary FHIR API (sandbox)")


def certified_capability_statement(tenant: Tenant, now: dt.datetime) -> dict:
    entries = []
    for resource_type, spec in sorted(CERTIFIED_SEARCH.items()):
        entry: dict = {
            "type": resource_type,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": _search_params(list(spec)),
        }
        if resource_type == "Patient":
            entry["operation"] = [
                {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"}
            ]
        entries.append(entry)
    entries.append(
        {
            "type": "Group",
            "interaction": [{"code": "read"}],
            "operation": [{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"}],
        }
    )
    statement = _statement(tenant, now, entries, "ModMed certified FHIR API (sandbox): read, search and bulk export")
    statement["rest"][0]["security"] = {
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]}]
    }
    statement["rest"][0]["operation"] = [
        {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}
    ]
    return statement
