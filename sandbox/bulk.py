"""FHIR Bulk Data `$export` as ModMed's certified API runs it (seed 003).

Kick-off → 202 + Content-Location; the status URL answers 202 (with X-Progress) on the
first poll and the manifest afterwards; files are ndjson with at most 1,000 resources
each; DELETE on the status URL cancels; a non-ndjson `_outputFormat` is a 400 whose
message is ModMed's 'Invalid Tenant'. The export is a snapshot taken at kick-off.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
from dataclasses import dataclass, field

from sandbox.errors import FhirError
from sandbox.resources import visible
from sandbox.store import fhir_instant, parse_instant, patient_ids_of
from sandbox.world import Tenant

MAX_RESOURCES_PER_FILE = 1000
NDJSON_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
PATIENT_TYPES = ("Patient", "Observation", "DocumentReference", "MedicationRequest")
SYSTEM_TYPES = (*PATIENT_TYPES, "Practitioner", "Location", "Organization")
KICKOFF_PARAMS = frozenset({"_outputFormat", "_since", "_type"})


@dataclass
class ExportFile:
    name: str
    resource_type: str
    count: int
    body: str


@dataclass
class ExportJob:
    job_id: str
    practice_id: str
    request_url: str
    transaction_time: str
    files: dict[str, ExportFile] = field(default_factory=dict)
    status_polls: int = 0


def parse_kickoff(params: dict[str, list[str]], allowed_types: tuple[str, ...]) -> tuple[tuple[str, ...], dt.datetime | None]:
    """Validate kick-off parameters; returns the types to export and the `_since` instant."""
    unknown = set(params) - KICKOFF_PARAMS
    if unknown:
        raise FhirError(400, f"unsupported $export parameter(s): {', '.join(sorted(unknown))}")
    if any(len(values) != 1 for values in params.values()):
        raise FhirError(400, "each $export parameter may appear once")
    output_format = params.get("_outputFormat", ["application/fhir+ndjson"])[0]
    if output_format not in NDJSON_FORMATS:
        raise FhirError(400, "Invalid Tenant")
    since = None
    if "_since" in params:
        try:
            since = parse_instant(params["_since"][0].replace("Z", "+00:00"))
        except ValueError as error:
            raise FhirError(400, "_since must be a FHIR instant") from error
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
    types = allowed_types
    if "_type" in params:
        requested = tuple(t.strip() for t in params["_type"][0].split(","))
        bad = [t for t in requested if t not in allowed_types]
        if bad or not requested:
            raise FhirError(400, f"_type may only name {', '.join(allowed_types)}")
        types = requested
    return types, since


class ExportJobs:
    """Every export job of the server, keyed by job id."""

    def __init__(self) -> None:
        self._jobs: dict[str, ExportJob] = {}
        self._lock = threading.Lock()

    def start(
        self, tenant: Tenant, request_url: str, types: tuple[str, ...], since: dt.datetime | None,
        patient_ids: set[str] | None, now: dt.datetime,
    ) -> ExportJob:
        job = ExportJob(secrets.token_hex(16), tenant.practice_id, request_url, fhir_instant(now))
        for resource_type in types:
            chosen = []
            for resource in tenant.store.all_of(resource_type):
                if not visible(tenant, resource):
                    continue
                if since is not None and parse_instant(resource["meta"]["lastUpdated"]) < since:
                    continue
                if patient_ids is not None and resource_type in PATIENT_TYPES:
                    owners = {resource["id"]} if resource_type == "Patient" else set(patient_ids_of(resource))
                    if not owners & patient_ids:
                        continue
                chosen.append(resource)
            for number, first in enumerate(range(0, len(chosen), MAX_RESOURCES_PER_FILE), start=1):
                chunk = chosen[first : first + MAX_RESOURCES_PER_FILE]
                name = f"{resource_type.lower()}_{number}.ndjson"
                body = "".join(json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n" for r in chunk)
                job.files[name] = ExportFile(name, resource_type, len(chunk), body)
        with self._lock:
            self._jobs[job.job_id] = job
        return job

    def get(self, tenant: Tenant, job_id: str) -> ExportJob:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.practice_id != tenant.practice_id:
            raise FhirError(404, "unknown or cancelled export job")
        return job

    def poll(self, tenant: Tenant, job_id: str) -> ExportJob | None:
        """The job when complete; None while it is still 'running' (the first poll)."""
        job = self.get(tenant, job_id)
        with self._lock:
            job.status_polls += 1
            return job if job.status_polls > 1 else None

    def cancel(self, tenant: Tenant, job_id: str) -> None:
        self.get(tenant, job_id)
        with self._lock:
            self._jobs.pop(job_id, None)

    @staticmethod
    def manifest(job: ExportJob, base: str) -> dict:
        return {
            "transactionTime": job.transaction_time,
            "request": job.request_url,
            "requiresAccessToken": True,
            "output": [
                {"type": f.resource_type, "url": f"{base}/$export-file/{job.job_id}/{f.name}", "count": f.count}
                for f in job.files.values()
            ],
            "error": [],
        }
