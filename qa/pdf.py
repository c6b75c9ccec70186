"""The per-call PDF for medical-record retention: the call's record as a document.

Its content is the per-call record exactly as `callstream audit call` gives it (the read API's body:
transitions, resources, chart links, tasks, guards, queued writes, what the caller heard, the call's
review-queue items), headed by the practice's name, the generation time and the SHA-256 of the record:
of its JSON with keys sorted and no whitespace (`canonical_json`), which is also what the QA view's
"Record (JSON)" download holds, so a retained copy can be checked against the audit store later.

fpdf2 is pure Python; its core fonts are Latin-1, so other characters are transliterated or replaced
(codes, ids and the reply templates' wording are ASCII anyway).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fpdf import FPDF
from fpdf.enums import WrapMode, XPos, YPos

from sinks.call_record import render_call_text

_LINE_MM = 4.2
_TRANSLITERATE = str.maketrans({"→": "->", "…": "...", "–": "-", "—": "-", "‘": "'", "’": "'", "“": '"', "”": '"'})


def canonical_json(record: Mapping[str, Any]) -> bytes:
    """The bytes the record's SHA-256 is taken over: keys sorted, no whitespace, UTF-8."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_sha256(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(record)).hexdigest()


def record_lines(record: Mapping[str, Any]) -> list[str]:
    """The PDF's body: the record's text as `callstream audit call` prints it, then its review-queue items."""
    lines = render_call_text(record).splitlines()
    lines.append("review-queue items:")
    items = record.get("review_items") or []
    lines.extend(f"  {item['item_id']}  {item['kind']}  {item['reason']}  {item['state']}"
                 f"{'  controlled substance' if item.get('controlled_substance') else ''}"
                 f"  created {item['created_at']}  attempts {item.get('attempts', 0)}"
                 f"{'  resolved by ' + str(item['resolved_by']) if item.get('resolved_by') else ''}" for item in items)
    if not items:
        lines.append(f"  (none: {record['review_error']})" if record.get("review_error") else "  (none)")
    return lines


def _latin1(text: str) -> str:
    return text.translate(_TRANSLITERATE).encode("latin-1", "replace").decode("latin-1")


def call_pdf(record: Mapping[str, Any], practice_name: str, generated_at: datetime | None = None) -> bytes:
    """The PDF of one call's record (see the module docstring)."""
    generated_at = generated_at or datetime.now(UTC)
    pdf = FPDF(format="A4")
    pdf.set_title(_latin1(f"Call record {record['call_id']}"))
    pdf.set_creator("callstream")
    pdf.set_auto_page_break(auto=True, margin=14)
    pdf.set_margins(12, 12, 12)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 14)
    pdf.cell(0, 8, _latin1(f"Call record {record['call_id']}"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 10)
    stamp = generated_at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    for label, value in (("Practice", f"{practice_name} ({record['practice_id']})"), ("Generated", stamp),
                         ("Record SHA-256", record_sha256(record))):
        pdf.cell(0, 5.5, _latin1(f"{label}: {value}"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "I", 8)
    pdf.multi_cell(0, 4, "The SHA-256 is of the record's JSON (callstream audit call --json) with keys sorted, no "
                         "whitespace, UTF-8.", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2)
    pdf.set_font("Courier", "", 8.5)
    for line in record_lines(record):
        pdf.multi_cell(0, _LINE_MM, _latin1(line), new_x=XPos.LMARGIN, new_y=YPos.NEXT, wrapmode=WrapMode.CHAR)
    return bytes(pdf.output())


def write_call_pdf(record: Mapping[str, Any], practice_name: str, out: Path) -> int:
    """Write the PDF to ``out``, readable by its owner only (it holds PHI); returns its size in bytes."""
    data = call_pdf(record, practice_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    out.chmod(0o600)
    return len(data)
