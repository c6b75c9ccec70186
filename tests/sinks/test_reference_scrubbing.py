"""Issue 18 point 3: names, birth dates, phone numbers and e-mail addresses inside outside references."""

from __future__ import annotations

import json
import uuid

import pytest

from callstream.tenants import SiemFormat
from sinks.audit_rows import row_from_record
from sinks.formats import render_body
from sinks.payload import audit_record
from tests.sinks.audit_helpers import make_event

PHI_FRAGMENTS = ("Romero", "Gabriel", "romero", "1947", "07-17", "867", "5309", "jane.doe", "example.org", "Doe")

SCRUBBED = [
    ("s3://callstream-transcripts/2026/03/14/Romero-Gabriel-1947-07-17/call-8812.json",
     "s3://callstream-transcripts/2026/03/14/redacted/call-8812.json"),
    ("s3://callstream-transcripts/romero-19470717/call-8812.json", "s3://callstream-transcripts/redacted/call-8812.json"),
    ("s3://callstream-transcripts/t/07.17.1947/call-1.json", "s3://callstream-transcripts/t/redacted/call-1.json"),
    ("https://store.example/t/jane.doe@example.org/call-1.json?patient=Romero+Gabriel&dob=1947-07-17",
     "https://store.example/t/redacted/call-1.json"),
    ("https://store.example/calls/%2B1-555-867-5309/rec.json", "https://store.example/calls/redacted/rec.json"),
    ("https://store.example/calls/5558675309-call.json", "https://store.example/calls/redacted"),
    ("https://store.example/calls/Gabriel%20Romero/rec.json", "https://store.example/calls/redacted/rec.json"),
    ("https://ema.example/ema/#/patients/Gabriel_Romero/chart", "https://ema.example/ema/#/patients/redacted/chart"),
    # After a chart route only an id passes: a phone number with spaces or a plus sign is not one.
    ("https://ema.example/ema/chart/%2B1%20555%20867%205309", "https://ema.example/ema/chart/redacted"),
    ("https://ema.example/ema/chart/1947-07-17", "https://ema.example/ema/chart/redacted"),
    ("transcripts/Jane.Doe/call-7.json", "transcripts/redacted/call-7.json"),
]
KEPT = [
    "s3://transcripts/2026/03/14/call-42.json",
    "https://ema.example/ema/#/patients/pat-4411/chart",
    # Chart ids of ten digits or more are ids ModMed assigned, not phone numbers: the chart link must still open.
    "https://sandbox.example/ema/northside/chart/pt-1002-000001",
    "https://ema.example/ema/#/chart/1000234567/opioid-agreement",
    "Task/1234567",
    "s3://callstream-transcripts/call-01HV8Z6Q5R/transcript.json",
]


@pytest.mark.parametrize(("reference", "expected"), SCRUBBED)
def test_identifying_segments_of_a_transcript_reference_are_redacted(reference: str, expected: str) -> None:
    link = reference if reference.startswith("https://") else None  # the schema takes https deep links only
    # A fixed event id: a random one holds "867" or "1947" in its hex now and then.
    event = make_event("northside-pain", transcript_ref=reference, task_refs=[reference], ema_deep_link=link,
                       event_id=uuid.UUID(int=0))
    record = audit_record(event)
    assert (record.transcript_ref, record.task_refs) == (expected, (expected,))
    assert record.ema_deep_link == (expected if link else None)
    assert {"transcript_ref", "task_refs"} | ({"ema_deep_link"} if link else set()) <= set(record.redactions)
    sent = " ".join([render_body(record, SiemFormat.OCSF).decode(), render_body(record, SiemFormat.SPLUNK_HEC).decode(),
                     json.dumps(row_from_record(record), default=str)])
    assert not [fragment for fragment in PHI_FRAGMENTS if fragment in sent]


@pytest.mark.parametrize("reference", KEPT)
def test_machine_references_pass_unchanged(reference: str) -> None:
    record = audit_record(make_event("northside-pain", transcript_ref=reference))
    assert record.transcript_ref == reference
    assert "transcript_ref" not in record.redactions
