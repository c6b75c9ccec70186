"""`callstream dlq` on a real broker: filters, PHI-free `show`, and replays that publish once per original event,
refuse truncated letters and ask before replaying by filter. (Replay into a running worker after a fix:
tests/e2e/test_dlq.py.)"""

from __future__ import annotations

import io
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from callstream.backends import ensure_topics
from callstream.errors import ConfigError
from schemas.models import AuditAction, AuditEvent, AuditOutcome, CallEvent, DeadLetter
from schemas.serde import AvroSerde
from schemas.topics import AUDIT, CALL_EVENTS, DEAD_LETTER, SIEM_DEAD_LETTER, topic_named
from streams import dlq
from devkit.cast import Script
from streams.records import RawEvent, dead_letter_record

pytestmark = pytest.mark.broker

FAMILY, GIVEN, BIRTH_DATE, CALLER = "Quillfeather", "Marisol", "1951-04-09", "+15125550177"


@dataclass
class Letters:
    bootstrap: str
    call_id: str
    practice: str
    called: DeadLetter
    truncated: DeadLetter
    siem: DeadLetter
    since: datetime


def _publish(bootstrap: str, topic: str, letters: list[DeadLetter]) -> None:
    serde, producer = AvroSerde("DeadLetter"), Producer({"bootstrap.servers": bootstrap})
    for letter in letters:
        producer.produce(topic, key=letter.key, value=serde.encode(letter.to_avro()))
    assert producer.flush(10) == 0


@pytest.fixture(scope="module")
def letters(kafka_bootstrap: str) -> Letters:
    """A call event of an unknown number (with PHI), an oversized one, and an audit event the SIEM sink gave up."""
    ensure_topics(kafka_bootstrap, [(name, topic_named(name).partitions)
                                    for name in (CALL_EVENTS, AUDIT, DEAD_LETTER, SIEM_DEAD_LETTER)])
    since = datetime.now(UTC) - timedelta(seconds=1)
    script = Script("+17375550100", caller_number=CALLER).started()
    script.add({"type": "caller_identified", "family_name": FAMILY, "given_name": GIVEN, "birth_date": BIRTH_DATE})
    identified = script.events[1]
    events = AvroSerde.for_topic(CALL_EVENTS)
    offset = random.randrange(10**6, 10**9)
    called = dead_letter_record(RawEvent(CALL_EVENTS, 4, offset, script.call_id.encode(),
                                         events.encode(identified.to_avro())),
                                "called number matches no practice", "UnknownCalledNumber", None, datetime.now(UTC))
    truncated = dead_letter_record(RawEvent(CALL_EVENTS, 4, offset + 1, script.call_id.encode(), b"\xc3\x01" * 500_000),
                                   "message larger than 1 MiB", "SchemaError", None, datetime.now(UTC))
    practice = f"pain-{uuid.uuid4().hex[:6]}"
    audit = AuditEvent(event_id=uuid.uuid4(), occurred_at=datetime.now(UTC), practice_id=practice,
                       call_id=script.call_id, caller_number=CALLER, action=AuditAction.REPLY_SENT,
                       outcome=AuditOutcome.SUCCESS, transcript_ref=f"s3://t/{FAMILY}-{GIVEN}-{BIRTH_DATE}/c.json")
    siem = DeadLetter(dead_letter_id=uuid.uuid4(), source_topic=AUDIT, source_partition=2, source_offset=offset,
                      key=practice.encode(), value=AvroSerde.for_topic(AUDIT).encode(audit.to_avro()),
                      reason="endpoint answered 410 Gone; endpoint disabled", error_class="EndpointGone",
                      failed_at=datetime.now(UTC), attempts=1, practice_id=practice)
    _publish(kafka_bootstrap, DEAD_LETTER, [called, truncated])
    _publish(kafka_bootstrap, SIEM_DEAD_LETTER, [siem])
    return Letters(kafka_bootstrap, script.call_id, practice, called, truncated, siem, since)


def run(capsys: pytest.CaptureFixture[str], bootstrap: str, *argv: str, stdin: str = "") -> tuple[int, str]:
    status = dlq.main([*argv, "-b", bootstrap], stdin=io.StringIO(stdin))
    return status, capsys.readouterr().out


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_list_filters_by_reason_practice_call_time_and_topic(letters: Letters, capsys: pytest.CaptureFixture[str]) -> None:
    b = letters.bootstrap
    _, out = run(capsys, b, "list", "--call", letters.call_id, "--json")
    assert {row["id"] for row in json_lines(out)} == {str(letters.called.dead_letter_id),
                                                      str(letters.truncated.dead_letter_id),
                                                      str(letters.siem.dead_letter_id)}
    _, out = run(capsys, b, "list", "--call", letters.call_id, "--reason", "NO PRACTICE", "--json")
    [row] = json_lines(out)
    assert (row["error_class"], row["dlq"], row["replayed"]) == ("UnknownCalledNumber", DEAD_LETTER, False)
    _, out = run(capsys, b, "list", "--practice", letters.practice, "--topic", "siem-dead-letter", "--json")
    assert [row["id"] for row in json_lines(out)] == [str(letters.siem.dead_letter_id)]
    _, out = run(capsys, b, "list", "--practice", letters.practice, "--topic", "dead-letter", "--json")
    assert out == ""
    _, out = run(capsys, b, "list", "--call", letters.call_id, "--since", (letters.since + timedelta(hours=1)).isoformat())
    assert out.strip() == "no dead letters match"
    _, out = run(capsys, b, "list", "--call", letters.call_id, "--since", letters.since.isoformat())
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["ID", "FAILED", "AT", "TOPIC"] and len(rows) == 3
    assert any("UnknownCalledNumber" in row and "matches no practice" in row for row in rows)


def test_show_prints_the_reason_and_the_record_without_phi(letters: Letters, capsys: pytest.CaptureFixture[str]) -> None:
    _, out = run(capsys, letters.bootstrap, "show", str(letters.called.dead_letter_id)[:8], "--json")
    printed = [out]
    shown = json.loads(out)
    assert shown["reason"] == "called number matches no practice" and shown["call_id"] == letters.call_id
    assert shown["original"]["called_number"] == "+17375550100"
    payload = shown["original"]["payload"]
    assert (payload["type"], payload["family_name"], payload["given_name"], payload["birth_date"]) == (
        "caller_identified", "redacted", "redacted", "redacted")
    _, out = run(capsys, letters.bootstrap, "show", str(letters.siem.dead_letter_id))
    printed.append(out)
    siem = json.loads(out)
    assert siem["original"]["caller_number"] == "redacted" and siem["original"]["practice_id"] == letters.practice
    assert siem["original"]["transcript_ref"] == "s3://t/redacted/c.json"
    _, out = run(capsys, letters.bootstrap, "show", str(letters.truncated.dead_letter_id))
    assert json.loads(out)["value_truncated"] is True and json.loads(out)["original"] is None
    for phi in (FAMILY, GIVEN, BIRTH_DATE, CALLER):
        assert all(phi not in text for text in printed), "names, birth date and numbers never leave as they are"
    with pytest.raises(ConfigError, match="at least 8"):
        dlq.main(["show", "abc", "-b", letters.bootstrap])


@pytest.fixture
def call_events(letters: Letters) -> Iterator[Consumer]:
    consumer = Consumer({"bootstrap.servers": letters.bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    partition = TopicPartition(CALL_EVENTS, 4)
    consumer.assign([TopicPartition(CALL_EVENTS, 4, consumer.get_watermark_offsets(partition, timeout=10)[1])])
    yield consumer
    consumer.close()


def test_replay_publishes_the_original_once_refuses_truncated_letters_and_asks_before_a_filter(
    letters: Letters, capsys: pytest.CaptureFixture[str], call_events: Consumer,
) -> None:
    b, called = letters.bootstrap, str(letters.called.dead_letter_id)
    status, out = run(capsys, b, "replay", called, str(letters.truncated.dead_letter_id))
    assert status == 1, "a refused letter fails the run"
    assert "replayed: " in out and "1 replayed, 0 already replayed, 1 refused" in out
    assert "was truncated" in out
    message = next(m for m in iter(lambda: call_events.poll(10), None) if m.error() is None)
    assert (message.key(), message.value()) == (letters.called.key, letters.called.value)
    assert dict(message.headers())[dlq.REPLAY_HEADER] == called.encode()
    replayed = CallEvent.from_avro(AvroSerde.for_topic(CALL_EVENTS).decode(message.value()))
    status, out = run(capsys, b, "replay", called, "--json")
    *rows, summary = json_lines(out)
    assert status == 0 and rows[0]["status"] == "already_replayed" and rows[0]["original_id"] == str(replayed.event_id)
    assert summary == {"type": "summary", "replayed": 0, "already_replayed": 1, "refused": 0}
    _, out = run(capsys, b, "list", "--call", letters.call_id, "--reason", "no practice", "--json")
    assert json_lines(out)[0]["replayed"] is True
    with pytest.raises(ConfigError, match="pass --yes"):
        dlq.main(["replay", "--practice", letters.practice, "-b", b], stdin=io.StringIO(""))
    assert call_events.poll(0.5) is None, "nothing more was published"
    with pytest.raises(ConfigError, match="by id or select them by filter"):
        dlq.main(["replay", called, "--call", letters.call_id, "-b", b])


def test_a_record_the_broker_refuses_is_reported_and_not_logged_as_replayed(letters: Letters) -> None:
    lost = dead_letter_record(RawEvent(CALL_EVENTS, 40, 1, b"call-x", b"\xc3\x01x"), "r", "SchemaError", None,
                              datetime.now(UTC))
    [outcome] = dlq.publish(letters.bootstrap, [dlq.Letter(DEAD_LETTER, lost, None, "undecodable")], datetime.now(UTC))
    assert (outcome.status, outcome.detail) == ("refused", "the broker refused it (_UNKNOWN_PARTITION)")
    _, log = dlq.read_letters(letters.bootstrap, ())
    assert outcome.letter.original_id not in log
