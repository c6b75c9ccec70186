"""SIEM body formats: OCSF API Activity (class 6003) and Splunk HEC JSON, built from an AuditRecord.

OCSF is the default because it is the vendor-neutral class for "an API call happened": every
ModMed read or write callstream makes is one. Callstream's own fields that OCSF has no attribute
for (caller number, state transition, deep link, guards) go under ``unmapped``, which is OCSF's
place for exactly that. Splunk HEC JSON wraps the same record as the ``event`` of a HEC envelope.
Bodies are compact JSON with sorted keys, so a retried delivery sends identical bytes.
"""

from __future__ import annotations

import json
from typing import Any

from callstream import __version__
from callstream.tenants import SiemFormat
from sinks.payload import AuditRecord

OCSF_SCHEMA_VERSION = "1.3.0"
OCSF_CLASS_UID = 6003
OCSF_CATEGORY_UID = 6
PRODUCT_NAME = "callstream"
HEC_SOURCE = "callstream:audit"
HEC_SOURCETYPE = "callstream:audit"

ACTIVITY_CREATE, ACTIVITY_READ, ACTIVITY_UPDATE, ACTIVITY_OTHER = 1, 2, 3, 99
_ACTIVITY_NAMES = {ACTIVITY_CREATE: "Create", ACTIVITY_READ: "Read", ACTIVITY_UPDATE: "Update", ACTIVITY_OTHER: "Other"}
_UPDATE_COMMANDS = frozenset({"RESCHEDULE_APPOINTMENT", "CANCEL_APPOINTMENT"})
_READ_ACTIONS = frozenset({"FHIR_READ", "EMA_READ"})
_WRITE_ACTIONS = frozenset({"FHIR_WRITE", "EMA_WRITE"})

STATUS_SUCCESS, STATUS_FAILURE, STATUS_OTHER = 1, 2, 99
_STATUS = {
    "SUCCESS": (STATUS_SUCCESS, "Success"),
    "FAILURE": (STATUS_FAILURE, "Failure"),
    "BLOCKED": (STATUS_OTHER, "Other"),
    "QUEUED": (STATUS_OTHER, "Other"),
}

SEVERITY_INFORMATIONAL, SEVERITY_LOW, SEVERITY_MEDIUM, SEVERITY_HIGH = 1, 2, 3, 4
_SEVERITY_NAMES = {SEVERITY_INFORMATIONAL: "Informational", SEVERITY_LOW: "Low", SEVERITY_MEDIUM: "Medium", SEVERITY_HIGH: "High"}

_SERVICES = {"FHIR_READ": "ModMed FHIR", "FHIR_WRITE": "ModMed FHIR", "EMA_READ": "ModMed EMA", "EMA_WRITE": "ModMed EMA"}


def ocsf_activity_id(record: AuditRecord) -> int:
    """Reads are Read; writes are Update when they change an existing appointment, else Create;
    an escalation creates a provider task; everything else (transitions, guard hits) is Other."""
    if record.action in _READ_ACTIONS:
        return ACTIVITY_READ
    if record.action in _WRITE_ACTIONS:
        return ACTIVITY_UPDATE if record.command in _UPDATE_COMMANDS else ACTIVITY_CREATE
    if record.action == "ESCALATION":
        return ACTIVITY_CREATE
    return ACTIVITY_OTHER


def ocsf_severity_id(record: AuditRecord) -> int:
    """A bypass attempt is what the SIEM team must see first; blocks and auth failures next."""
    if record.action == "BYPASS_ATTEMPT":
        return SEVERITY_HIGH
    if record.action in {"AUTH_FAILURE", "ALARM"} or record.outcome == "BLOCKED":
        return SEVERITY_MEDIUM
    if record.outcome == "FAILURE" or record.action == "DEAD_LETTER":
        return SEVERITY_LOW
    return SEVERITY_INFORMATIONAL


def ocsf_api_activity(record: AuditRecord) -> dict[str, Any]:
    """The record as an OCSF 1.3 API Activity event."""
    activity_id = ocsf_activity_id(record)
    severity_id = ocsf_severity_id(record)
    status_id, status = _STATUS.get(record.outcome, (STATUS_OTHER, "Other"))
    operation = record.command or record.action
    response: dict[str, Any] = {}
    if record.error_class:
        response["error"] = record.error_class
    if record.detail.get("http_status", "").isdigit():
        response["code"] = int(record.detail["http_status"])
    resources = [{"uid": uid, "type": record.resource_type or "Resource"} for uid in record.resource_ids]
    resources += [{"uid": ref, "type": "Task"} for ref in record.task_refs]
    if record.slot_id:
        resources.append({"uid": record.slot_id, "type": "Slot"})
    event: dict[str, Any] = {
        "class_uid": OCSF_CLASS_UID,
        "class_name": "API Activity",
        "category_uid": OCSF_CATEGORY_UID,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "activity_name": _ACTIVITY_NAMES[activity_id],
        "type_uid": OCSF_CLASS_UID * 100 + activity_id,
        "type_name": f"API Activity: {_ACTIVITY_NAMES[activity_id]}",
        "time": record.occurred_at_ms,
        "severity_id": severity_id,
        "severity": _SEVERITY_NAMES[severity_id],
        "status_id": status_id,
        "status": status,
        "status_detail": record.outcome,
        "actor": {"app_name": PRODUCT_NAME},
        "api": {
            "operation": operation,
            "service": {"name": _SERVICES.get(record.action, PRODUCT_NAME)},
            "request": {"uid": record.event_id},
            **({"response": response} if response else {}),
        },
        "src_endpoint": {"svc_name": PRODUCT_NAME},
        "resources": resources,
        "metadata": {
            "version": OCSF_SCHEMA_VERSION,
            "uid": record.event_id,
            "tenant_uid": record.practice_id,
            "product": {"name": PRODUCT_NAME, "vendor_name": PRODUCT_NAME, "version": __version__},
            **({"correlation_uid": record.call_id} if record.call_id else {}),
        },
        "unmapped": _unmapped(record),
    }
    if record.latency_ms is not None:
        event["duration"] = round(record.latency_ms)
    return event


def _unmapped(record: AuditRecord) -> dict[str, Any]:
    """Callstream's reconciliation fields that OCSF has no attribute for, nulls left out."""
    fields = record.to_json_dict()
    keep = ("practice_id", "call_id", "caller_number", "action", "outcome", "state_from", "state_to", "resource_type",
            "ema_deep_link", "task_refs", "transcript_ref", "guards_fired", "guard_action", "dialogue_path", "slot_id",
            "detail", "redactions")
    return {name: fields[name] for name in keep if fields[name] not in (None, [], {})}


def splunk_hec_event(record: AuditRecord) -> dict[str, Any]:
    """The record as one Splunk HTTP Event Collector JSON event (time in epoch seconds)."""
    return {
        "time": record.occurred_at_ms / 1000,
        "host": PRODUCT_NAME,
        "source": HEC_SOURCE,
        "sourcetype": HEC_SOURCETYPE,
        "fields": {"practice_id": record.practice_id},
        "event": record.to_json_dict(),
    }


def render_body(record: AuditRecord, body_format: SiemFormat) -> bytes:
    """The exact bytes that are signed and POSTed to the practice's endpoint."""
    document = ocsf_api_activity(record) if body_format is SiemFormat.OCSF else splunk_hec_event(record)
    return json.dumps(document, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")
