"""A call to a number no practice owns, end to end: `callstream replay` reports its dead letters at once,
`callstream dlq` lists them, and once the number is added to the tenant directory (and the worker restarted
with it) `dlq replay` gets the call processed; a second `dlq replay` publishes nothing, and replaying the
script again says the call already ended."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import yaml

from callstream.tenants import TenantDirectory
from guards.replies import ReplyTemplate
from schemas.models import AuditEvent, Reply
from schemas.topics import AUDIT, REPLIES
from devkit import replay
from streams import dlq
from devkit.cast import Script
from tests.fixtures.pipeline import TopicReader, WorkerProcess

pytestmark = pytest.mark.broker

FIXED_PRACTICE = "pain-1002"


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def with_number(tenants_file: Path, practice_id: str, number: str, directory: Path) -> Path:
    """A copy of the tenant directory where ``practice_id`` also answers ``number`` (the operator's fix)."""
    document = yaml.safe_load(tenants_file.read_text())
    for entry in document["practices"]:
        if entry["practice_id"] == practice_id:
            entry["called_numbers"].append(number)
    fixed = directory / "tenants-fixed.yaml"
    fixed.write_text(yaml.safe_dump(document, sort_keys=False))
    return fixed


def test_an_unknown_numbers_dead_letters_are_reported_then_replayed_once_the_number_is_known(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pipeline_broker: str, pipeline_worker: WorkerProcess,
    pipeline_tenants: tuple[Path, TenantDirectory],
) -> None:
    number = f"+1737555{random.randrange(10**4):04d}"
    script = Script(number).started().intent("GENERAL_QUESTION", snippet="what are your opening hours").ended()
    path = tmp_path / "call.jsonl"
    path.write_text("".join(event.model_dump_json() + "\n" for event in script.events))
    b = pipeline_broker

    started = time.monotonic()
    assert replay.main([str(path), "--json", "-b", b]) == 1
    [call, summary] = json_lines(capsys.readouterr().out)
    assert time.monotonic() - started < 20, "dead letters are reported, not waited on"
    [cause] = [item["text"] for item in call["happened"] if item["kind"] == "dead_lettered"]
    assert cause.startswith(f"dead-lettered: unknown practice (called number {number} matches no practice")
    assert {letter["seq"] for letter in call["dead_lettered"]} == {0, 1, 2}
    assert {heard["template"] for heard in call["heard"]} == {ReplyTemplate.TRANSFER_TO_STAFF.value}
    assert (summary["calls_dead_lettered"], summary["timeouts"]) == (1, 0)

    assert dlq.main(["list", "--call", script.call_id, "--reason", "matches no practice", "--json", "-b", b]) == 0
    listed = json_lines(capsys.readouterr().out)
    assert len(listed) == 3 and {row["error_class"] for row in listed} == {"UnknownCalledNumber"}
    assert dlq.main(["list", "--call", script.call_id, "--practice", FIXED_PRACTICE, "--json", "-b", b]) == 0
    assert capsys.readouterr().out == "", "the practice was not known when they failed"

    pipeline_worker.stop()
    pipeline_worker.tenants_file = with_number(pipeline_tenants[0], FIXED_PRACTICE, number, tmp_path)
    pipeline_worker.start()
    replies, audit = TopicReader(b, REPLIES, Reply), TopicReader(b, AUDIT, AuditEvent)
    try:
        assert dlq.main(["replay", "--call", script.call_id, "--yes", "-b", b]) == 0
        assert "3 replayed, 0 already replayed, 0 refused" in capsys.readouterr().out
        intent = str(script.events[1].event_id)
        answered = replies.wait_for(lambda rs: any(
            r is not None and str(r.in_reply_to) == intent and r.template != ReplyTemplate.TRANSFER_TO_STAFF.value
            and r.practice_id == FIXED_PRACTICE for r in rs))
        assert any(r is not None and str(r.in_reply_to) == intent and r.practice_id == FIXED_PRACTICE for r in answered)
        ended = audit.wait_for(lambda rs: any(r is not None and r.call_id == script.call_id and r.state_to == "ended"
                                              and r.practice_id == FIXED_PRACTICE for r in rs))
        assert any(r is not None and r.call_id == script.call_id and r.state_to == "ended" for r in ended)
    finally:
        replies.close()
        audit.close()

    assert dlq.main(["replay", "--call", script.call_id, "--yes", "-b", b]) == 0
    assert "0 replayed, 3 already replayed, 0 refused" in capsys.readouterr().out

    started = time.monotonic()
    assert replay.main([str(path), "-b", b]) == 1
    out = capsys.readouterr().out
    assert time.monotonic() - started < 20
    assert f"call {script.call_id} ({FIXED_PRACTICE})" in out and "already ended" in out
