"""AvroSerde: both framings, round trips, schema evolution on read, hostile bytes."""

from __future__ import annotations

import io
import json
import shutil
import socket
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from fastavro import schemaless_writer
from fastavro.schema import parse_schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devkit import bench_schemas
from schemas.catalogue import AVRO_DIR, SchemaCatalogue, default_catalogue
from schemas.errors import SchemaError, SchemaRegistryError
from schemas.models import MODEL_BY_SCHEMA, CallerIdentified, CallEvent, Intent, IntentRecognised, Reply
from schemas.registry import SchemaRegistryClient
from schemas.serde import AvroSerde
from schemas.topics import CALL_EVENTS, REPLIES, TOPICS
from tests.schemas.event_strategies import EVENTS_BY_SCHEMA
from tests.schemas.schema_registry_double import SchemaRegistryDouble

ROUND_TRIP_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO exactly as the Avro specification writes it (independent of fastavro)."""
    empty = 0xC15D213AA4D7A795
    table = []
    for byte in range(256):
        fingerprint = byte
        for _ in range(8):
            fingerprint = (fingerprint >> 1) ^ (empty & -(fingerprint & 1))
        table.append(fingerprint)
    fingerprint = empty
    for byte in data:
        fingerprint = (fingerprint >> 8) ^ table[(fingerprint ^ byte) & 0xFF]
    return fingerprint


def identified_caller_event() -> CallEvent:
    return CallEvent(
        event_id=uuid.uuid4(),
        call_id="call-7f3a",
        seq=1,
        occurred_at=datetime(2026, 3, 2, 14, 5, 9, 123000, tzinfo=UTC),
        called_number="+15125550100",
        payload=CallerIdentified(family_name="Okonkwo", given_name="Adaeze", birth_date=date(1961, 7, 4)),
    )


def free_port_nobody_listens_on() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("schema_name", sorted(EVENTS_BY_SCHEMA))
@ROUND_TRIP_SETTINGS
@given(data=st.data())
def test_every_model_round_trips_through_single_object_encoding(schema_name: str, data: st.DataObject) -> None:
    event = data.draw(EVENTS_BY_SCHEMA[schema_name])
    serde = AvroSerde(schema_name)
    encoded = serde.encode(event.to_avro())
    assert encoded[:2] == b"\xc3\x01"
    assert MODEL_BY_SCHEMA[schema_name].from_avro(serde.decode(encoded)) == event


@pytest.mark.parametrize("topic", TOPICS, ids=lambda topic: topic.name)
@ROUND_TRIP_SETTINGS
@given(data=st.data())
def test_every_topic_round_trips_through_confluent_wire_format(
    topic: Any, data: st.DataObject, shared_registry_client: SchemaRegistryClient
) -> None:
    event = data.draw(EVENTS_BY_SCHEMA[topic.value_schema])
    serde = AvroSerde.for_topic(topic, registry=shared_registry_client)
    encoded = serde.encode(event.to_avro())
    assert encoded[0] == 0 and int.from_bytes(encoded[1:5], "big") == serde.register()
    assert MODEL_BY_SCHEMA[topic.value_schema].from_avro(serde.decode(encoded)) == event


def test_single_object_header_carries_the_little_endian_crc64_avro_fingerprint() -> None:
    schema = default_catalogue().current("CallEvent")
    encoded = AvroSerde("CallEvent").encode(identified_caller_event().to_avro())
    expected = crc64_avro(schema.canonical_form.encode()).to_bytes(8, "little")
    assert encoded[2:10] == expected == schema.fingerprint


def test_confluent_framing_registers_under_the_topic_value_subject(
    registry: SchemaRegistryDouble, registry_client: SchemaRegistryClient
) -> None:
    serde = AvroSerde.for_topic(CALL_EVENTS, registry=registry_client)
    first = serde.encode(identified_caller_event().to_avro())
    second = serde.encode(identified_caller_event().to_avro())
    schema_id = int.from_bytes(first[1:5], "big")
    assert registry.state.subjects == {f"{CALL_EVENTS}-value": [schema_id]}
    assert second[:5] == first[:5]
    assert [request for request in registry.state.requests if request[0] == "POST"] == [
        ("POST", f"/subjects/{CALL_EVENTS}-value/versions")
    ]


def test_a_fresh_consumer_fetches_the_writer_schema_by_id_once(
    registry: SchemaRegistryDouble, registry_client: SchemaRegistryClient
) -> None:
    encoded = AvroSerde.for_topic(CALL_EVENTS, registry=registry_client).encode(identified_caller_event().to_avro())
    with SchemaRegistryClient(registry.url) as consumer_client:
        consumer = AvroSerde.for_topic(CALL_EVENTS, registry=consumer_client)
        for _ in range(3):
            assert consumer.decode(encoded)["call_id"] == "call-7f3a"
    schema_id = int.from_bytes(encoded[1:5], "big")
    assert registry.state.requests.count(("GET", f"/schemas/ids/{schema_id}")) == 1


def test_decoding_accepts_either_framing_whatever_the_configuration(registry_client: SchemaRegistryClient) -> None:
    event = identified_caller_event()
    single_object = AvroSerde("CallEvent").encode(event.to_avro())
    confluent = AvroSerde.for_topic(CALL_EVENTS, registry=registry_client).encode(event.to_avro())
    with_registry = AvroSerde.for_topic(CALL_EVENTS, registry=registry_client)
    assert CallEvent.from_avro(with_registry.decode(single_object)) == event
    assert CallEvent.from_avro(with_registry.decode(confluent)) == event
    with pytest.raises(SchemaError, match=r"Confluent wire format .* no schema registry is configured"):
        AvroSerde("CallEvent").decode(confluent)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "is empty"),
        (b"\x7b\x22json\x22: 1}", "unknown framing"),
        (b"\xc3\x01\x00\x01", "shorter than the single-object header"),
        (b"\xc3\x01" + bytes(8) + b"\x02", "unknown schema fingerprint"),
        (b"\x00\x00\x00", "shorter than the Confluent wire-format header"),
    ],
    ids=["empty", "json", "short-header", "unknown-fingerprint", "short-confluent-header"],
)
def test_malformed_messages_raise_a_clear_schema_error(data: bytes, reason: str) -> None:
    with pytest.raises(SchemaError, match=reason):
        AvroSerde("CallEvent").decode(data)


def test_truncated_and_padded_messages_are_refused() -> None:
    serde = AvroSerde("CallEvent")
    encoded = serde.encode(identified_caller_event().to_avro())
    with pytest.raises(SchemaError, match=r"malformed \(EOFError"):
        serde.decode(encoded[:-4])
    with pytest.raises(SchemaError, match="3 trailing bytes"):
        serde.decode(encoded + b"\x00\x00\x00")


def test_oversized_messages_are_refused_before_decoding() -> None:
    serde = AvroSerde("CallEvent", max_message_bytes=64)
    with pytest.raises(SchemaError, match="exceeds the 64-byte limit"):
        serde.decode(b"\xc3\x01" + bytes(100))


def test_a_message_of_another_schema_is_refused() -> None:
    reply = Reply(
        reply_id=uuid.uuid4(),
        call_id="call-1",
        in_reply_to=uuid.uuid4(),
        template="confirm_booking",
        text="You are booked.",
        escalated=False,
        created_at=datetime(2026, 3, 2, tzinfo=UTC),
    )
    encoded = AvroSerde.for_topic(REPLIES).encode(reply.to_avro())
    with pytest.raises(SchemaError, match="written with schema Reply"):
        AvroSerde("CallEvent").decode(encoded)


def test_registry_schema_id_of_another_record_is_refused(registry_client: SchemaRegistryClient) -> None:
    reply_bytes = AvroSerde.for_topic(REPLIES, registry=registry_client).encode(
        {
            "reply_id": uuid.uuid4(),
            "call_id": "call-1",
            "in_reply_to": uuid.uuid4(),
            "practice_id": None,
            "template": "greeting",
            "text": "Hello",
            "offered_slots": [],
            "escalated": False,
            "created_at": datetime(2026, 3, 2, tzinfo=UTC),
        }
    )
    with pytest.raises(SchemaError, match=r"registry schema id .* of another record"):
        AvroSerde.for_topic(CALL_EVENTS, registry=registry_client).decode(reply_bytes)


def test_unknown_registry_schema_id_is_bad_data(registry_client: SchemaRegistryClient) -> None:
    with pytest.raises(SchemaError, match="schema id 4242 is not known"):
        AvroSerde.for_topic(CALL_EVENTS, registry=registry_client).decode(b"\x00" + (4242).to_bytes(4, "big") + b"\x00")


def test_unreachable_registry_is_a_registry_error_not_bad_data() -> None:
    with SchemaRegistryClient(f"http://127.0.0.1:{free_port_nobody_listens_on()}", timeout_s=2) as client:
        serde = AvroSerde.for_topic(CALL_EVENTS, registry=client)
        with pytest.raises(SchemaRegistryError, match="unreachable"):
            serde.decode(b"\x00\x00\x00\x00\x01\x00")
        with pytest.raises(SchemaRegistryError, match="unreachable"):
            serde.encode(identified_caller_event().to_avro())


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200), framing=st.sampled_from(["single-object", "truncated-valid"]))
def test_hostile_bytes_either_decode_or_raise_schema_error(body: bytes, framing: str) -> None:
    serde = AvroSerde("CallEvent")
    valid = serde.encode(identified_caller_event().to_avro())
    data = valid[:10] + body if framing == "single-object" else valid[: len(body) % len(valid)] + body
    try:
        record = serde.decode(data)
    except SchemaError:
        return
    assert set(record) == {"event_id", "call_id", "seq", "occurred_at", "called_number", "payload"}


def test_encode_errors_name_the_field_never_its_value() -> None:
    serde = AvroSerde("CallEvent")
    record = identified_caller_event().to_avro()
    name, payload = record["payload"]
    record["payload"] = (name, {**payload, "birth_date": 19610704})
    with pytest.raises(SchemaError) as wrong_type:
        serde.encode(record)
    assert "birth_date" in str(wrong_type.value)
    assert "19610704" not in str(wrong_type.value) and "Okonkwo" not in str(wrong_type.value)

    with pytest.raises(SchemaError, match="unknown fields: caller_ssn") as unknown_field:
        serde.encode({**identified_caller_event().to_avro(), "caller_ssn": "078-05-1120"})
    assert "078-05-1120" not in str(unknown_field.value)

    incomplete = identified_caller_event().to_avro()
    del incomplete["called_number"]
    with pytest.raises(SchemaError, match="called_number"):
        serde.encode(incomplete)
    with pytest.raises(SchemaError, match="must be a mapping"):
        serde.encode(["not", "a", "record"])  # type: ignore[arg-type]


def _catalogue_with_released(tmp_path: Path, version: str, schema: dict[str, Any]) -> SchemaCatalogue:
    """Current schemas plus one extra released version of CallEvent."""
    shutil.copytree(AVRO_DIR, tmp_path / "avro")
    (tmp_path / "released" / version).mkdir(parents=True)
    (tmp_path / "released" / version / "CallEvent.avsc").write_text(json.dumps(schema))
    return SchemaCatalogue.load(tmp_path / "avro", tmp_path / "released")


def _call_event_schema_without_appointment_id() -> dict[str, Any]:
    """CallEvent as an older release that had no IntentRecognised.appointment_id."""
    schema = default_catalogue().current("CallEvent").definition
    intent_recognised = next(branch for branch in schema["fields"][5]["type"] if branch["name"] == "IntentRecognised")
    intent_recognised["fields"] = [field for field in intent_recognised["fields"] if field["name"] != "appointment_id"]
    return schema


def test_data_from_a_producer_on_an_older_release_resolves_to_the_current_schema(tmp_path: Path) -> None:
    old_schema = _call_event_schema_without_appointment_id()
    catalogue = _catalogue_with_released(tmp_path, "v0", old_schema)
    old_record = {
        "event_id": uuid.uuid4(),
        "call_id": "call-9",
        "seq": 2,
        "occurred_at": datetime(2026, 3, 2, 14, 5, tzinfo=UTC),
        "called_number": "+15125550100",
        "payload": (
            "dev.callstream.v1.IntentRecognised",
            {
                "intent": "BOOK_APPOINTMENT",
                "confidence": 0.93,
                "medication_mentioned": False,
                "controlled_substance_mentioned": False,
            },
        ),
    }
    parsed_old = parse_schema(old_schema)
    buffer = io.BytesIO()
    buffer.write(b"\xc3\x01" + catalogue.released["v0"]["CallEvent"].fingerprint)
    schemaless_writer(buffer, parsed_old, old_record)
    event = CallEvent.from_avro(AvroSerde("CallEvent", catalogue=catalogue).decode(buffer.getvalue()))
    assert isinstance(event.payload, IntentRecognised)
    assert event.payload.intent is Intent.BOOK_APPOINTMENT and event.payload.appointment_id is None


def test_an_intent_symbol_added_by_a_newer_producer_reads_as_unknown(
    registry: SchemaRegistryDouble, registry_client: SchemaRegistryClient
) -> None:
    newer = default_catalogue().current("CallEvent").definition
    intent_recognised = next(branch for branch in newer["fields"][5]["type"] if branch["name"] == "IntentRecognised")
    intent_recognised["fields"][0]["type"]["symbols"].insert(0, "WAITLIST_REQUEST")
    newer_id = registry.add_schema(f"{CALL_EVENTS}-value", newer)
    record = identified_caller_event().to_avro()
    record["payload"] = (
        "dev.callstream.v1.IntentRecognised",
        {
            "intent": "WAITLIST_REQUEST",
            "confidence": 0.8,
            "medication_mentioned": False,
            "controlled_substance_mentioned": False,
        },
    )
    buffer = io.BytesIO()
    buffer.write(b"\x00" + newer_id.to_bytes(4, "big"))
    schemaless_writer(buffer, parse_schema(newer), record)
    event = CallEvent.from_avro(AvroSerde.for_topic(CALL_EVENTS, registry=registry_client).decode(buffer.getvalue()))
    assert isinstance(event.payload, IntentRecognised) and event.payload.intent is Intent.UNKNOWN


def test_serde_construction_errors_are_clear() -> None:
    with pytest.raises(SchemaError, match="unknown schema 'Invoice'"):
        AvroSerde("Invoice")
    with pytest.raises(KeyError, match=r"unknown topic 'callstream\.invoices\.v1'"):
        AvroSerde.for_topic("callstream.invoices.v1")
    with pytest.raises(SchemaRegistryError, match="no schema registry configured"):
        AvroSerde("CallEvent").register()


def test_benchmark_script_prints_a_figure_per_event_shape(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_schemas.main(["--events", "20"]) == 0
    figures = [line for line in capsys.readouterr().out.splitlines() if "µs/event" in line]
    assert [line.split()[0] for line in figures] == ["CallEvent", "Reply", "AuditEvent"]
