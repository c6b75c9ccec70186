"""Per-practice in-memory FHIR resource store.

Resources are kept as validated FHIR JSON dicts keyed by type and id, with a patient
index so chart lookups (Flag?patient=, Task?patient=) and an identifier index so "did my write
land?" checks (Task?identifier=) do not scan the whole practice.
One re-entrant lock per practice serialises writes: the server is single-process, and
uvicorn in a background thread plus test code may touch the same tenant.
"""

from __future__ import annotations

import copy
import datetime as dt
import threading
from collections import defaultdict
from collections.abc import Iterator

PATIENT_REFERENCE_PATHS: dict[str, tuple[str, ...]] = {
    "Flag": ("subject",),
    "Observation": ("subject",),
    "DocumentReference": ("subject",),
    "Task": ("for",),
    "Coverage": ("beneficiary",),
    "ChargeItem": ("subject",),
    "MedicationRequest": ("subject",),
    "MedicationStatement": ("subject",),
    "Appointment": ("participant",),
}
"""Where each resource type points at its patient; used for the patient index."""


def fhir_instant(moment: dt.datetime) -> str:
    """FHIR instant in UTC with millisecond precision (what meta.lastUpdated carries)."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def reference_id(reference: str | None, resource_type: str) -> str | None:
    """'Patient/123' (or a full URL ending in it) → '123' when it names `resource_type`."""
    if not reference:
        return None
    parts = reference.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == resource_type and parts[-1]:
        return parts[-1]
    return None


def patient_ids_of(resource: dict) -> list[str]:
    paths = PATIENT_REFERENCE_PATHS.get(resource.get("resourceType", ""), ())
    found: list[str] = []
    for path in paths:
        if path == "participant":
            for participant in resource.get("participant") or []:
                pid = reference_id((participant.get("actor") or {}).get("reference"), "Patient")
                if pid:
                    found.append(pid)
            continue
        pid = reference_id((resource.get(path) or {}).get("reference"), "Patient")
        if pid:
            found.append(pid)
    return found


def identifier_values(resource: dict) -> set[str]:
    """The values of a resource's ``identifier`` list (the index key; searches still check the system)."""
    return {str(i["value"]) for i in resource.get("identifier") or [] if isinstance(i, dict) and i.get("value")}


class ResourceStore:
    """FHIR resources of one practice."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._resources: dict[str, dict[str, dict]] = defaultdict(dict)
        self._by_patient: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        self._by_identifier: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        self._sequence: dict[str, int] = defaultdict(int)

    def next_id(self, prefix: str) -> str:
        """Sequential ids per prefix, so generated and created ids read alike ('appt-1001-000042')."""
        with self.lock:
            self._sequence[prefix] += 1
            return f"{prefix}-{self._sequence[prefix]:06d}"

    def reserve_sequence(self, prefix: str, used: int) -> None:
        """Tell the store that ids up to `used` exist already (generated data)."""
        with self.lock:
            self._sequence[prefix] = max(self._sequence[prefix], used)

    def add(self, resource: dict, updated_at: dt.datetime) -> dict:
        """Insert a new resource (version 1); the caller has assigned its id."""
        with self.lock:
            rtype, rid = resource["resourceType"], resource["id"]
            if rid in self._resources[rtype]:
                raise KeyError(f"{rtype}/{rid} exists already")
            resource["meta"] = {**(resource.get("meta") or {}), "versionId": "1", "lastUpdated": fhir_instant(updated_at)}
            self._resources[rtype][rid] = resource
            self._index(rtype, rid, resource)
            return resource

    def replace(self, resource: dict, updated_at: dt.datetime) -> dict:
        """Store a new version of an existing resource."""
        with self.lock:
            rtype, rid = resource["resourceType"], resource["id"]
            previous = self._resources[rtype][rid]
            version = int(previous["meta"]["versionId"]) + 1
            resource["meta"] = {**(resource.get("meta") or {}), "versionId": str(version), "lastUpdated": fhir_instant(updated_at)}
            self._unindex(rtype, rid, previous)
            self._resources[rtype][rid] = resource
            self._index(rtype, rid, resource)
            return resource

    def _index(self, rtype: str, rid: str, resource: dict) -> None:
        for pid in patient_ids_of(resource):
            self._by_patient[rtype][pid].append(rid)
        for value in identifier_values(resource):
            self._by_identifier[rtype][value].append(rid)

    def _unindex(self, rtype: str, rid: str, resource: dict) -> None:
        for pid in patient_ids_of(resource):
            self._by_patient[rtype][pid].remove(rid)
        for value in identifier_values(resource):
            self._by_identifier[rtype][value].remove(rid)

    def get(self, resource_type: str, resource_id: str) -> dict | None:
        with self.lock:
            found = self._resources.get(resource_type, {}).get(resource_id)
            return copy.deepcopy(found) if found is not None else None

    def exists(self, resource_type: str, resource_id: str) -> bool:
        with self.lock:
            return resource_id in self._resources.get(resource_type, {})

    def all_of(self, resource_type: str) -> list[dict]:
        """A snapshot list; callers must not mutate the dicts (they are the stored ones)."""
        with self.lock:
            return list(self._resources.get(resource_type, {}).values())

    def for_patient(self, resource_type: str, patient_id: str) -> list[dict]:
        with self.lock:
            stored = self._resources.get(resource_type, {})
            return [stored[rid] for rid in self._by_patient[resource_type].get(patient_id, [])]

    def with_identifier(self, resource_type: str, value: str) -> list[dict]:
        """Resources carrying an identifier of this value (any system)."""
        with self.lock:
            stored = self._resources.get(resource_type, {})
            return [stored[rid] for rid in self._by_identifier[resource_type].get(value, [])]

    def types(self) -> Iterator[str]:
        with self.lock:
            return iter([rtype for rtype, items in self._resources.items() if items])

    def count(self, resource_type: str) -> int:
        with self.lock:
            return len(self._resources.get(resource_type, {}))
