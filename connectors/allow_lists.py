"""The closed allow-lists of the ModMed client: what callstream may read and write, decided on the real URL.

Every request leaves through ModMedClient._call (connectors.fhir), which asks ``authorize`` about the
method, URL and query that will really be sent, before a byte is sent: resource types outside
READABLE_RESOURCE_TYPES are never read, (type, method) pairs outside WRITE_ALLOW_LIST never written, and
FORBIDDEN_WRITE_TYPES (the controlled-substance guard) never addressed at all. An Observation is only
ever searched for the PDMP check (``code=…|pdmp-check``), so UDS results and every other Observation
stay in ModMed. The whole write guard reads in this one module, and tests/connectors/
test_no_medication_writes.py proves no other connector module names a medication resource.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qsl, urlsplit

from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.task import Task

from callstream.tenants import Practice
from connectors.errors import ResourceNotAllowed, WriteNotAllowed
from connectors.vocabulary import COMPLIANCE_SYSTEM, PDMP_CHECK_CODE

FHIR_ID = re.compile(r"^(?!\.+\Z)[A-Za-z0-9\-.]{1,64}\Z")

READABLE_RESOURCE_TYPES: frozenset[str] = frozenset(
    {
        "Appointment",
        "Coverage",
        "DocumentReference",
        "Flag",
        "Location",
        "Observation",
        "Patient",
        "Practitioner",
        "Schedule",
        "Slot",
        "Task",
    }
)
"""Resource types the connector reads; Medication* is deliberately absent."""

WRITE_ALLOW_LIST: frozenset[tuple[str, str]] = frozenset(
    {
        ("Appointment", "POST"),
        ("Appointment", "PUT"),
        ("Task", "POST"),
        ("DocumentReference", "POST"),
        ("Patient", "POST"),
        ("Coverage", "POST"),
    }
)
"""The only (resource type, method) pairs that may change data in ModMed. Patient and Coverage are created only
(a new caller's registration; ModMed's Coverage has no update), never changed."""

FORBIDDEN_WRITE_TYPES: frozenset[str] = frozenset({"MedicationRequest", "MedicationStatement"})
"""Never written by callstream (controlled-substance guard); listed so tests can prove the lists exclude them."""

PDMP_CHECK_SEARCH = f"{COMPLIANCE_SYSTEM}|{PDMP_CHECK_CODE}"
OBSERVATION_SEARCH_PARAMS: frozenset[str] = frozenset(
    {"patient", "subject", "code", "date", "_count", "_offset", "_lastUpdated", "_sort"}
)
"""What an Observation search may carry besides its one ``code``: no ``_include``, ``_has`` or chaining that
could pull a UDS result (or anything else) in next to the PDMP check."""

WritableResource = Appointment | Task | DocumentReference | Patient | Coverage
"""The resource models the client's ``write`` accepts (the types of WRITE_ALLOW_LIST)."""


def authorize(
    practice: Practice, method: str, url: str, params: Mapping[str, str | Sequence[str]] | None = None
) -> str:
    """The label (resource type) of an allowed (method, URL, query); anything else raises before a byte is sent.

    The decision is taken on the URL and query that will really be sent, so no caller-supplied
    label, path trick or future helper can reach a resource type outside the lists, or an
    Observation other than the PDMP check.
    """
    relative = relative_path(url, practice.fhir_base)
    if relative is None:
        raise ResourceNotAllowed(
            "URL is outside the practice's FHIR base", practice_id=practice.practice_id, method=method
        )
    segments = relative.split("/")
    head = segments[0]
    if head in FORBIDDEN_WRITE_TYPES and method != "GET":
        raise WriteNotAllowed(
            "callstream never writes medication resources", practice_id=practice.practice_id,
            resource_type=head, method=method,
        )
    if method == "GET":
        if head == "Observation":
            _require_pdmp_check_search(practice.practice_id, relative, url, params)
            return head
        if head in READABLE_RESOURCE_TYPES or relative in (".well-known/smart-configuration", "$export") or (
            head == "$export-status" and len(segments) == 2
        ) or relative.startswith(("Patient/$export", "Group/")):
            return head
        raise ResourceNotAllowed(
            "read is outside the connector's allow-list", practice_id=practice.practice_id,
            resource_type=head, method=method,
        )
    if method == "DELETE" and head == "$export-status" and len(segments) == 2:
        return head
    shape_ok = (method == "POST" and len(segments) == 1) or (
        method == "PUT" and len(segments) == 2 and FHIR_ID.match(segments[1]) is not None
    )
    if not shape_ok or (head, method) not in WRITE_ALLOW_LIST:
        raise WriteNotAllowed(
            "write is outside the connector's allow-list", practice_id=practice.practice_id,
            resource_type=head, method=method,
        )
    return head


def resource_url(practice: Practice, resource_type: str, resource_id: str | None = None) -> str:
    """The URL of a resource type (or one resource) of the practice; refuses types outside the lists."""
    if resource_type in FORBIDDEN_WRITE_TYPES:
        raise WriteNotAllowed(
            "callstream never addresses medication resources", practice_id=practice.practice_id,
            resource_type=resource_type,
        )
    if resource_type not in READABLE_RESOURCE_TYPES:
        raise ResourceNotAllowed(
            "resource type is outside the connector's allow-list", practice_id=practice.practice_id,
            resource_type=resource_type,
        )
    if resource_id is None:
        return f"{practice.fhir_base}/{resource_type}"
    if not isinstance(resource_id, str) or FHIR_ID.match(resource_id) is None:
        raise ResourceNotAllowed(
            "resource id is not a FHIR id", practice_id=practice.practice_id, resource_type=resource_type
        )
    return f"{practice.fhir_base}/{resource_type}/{resource_id}"


def relative_path(url: str, base: str) -> str | None:
    """The path of ``url`` below ``base`` when it is under it (same origin) and free of tricks, else None."""
    try:
        target, root = urlsplit(url), urlsplit(base)
    except ValueError:
        return None
    if (target.scheme, target.netloc) != (root.scheme, root.netloc) or target.fragment:
        return None
    prefix = root.path.rstrip("/") + "/"
    if not target.path.startswith(prefix):
        return None
    relative = target.path[len(prefix):]
    segments = relative.split("/")
    if not relative or any(s in ("", ".", "..") or "%" in s or ";" in s or "\\" in s for s in segments):
        return None
    return relative


def origin(url: str) -> str:
    """scheme://host[:port] of ``url``: where a bearer token may go."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _require_pdmp_check_search(
    practice_id: str, relative: str, url: str, params: Mapping[str, str | Sequence[str]] | None
) -> None:
    """Observations are searched for the PDMP check only: callstream never reads a UDS result (or any other
    Observation), so a read by id, a second code or an unknown parameter is refused."""
    query = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    for name, value in (params or {}).items():
        query.extend((name, item) for item in ([value] if isinstance(value, str) else value))
    codes = [value for name, value in query if name == "code"]
    if relative != "Observation" or codes != [PDMP_CHECK_SEARCH] or any(
        name not in OBSERVATION_SEARCH_PARAMS for name, _ in query
    ):
        raise ResourceNotAllowed(
            "Observations are read by a PDMP-check search only", practice_id=practice_id,
            resource_type="Observation", method="GET",
        )
