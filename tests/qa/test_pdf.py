"""The per-call PDF, read back with pypdf: `callstream audit pdf` and the call page's download carry the
record, the practice's name, the generation time and the record's SHA-256."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pypdf
import httpx
import pytest

from callstream.backends import free_port
from processes.audit import main as audit_main
from qa.pdf import record_sha256
from tests.qa.conftest import PASSWORDS, PRACTICE_A, QaWorld
from tests.qa.helpers import sign_in



def pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(data)).pages)


def test_audit_pdf_writes_the_call_record_with_name_time_and_digest(
        qa_world: QaWorld, clickhouse_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("CALLSTREAM_CONFIG", "CALLSTREAM_READ_API_URL", "CALLSTREAM_TENANTS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLICKHOUSE_DSN", clickhouse_dsn)
    monkeypatch.setenv("CALLSTREAM_DATA_DIR", str(tmp_path))  # no sinks process published a read API here
    monkeypatch.setenv("CALLSTREAM_QUEUE_API", f"http://127.0.0.1:{free_port()}")  # a queue that does not answer
    call = qa_world.calls["a_refill"]
    out = tmp_path / "call.pdf"
    assert audit_main(["pdf", call, "--out", str(out), "--tenants", str(qa_world.tenants_file),
                       "--database", qa_world.store.database]) == 0
    printed = capsys.readouterr().out
    digest = re.search(r"record SHA-256 ([0-9a-f]{64})", printed)
    assert digest is not None and out.stat().st_mode & 0o777 == 0o600
    text = pdf_text(out.read_bytes())
    practice = qa_world.tenants[PRACTICE_A]
    assert f"Call record {call}" in text and f"Practice: {practice.name} ({PRACTICE_A})" in text
    assert re.search(r"Generated: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text)
    assert f"Record SHA-256: {digest.group(1)}" in text
    record = qa_world.records.call(PRACTICE_A, call)
    assert record is not None
    for expected in ("state transitions:", "EMA chart links:", "what the caller heard:", "review-queue items:",
                     record.record.tasks[0].task_ref, record.record.state_transitions[-1].state_to or "",
                     "MEDICATION_REQUEST_FORWARDED"):
        assert expected in text, expected
    assert "(none: no review queue answers" in text, "a queue that did not answer is said, not hidden"
    assert audit_main(["pdf", "call-nobody-made", "--out", str(tmp_path / "x.pdf"), "--tenants",
                       str(qa_world.tenants_file), "--database", qa_world.store.database]) == 1
    assert not (tmp_path / "x.pdf").exists()


def test_the_call_pages_pdf_matches_the_record_export(client: httpx.Client, qa_world: QaWorld) -> None:
    assert sign_in(client, "ana", PASSWORDS["ana"]) == 303
    call = qa_world.calls["a_booking"]
    exported = client.get(f"/calls/{call}/record.json")
    body = exported.json()
    assert exported.headers["x-record-sha256"] == record_sha256(body)
    pdf = client.get(f"/calls/{call}/record.pdf")
    assert pdf.headers["content-type"] == "application/pdf"
    assert f'filename="call-{call}.pdf"' in pdf.headers["content-disposition"]
    text = pdf_text(pdf.content)
    assert f"Record SHA-256: {record_sha256(body)}" in text and "booked:" in text
    for slot in body["slots"].get("booked", []):
        assert slot in text
