"""`callstream dlq list|show|replay`: look at dead letters, and send them again once their cause is fixed.

Both dead-letter topics hold `DeadLetter` records with the original key and value bytes:
`callstream.dead-letter.v1` (call events the pipeline gave up on, audit events the ClickHouse sink refused)
and `callstream.siem-dead-letter.v1` (audit events the SIEM sink gave up delivering). Each letter is named
by its ``dead_letter_id`` (or a unique prefix of at least 8 characters).

- ``list`` filters by reason (text in the reason or the error class), practice, call and time of failure,
  and prints a table or, with ``--json``, one JSON object per letter.
- ``show`` prints the reason and the decoded original with every PHI field redacted (schemas.privacy: the
  models' own PHI marking; references scrubbed as the audit scrubs them; an audit event as the sinks'
  outward record). The raw bytes are never printed.
- ``replay`` re-publishes the selected originals, key and value untouched, to their source topic and
  partition, with headers ``callstream-replay-of`` (the dead letter's id) and ``callstream-replayed-at``.
  Selection by id, or by filter after a confirmation (``--yes`` skips it). It is idempotent on the
  original's event id (a CallEvent's or AuditEvent's ``event_id``; for bytes that do not decode, their
  SHA-256): every replay is recorded on the compacted topic ``callstream-dlq-replays`` (JSON keyed by that
  id, read whole before each run), so replaying twice publishes once, across restarts and machines. A
  letter whose own source is where an earlier replay landed (the replay failed again) may be replayed
  anew. Refused, with the reason: letters whose value was truncated (over the broker's limit; the whole
  stays at its source partition and offset) and call events beyond the worker's redelivery horizon (the
  worker would dead-letter them again). The record is written once the broker has the replayed
  message: a crash between the two can publish one more copy, which the pipeline drops by its seq and
  the sinks de-duplicate by event id.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from callstream.cli_options import (
    add_logging_options,
    add_service_options,
    configure_logging_from,
    iso_time,
    settings_from,
)
from callstream.backends import wait_for_broker
from callstream.errors import ConfigError, ServiceUnavailableError
from callstream.references import clean_reference
from callstream.settings import Settings
from callstream.state_topic import ensure_compacted_topic
from schemas.errors import SchemaError
from schemas.models import AuditEvent, CallEvent, DeadLetter
from schemas.privacy import REDACTED, phi_fields, phi_redacted
from schemas.serde import AvroSerde
from schemas.topics import AUDIT, CALL_EVENTS, DEAD_LETTER, SIEM_DEAD_LETTER, topic_named
from sinks.payload import audit_record
from streams.horizon import RedeliveryHorizon

DLQ_TOPICS = (DEAD_LETTER, SIEM_DEAD_LETTER)
REPLAY_LOG_TOPIC = "callstream-dlq-replays"
REPLAY_HEADER = "callstream-replay-of"
REPLAYED_AT_HEADER = "callstream-replayed-at"
MIN_ID_PREFIX = 8
READ_TIMEOUT_S = 60.0
REFERENCE_FIELDS = frozenset({"transcript_ref", "ema_deep_link"})
_ORIGINALS: dict[str, type[CallEvent] | type[AuditEvent]] = {CALL_EVENTS: CallEvent, AUDIT: AuditEvent}
"""Source topics whose originals callstream can decode (and so name by their event id)."""


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter as read, with its original decoded where callstream knows the source topic."""

    dlq: str
    record: DeadLetter
    original: CallEvent | AuditEvent | None
    undecodable: str | None
    """Why the original did not decode (a PHI-free SchemaError), or None."""

    @property
    def id(self) -> str:
        return str(self.record.dead_letter_id)

    @property
    def original_id(self) -> str:
        """What replays are idempotent on: the original's event id, else the SHA-256 of its bytes."""
        if self.original is not None:
            return str(self.original.event_id)
        return f"sha256:{self.record.value_sha256 or hashlib.sha256(self.record.value).hexdigest()}"

    @property
    def source(self) -> str:
        return f"{self.record.source_topic}:{self.record.source_partition}:{self.record.source_offset}"

    @property
    def practice_id(self) -> str | None:
        if self.record.practice_id:
            return self.record.practice_id
        return self.original.practice_id if isinstance(self.original, AuditEvent) else None

    @property
    def call_id(self) -> str | None:
        if self.original is not None:
            return self.original.call_id
        if self.record.source_topic == CALL_EVENTS and self.record.key:
            return self.record.key.decode("utf-8", "replace")
        return None


@dataclass(frozen=True, slots=True)
class Filters:
    reason: str | None = None
    practice: str | None = None
    call: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @property
    def any(self) -> bool:
        return any(value is not None for value in (self.reason, self.practice, self.call, self.since, self.until))

    def match(self, letter: Letter) -> bool:
        reason = self.reason.casefold() if self.reason else None
        failed_at = letter.record.failed_at
        return ((reason is None or reason in letter.record.reason.casefold()
                 or reason in letter.record.error_class.casefold())
                and (self.practice is None or letter.practice_id == self.practice)
                and (self.call is None or letter.call_id == self.call)
                and (self.since is None or failed_at >= self.since)
                and (self.until is None or failed_at < self.until))


@dataclass(frozen=True, slots=True)
class ReplayRecord:
    """One entry of the replay log: where the original of a dead letter was published again."""

    original_id: str
    dead_letter_id: str
    target: str
    """topic:partition:offset of the replayed message."""
    replayed_at: str

    def to_json(self) -> bytes:
        return json.dumps({"v": 1, "original_id": self.original_id, "dead_letter_id": self.dead_letter_id,
                           "target": self.target, "replayed_at": self.replayed_at}, sort_keys=True).encode()


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    letter: Letter
    status: str
    """replayed | already_replayed | refused"""
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.letter.id, "original_id": self.letter.original_id, "status": self.status,
                "detail": self.detail}


# ------------------------------------------------------------------------------------------- reading


def read_topics(bootstrap: str, topics: Sequence[str], *,
                timeout_s: float = READ_TIMEOUT_S) -> dict[str, list[tuple[bytes | None, bytes | None]]]:
    """Every (key, value) of each topic from the beginning to its end (partition EOF), read by one consumer
    without a group commit; a topic that does not exist reads as empty."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"callstream-dlq-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "enable.partition.eof": True, "log.connection.close": False})
    records: dict[str, list[tuple[bytes | None, bytes | None]]] = {topic: [] for topic in topics}
    try:
        existing = consumer.list_topics(timeout=10).topics
        pending = {(topic, partition) for topic in topics if topic in existing and existing[topic].error is None
                   for partition in existing[topic].partitions}
        if not pending:
            return records
        consumer.assign([TopicPartition(topic, partition, 0) for topic, partition in pending])
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise ServiceUnavailableError(f"{', '.join(topics)} not read to the end within {timeout_s:.0f} s")
            message = consumer.poll(0.2)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.discard((message.topic(), message.partition()))
                continue
            records[message.topic()].append((message.key(), message.value()))
    except KafkaException as exc:
        raise ServiceUnavailableError(f"cannot read {', '.join(topics)} on {bootstrap}: {exc.args[0].name()}") from None
    finally:
        consumer.close()
    return records


def read_letters(bootstrap: str, topics: Sequence[str] = DLQ_TOPICS) -> tuple[list[Letter], dict[str, ReplayRecord]]:
    """Every dead letter of ``topics`` (originals decoded; a record that is no DeadLetter is skipped), oldest
    first, and the replay log, in one read."""
    serde = AvroSerde("DeadLetter")
    read = read_topics(bootstrap, [*topics, REPLAY_LOG_TOPIC])
    letters = []
    for topic in topics:
        for _, value in read[topic]:
            try:
                letters.append(_letter(topic, DeadLetter.from_avro(serde.decode(value or b""))))
            except SchemaError:
                continue
    return sorted(letters, key=lambda letter: letter.record.failed_at), replay_log(read[REPLAY_LOG_TOPIC])


def _letter(dlq: str, letter: DeadLetter) -> Letter:
    model = _ORIGINALS.get(letter.source_topic)
    if model is None:
        return Letter(dlq, letter, None, f"callstream does not decode records of {letter.source_topic}")
    if letter.value_truncated:
        return Letter(dlq, letter, None, f"only the first {len(letter.value)} of {letter.value_size} bytes were kept")
    try:
        original = model.from_avro(AvroSerde.for_topic(topic_named(letter.source_topic)).decode(letter.value))
    except SchemaError as exc:
        return Letter(dlq, letter, None, str(exc))
    return Letter(dlq, letter, original, None)


def find(letters: Sequence[Letter], wanted: str) -> Letter:
    """The letter named by its id or a unique prefix of it."""
    if len(wanted) < MIN_ID_PREFIX:
        raise ConfigError(f"dead-letter id {wanted!r}: give at least {MIN_ID_PREFIX} characters")
    found = [letter for letter in letters if letter.id.startswith(wanted.lower())]
    if not found:
        raise ConfigError(f"no dead letter {wanted} in {', '.join(DLQ_TOPICS)}")
    if len({letter.id for letter in found}) > 1:
        raise ConfigError(f"dead-letter id {wanted} is ambiguous: give more characters")
    return found[0]


# ------------------------------------------------------------------------------------------- showing


def shown(letter: Letter) -> dict[str, Any]:
    """The letter for a person or a script: its reason and bookkeeping, the original without PHI."""
    record = letter.record
    return {
        "id": letter.id,
        "dlq": letter.dlq,
        "failed_at": _iso(record.failed_at),
        "reason": record.reason,
        "error_class": record.error_class,
        "attempts": record.attempts,
        "practice_id": letter.practice_id,
        "call_id": letter.call_id,
        "source": letter.source,
        "value_size": record.value_size if record.value_size is not None else len(record.value),
        "value_sha256": record.value_sha256 or hashlib.sha256(record.value).hexdigest(),
        "value_truncated": record.value_truncated,
        "original_id": letter.original_id,
        "original": redacted_original(letter.original),
        "undecodable": letter.undecodable,
    }


def redacted_original(original: CallEvent | AuditEvent | None) -> dict[str, Any] | None:
    """The decoded original as the audit may hold it: PHI fields redacted, references scrubbed; an audit
    event as the sinks' outward record (sinks.payload), its PHI fields redacted as well."""
    if original is None:
        return None
    if isinstance(original, AuditEvent):
        data = audit_record(original).to_json_dict()
        for name in phi_fields(AuditEvent):
            if data.get(name) is not None:
                data[name] = REDACTED
        return data
    return _scrub_references(phi_redacted(original))


def _scrub_references(data: dict[str, Any]) -> dict[str, Any]:
    for name, value in data.items():
        if isinstance(value, dict):
            _scrub_references(value)
        elif name in REFERENCE_FIELDS and isinstance(value, str):
            data[name] = clean_reference(value) or REDACTED
    return data


def table(letters: Sequence[Letter], replayed: dict[str, ReplayRecord]) -> str:
    """The letters as a fixed-width table, oldest first."""
    rows = [("ID", "FAILED AT", "TOPIC", "SOURCE", "PRACTICE", "CALL", "ERROR", "REPLAYED", "REASON")]
    for letter in letters:
        rows.append((letter.id[:MIN_ID_PREFIX], _iso(letter.record.failed_at)[:19] + "Z",
                     letter.dlq.removeprefix("callstream.").removesuffix(".v1"), letter.source.removeprefix("callstream."),
                     letter.practice_id or "-", letter.call_id or "-", letter.record.error_class,
                     "yes" if _replayed(letter, replayed) else "no", _short(letter.record.reason, 60)))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]
                     for row in rows)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ------------------------------------------------------------------------------------------- replaying


def replay_log(records: Iterable[tuple[bytes | None, bytes | None]]) -> dict[str, ReplayRecord]:
    """The replay log's records, latest per original id (a malformed record is skipped)."""
    log: dict[str, ReplayRecord] = {}
    for _, value in records:
        try:
            data = json.loads(value or b"")
            record = ReplayRecord(str(data["original_id"]), str(data["dead_letter_id"]), str(data["target"]),
                                  str(data["replayed_at"]))
        except (ValueError, KeyError, TypeError):
            continue
        log[record.original_id] = record
    return log


def _replayed(letter: Letter, log: dict[str, ReplayRecord]) -> ReplayRecord | None:
    """The earlier replay of this letter's original, unless this letter is that replay failing again."""
    record = log.get(letter.original_id)
    return None if record is None or record.target == letter.source else record


def refusal(letter: Letter, horizon: RedeliveryHorizon, now: datetime) -> str | None:
    """Why a letter cannot be replayed, or None."""
    record = letter.record
    if record.value_truncated:
        return (f"its original value ({record.value_size} bytes) was truncated in the dead letter; the whole stays "
                f"at {letter.source} until that topic's retention ends")
    if isinstance(letter.original, CallEvent):
        too_old = horizon.refusal(letter.original.occurred_at, now)
        if too_old is not None:
            return f"the worker would dead-letter it again: {too_old}"
    return None


def plan(letters: Sequence[Letter], log: dict[str, ReplayRecord], horizon: RedeliveryHorizon,
         now: datetime) -> tuple[list[Letter], list[ReplayOutcome]]:
    """The letters to publish (once per original, in source order) and the ones left out, with why."""
    publish: list[Letter] = []
    left_out: list[ReplayOutcome] = []
    chosen: set[str] = set()
    for letter in sorted(letters, key=lambda l: (l.record.source_topic, l.record.source_partition,
                                                 l.record.source_offset)):
        earlier = _replayed(letter, log)
        refused = refusal(letter, horizon, now)
        if refused is not None:
            left_out.append(ReplayOutcome(letter, "refused", refused))
        elif earlier is not None:
            left_out.append(ReplayOutcome(letter, "already_replayed",
                                          f"already replayed {earlier.replayed_at} (to {earlier.target})"))
        elif letter.original_id in chosen:
            left_out.append(ReplayOutcome(letter, "already_replayed", "its original is replayed once in this run"))
        else:
            chosen.add(letter.original_id)
            publish.append(letter)
    return publish, left_out


def ensure_replay_log(bootstrap: str) -> None:
    """Create the replay log (one compacted partition) if it is missing."""
    ensure_compacted_topic(bootstrap, REPLAY_LOG_TOPIC)


def publish(bootstrap: str, letters: Sequence[Letter], now: datetime) -> list[ReplayOutcome]:
    """Each original to its source topic and partition, then its replay-log record; in order, acknowledged."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "message.timeout.ms": 20_000,
                         "log.connection.close": False})
    landed: dict[str, str] = {}
    failed: dict[str, str] = {}

    def delivered(letter_id: str) -> Callable[[KafkaError | None, Any], None]:
        def report(error: KafkaError | None, message: Any) -> None:
            if error is None:
                landed[letter_id] = f"{message.topic()}:{message.partition()}:{message.offset()}"
            else:
                failed[letter_id] = error.name()
        return report

    stamp = _iso(now)
    for letter in letters:
        headers = [(REPLAY_HEADER, letter.id.encode()), (REPLAYED_AT_HEADER, stamp.encode())]
        try:
            producer.produce(letter.record.source_topic, key=letter.record.key, value=letter.record.value,
                             partition=letter.record.source_partition, headers=headers,
                             on_delivery=delivered(letter.id))
        except KafkaException as exc:  # refused before sending, e.g. a partition the topic no longer has
            failed[letter.id] = exc.args[0].name()
    if producer.flush(30):
        raise ServiceUnavailableError(f"the broker did not acknowledge the replayed records on {bootstrap}")
    outcomes = []
    for letter in letters:
        target = landed.get(letter.id)
        if target is None:
            outcomes.append(ReplayOutcome(letter, "refused", f"the broker refused it ({failed.get(letter.id, 'unknown')})"))
            continue
        record = ReplayRecord(letter.original_id, letter.id, target, stamp)
        producer.produce(REPLAY_LOG_TOPIC, key=letter.original_id.encode(), value=record.to_json())
        outcomes.append(ReplayOutcome(letter, "replayed", f"published to {target}"))
    if producer.flush(30):
        raise ServiceUnavailableError(f"the broker did not acknowledge the replay log on {bootstrap}; a second "
                                      "replay may publish these records again")
    return outcomes


# ------------------------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callstream dlq", description=(
        f"Dead letters of {DEAD_LETTER} and {SIEM_DEAD_LETTER}: list, show (PHI redacted), replay to their "
        "original topic once the cause is fixed."))
    commands = parser.add_subparsers(dest="command", required=True, metavar="{list,show,replay}")

    def filtered(command: argparse.ArgumentParser) -> None:
        command.add_argument("--topic", choices=["dead-letter", "siem-dead-letter", "all"], default="all",
                             help="which dead-letter topic (default both)")
        command.add_argument("--reason", help="text in the reason or the error class (case-insensitive)")
        command.add_argument("--practice", help="practice id")
        command.add_argument("--call", help="call id")
        command.add_argument("--since", type=iso_time, help="failed at or after (ISO 8601 with a zone)")
        command.add_argument("--until", type=iso_time, help="failed before (ISO 8601 with a zone)")

    listing = commands.add_parser("list", help="dead letters as a table (--json: one object per line)")
    filtered(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object per letter")
    show = commands.add_parser("show", help="one dead letter: reason and decoded original, PHI redacted")
    show.add_argument("id", help="dead_letter_id, or a unique prefix of 8+ characters")
    show.add_argument("--json", action="store_true", help="as one JSON object")
    replay = commands.add_parser("replay", help="re-publish originals to their topic (idempotent per event id)")
    replay.add_argument("ids", nargs="*", metavar="ID", help="dead letters to replay (else: every letter the filters select)")
    filtered(replay)
    replay.add_argument("--yes", action="store_true", help="replay what the filters select without asking")
    replay.add_argument("--json", action="store_true", help="one JSON object per letter, then a summary object")
    for command in (listing, show, replay):
        add_service_options(command, kafka=True)
        add_logging_options(command)
    return parser


def main(argv: list[str], *, stdin: TextIO | None = None) -> int:
    """`callstream dlq list|show|replay` (see the module docstring)."""
    options = _parser().parse_args(argv)
    settings = settings_from(options)
    configure_logging_from(settings)
    wait_for_broker(settings.bootstrap_servers, settings.connect_timeout_s)
    topics = DLQ_TOPICS if getattr(options, "topic", "all") == "all" else (f"callstream.{options.topic}.v1",)
    letters, log = read_letters(settings.bootstrap_servers, topics)
    if options.command == "show":
        view = shown(find(letters, options.id))
        print(json.dumps(view, indent=None if options.json else 2))
        return 0
    filters = Filters(options.reason, options.practice, options.call, options.since, options.until)
    if options.command == "list":
        selected = [letter for letter in letters if filters.match(letter)]
        if options.json:
            for letter in selected:
                print(json.dumps({**shown(letter), "replayed": _replayed(letter, log) is not None}))
        else:
            print(table(selected, log) if selected else "no dead letters match")
        return 0
    return _replay(options, settings, letters, filters, log, stdin or sys.stdin)


def _replay(options: argparse.Namespace, settings: Settings, letters: list[Letter], filters: Filters,
            log: dict[str, ReplayRecord], stdin: TextIO) -> int:
    if options.ids and filters.any:
        raise ConfigError("name dead letters by id or select them by filter, not both")
    if not options.ids and not filters.any:
        raise ConfigError("name the dead letters to replay (IDs) or select them with --reason/--practice/--call/"
                          "--since/--until")
    selected = [find(letters, wanted) for wanted in options.ids] if options.ids else [
        letter for letter in letters if filters.match(letter)]
    now = datetime.now(UTC)
    to_publish, left_out = plan(selected, log, RedeliveryHorizon.of(settings), now)
    if to_publish and not options.ids and not options.yes:
        print(table(to_publish, log))
        if not stdin.isatty():
            raise ConfigError(f"{len(to_publish)} dead letters selected by filter: pass --yes to replay them")
        print(f"replay these {len(to_publish)} records to their original topics? [y/N] ", end="", flush=True)
        if stdin.readline().strip().lower() not in ("y", "yes"):
            print("nothing replayed")
            return 1
    if to_publish:
        ensure_replay_log(settings.bootstrap_servers)
    outcomes = left_out + (publish(settings.bootstrap_servers, to_publish, now) if to_publish else [])
    for outcome in outcomes:
        if options.json:
            print(json.dumps(outcome.to_json()))
        else:
            print(f"{outcome.status.replace('_', ' ')}: {outcome.letter.id[:MIN_ID_PREFIX]} "
                  f"({outcome.letter.record.source_topic}) {outcome.detail}")
    counts = {status: sum(1 for outcome in outcomes if outcome.status == status)
              for status in ("replayed", "already_replayed", "refused")}
    if options.json:
        print(json.dumps({"type": "summary", **counts}))
    else:
        print(f"{counts['replayed']} replayed, {counts['already_replayed']} already replayed, "
              f"{counts['refused']} refused")
    if not outcomes:
        print("no dead letters match", file=sys.stderr)
    return 0 if counts["refused"] == 0 and outcomes else 1

