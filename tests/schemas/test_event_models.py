"""The pydantic event models: mirror the Avro records, validate hostile input, keep PHI out of repr."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, date, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from guards import model as guards_model
from schemas import models
from schemas.catalogue import default_catalogue
from schemas.errors import SchemaError
from tests.schemas.event_strategies import call_events

REPO = Path(__file__).resolve().parents[2]
PHI = ("Okonkwo", "Adaeze", "1961-07-04", "+15125550142", "+15125550199", "my oxycodone ran out")


def _record_fields(schema: dict[str, Any]) -> dict[str, list[str]]:
    """Field names of every record defined anywhere in a schema, by record name."""
    found: dict[str, list[str]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if node.get("type") == "record":
                found[node["name"]] = [field["name"] for field in node["fields"]]
                for field in node["fields"]:
                    walk(field["type"])
            else:
                walk(node.get("items"))
                walk(node.get("values"))
                if isinstance(node.get("type"), (dict, list)):
                    walk(node["type"])

    walk(schema)
    return found


def _avro_records() -> dict[str, list[str]]:
    records: dict[str, list[str]] = {}
    for name in default_catalogue().names:
        records.update(_record_fields(default_catalogue().current(name).definition))
    return records


NESTED_MODELS: tuple[type[models.AvroModel], ...] = (
    models.CallStarted,
    models.CallerIdentified,
    models.IntentRecognised,
    models.SlotChosen,
    models.CallEnded,
    models.OfferedSlot,
    models.NewPatientDetails,
    models.PostalAddress,
    models.InsuranceDetails,
    models.PharmacyDetails,
)
MODELS_BY_RECORD: dict[str, type[models.AvroModel]] = {
    model.AVRO_NAME.rsplit(".", 1)[-1]: model for model in (*models.MODEL_BY_SCHEMA.values(), *NESTED_MODELS)
}


def test_every_avro_record_has_a_model_with_the_same_fields_in_the_same_order() -> None:
    records = _avro_records()
    assert set(records) == set(MODELS_BY_RECORD)
    for record_name, fields in records.items():
        model_fields = [name for name in MODELS_BY_RECORD[record_name].model_fields if name != "type"]
        assert model_fields == fields, record_name


def _enum_symbols(schema_name: str, enum_name: str) -> list[str]:
    """Symbols of the enum named `enum_name` wherever it is defined in the schema."""

    def walk(node: Any) -> list[str] | None:
        if isinstance(node, dict):
            if node.get("type") == "enum" and node.get("name") == enum_name:
                return list(node["symbols"])
            children: list[Any] = list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            return None
        return next((found for child in children if (found := walk(child)) is not None), None)

    symbols = walk(default_catalogue().current(schema_name).definition)
    assert symbols is not None, f"enum {enum_name} not found in {schema_name}"
    return symbols


@pytest.mark.parametrize(
    ("schema_name", "enum_name", "model_enum"),
    [
        ("CallEvent", "Intent", models.Intent),
        ("CallEvent", "CallDisposition", models.CallDisposition),
        ("Command", "CommandRoute", models.CommandRoute),
        ("AuditEvent", "AuditAction", models.AuditAction),
        ("AuditEvent", "AuditOutcome", models.AuditOutcome),
        ("Alarm", "AlarmKind", models.AlarmKind),
        ("Alarm", "AlarmState", models.AlarmState),
        ("AppointmentChange", "ChangeSource", models.ChangeSource),
    ],
)
def test_model_enums_carry_exactly_the_avro_symbols(schema_name: str, enum_name: str, model_enum: type[Enum]) -> None:
    assert _enum_symbols(schema_name, enum_name) == [member.value for member in model_enum]


def test_intents_are_the_shared_vocabulary_of_contracts_md() -> None:
    contracts = (REPO / "docs" / "CONTRACTS.md").read_text()
    listed = re.search(r"Intents \(Avro enum symbols.*?\n`([^`]+)`", contracts, re.DOTALL)
    assert listed, "docs/CONTRACTS.md no longer lists the intents"
    assert [symbol.strip() for symbol in listed.group(1).split(",")] == [intent.value for intent in models.Intent]


def test_command_kinds_are_the_values_documented_in_the_command_schema() -> None:
    doc = next(
        field["doc"] for field in default_catalogue().current("Command").definition["fields"] if field["name"] == "kind"
    )
    assert re.findall(r"\b[A-Z][A-Z_]{3,}\b", doc.split(".")[0]) == [kind.value for kind in models.CommandKind]


@settings(max_examples=60, deadline=None)
@given(event=call_events)
def test_call_events_round_trip_through_their_json_line_form(event: models.CallEvent) -> None:
    line = event.model_dump_json()
    assert "\n" not in line
    assert models.CallEvent.from_json_line(line) == event == models.CallEvent.model_validate_json(line)
    assert json.loads(line)["payload"]["type"] == event.payload.type


def _phi_event(payload: models.CallPayload) -> models.CallEvent:
    return models.CallEvent(
        event_id=uuid.uuid4(),
        call_id="call-1",
        seq=3,
        occurred_at=datetime(2026, 3, 2, 14, 0, tzinfo=UTC),
        called_number="+15125550100",
        payload=payload,
    )


def test_repr_and_str_of_events_carry_no_phi() -> None:
    events: list[models.AvroModel] = [
        _phi_event(models.CallStarted(caller_number="+15125550142")),
        _phi_event(
            models.CallerIdentified(
                family_name="Okonkwo", given_name="Adaeze", birth_date=date(1961, 7, 4), callback_number="+15125550199"
            )
        ),
        _phi_event(
            models.IntentRecognised(
                intent=models.Intent.REFILL_REQUEST,
                confidence=0.97,
                medication_mentioned=True,
                controlled_substance_mentioned=True,
                transcript_snippet="my oxycodone ran out",
            )
        ),
        models.AuditEvent(
            event_id=uuid.uuid4(),
            occurred_at=datetime(2026, 3, 2, tzinfo=UTC),
            practice_id="pain-austin",
            caller_number="+15125550142",
            action=models.AuditAction.ESCALATION,
            outcome=models.AuditOutcome.SUCCESS,
        ),
        models.Reply(
            reply_id=uuid.uuid4(),
            call_id="call-1",
            in_reply_to=uuid.uuid4(),
            template="refill_sent_to_provider",
            text="Thank you Adaeze Okonkwo, your request was sent to your provider.",
            escalated=True,
            created_at=datetime(2026, 3, 2, tzinfo=UTC),
        ),
        models.CommandMessage(
            command_id=uuid.uuid4(),
            call_id="call-1",
            practice_id="pain-austin",
            kind=models.CommandKind.SEARCH_PATIENT,
            route=models.CommandRoute.FHIR,
            idempotency_key="call-1:search",
            params={"family": "Okonkwo", "given": "Adaeze", "birthdate": "1961-07-04"},
            issued_at=datetime(2026, 3, 2, tzinfo=UTC),
        ),
        models.DeadLetter(
            dead_letter_id=uuid.uuid4(),
            source_topic="callstream.call-events.v1",
            source_partition=0,
            source_offset=12,
            key=b"call-1",
            value=b'{"family_name": "Okonkwo", "birth_date": "1961-07-04"}',
            reason="called number matches no practice",
            error_class="UnknownPractice",
            failed_at=datetime(2026, 3, 2, tzinfo=UTC),
            attempts=1,
        ),
    ]
    for event in events:
        for rendered in (repr(event), str(event), f"{event!r}"):
            leaked = [value for value in PHI if value in rendered]
            assert not leaked, f"{type(event).__name__} leaks {leaked}"


JSON_LINE = {
    "event_id": "5b0c2f64-8f4e-4c53-9d6a-8b7f2c1e9a01",
    "call_id": "call-7f3a",
    "seq": 1,
    "occurred_at": "2026-03-02T14:05:09.123456+02:00",
    "called_number": "+15125550100",
    "payload": {
        "type": "caller_identified",
        "family_name": "Okonkwo",
        "given_name": "Adaeze",
        "birth_date": "1961-07-04",
    },
}


def test_timestamps_are_normalised_to_utc_milliseconds() -> None:
    event = models.CallEvent.from_json_line(json.dumps(JSON_LINE))
    assert event.occurred_at == datetime(2026, 3, 2, 12, 5, 9, 123000, tzinfo=UTC)
    assert event.occurred_at.tzinfo is UTC


def _with(path: str, value: Any) -> str:
    line = json.loads(json.dumps(JSON_LINE))
    *parents, last = path.split(".")
    target = line
    for part in parents:
        target = target[part]
    target[last] = value
    return json.dumps(line)


@pytest.mark.parametrize(
    ("line", "where"),
    [
        ("not json at all, Okonkwo", "Invalid JSON"),
        (_with("payload.birth_date", "04/07/1961"), "payload.caller_identified.birth_date"),
        (_with("payload.birth_date", 19610704), "payload.caller_identified.birth_date"),
        (_with("payload.birth_date", "1961-02-30"), "payload.caller_identified.birth_date"),
        (_with("payload.type", "Okonkwo"), "payload: union_tag_invalid"),
        (
            _with("payload.family_name", "Okonkwo\n2026-03-02 INFO fake log line"),
            "payload.caller_identified.family_name",
        ),
        (_with("occurred_at", "2026-03-02T14:05:09"), "occurred_at"),
        (_with("called_number", "5125550142"), "called_number"),
        (_with("call_id", "call 1\r\nInjected: header"), "call_id"),
        (_with("event_id", "Okonkwo-1961-07-04"), "event_id: uuid_parsing"),
        (_with("seq", -1), "seq"),
        (_with("payload.ssn", "078-05-1120"), "payload.caller_identified.ssn: Extra inputs are not permitted"),
    ],
    ids=[
        "invalid-json",
        "us-date",
        "numeric-dob",
        "impossible-dob",
        "unknown-tag",
        "control-characters",
        "naive-timestamp",
        "not-e164",
        "header-injection",
        "bad-uuid",
        "negative-seq",
        "extra-field",
    ],
)
def test_malformed_json_lines_raise_schema_errors_that_name_the_field_but_not_the_value(line: str, where: str) -> None:
    with pytest.raises(SchemaError) as failure:
        models.CallEvent.from_json_line(line)
    message = str(failure.value)
    assert message.startswith("invalid CallEvent: ") and where in message
    for value in ("Okonkwo", "1961", "04/07", "5125550142", "Injected", "078-05-1120"):
        assert value not in message


def test_intent_entities_are_checked() -> None:
    base: dict[str, Any] = {
        "type": "intent_recognised",
        "intent": "BOOK_APPOINTMENT",
        "confidence": 0.9,
        "medication_mentioned": False,
        "controlled_substance_mentioned": False,
    }
    accepted = models.CallEvent.from_json_line(
        _with("payload", {**base, "date_from": "2026-03-02", "date_to": "2026-03-09"})
    )
    assert isinstance(accepted.payload, models.IntentRecognised) and accepted.payload.date_to == date(2026, 3, 9)
    for broken, reason in [
        ({**base, "date_from": "2026-03-09", "date_to": "2026-03-02"}, "date_from must not be after date_to"),
        ({**base, "confidence": 1.5}, "less than or equal to 1"),
        ({**base, "intent": "PRESCRIBE_OPIOIDS"}, "payload.intent_recognised.intent: Input should be"),
        ({**base, "visit_reason": "ESI; DROP TABLE"}, "visit_reason"),
    ]:
        with pytest.raises(SchemaError, match=re.escape(reason)):
            models.CallEvent.from_json_line(_with("payload", broken))


def test_other_models_enforce_their_invariants() -> None:
    moment = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
    with pytest.raises(SchemaError, match="end must be after start"):
        models.OfferedSlot.from_avro(
            {
                "slot_id": "s1",
                "start": moment,
                "end": moment,
                "practitioner_display": "Dr. Rivera",
                "location_display": "North",
                "visit_reason": "esi",
            }
        )
    with pytest.raises(SchemaError, match=r"kind: Input should be 'SEARCH_PATIENT'"):
        models.CommandMessage.from_avro(
            {
                "command_id": uuid.uuid4(),
                "call_id": "c",
                "practice_id": "p",
                "kind": "WRITE_MEDICATION_REQUEST",
                "route": "FHIR",
                "idempotency_key": "k",
                "params": {},
                "issued_at": moment,
                "attempt": 1,
            }
        )
    alarm = {
        "alarm_id": uuid.uuid4(),
        "practice_id": "fleet",
        "kind": "CONSUMER_LAG",
        "state": "FIRING",
        "value": 1.0,
        "threshold": 0.5,
        "window_start": moment,
        "window_end": moment,
        "raised_at": moment,
        "detail": {},
    }
    assert models.Alarm.from_avro(alarm).practice_id == models.FLEET_PRACTICE_ID
    with pytest.raises(SchemaError, match="finite number"):
        models.Alarm.from_avro({**alarm, "value": float("nan")})
    with pytest.raises(SchemaError, match="window_end must not be before window_start"):
        models.Alarm.from_avro({**alarm, "window_start": datetime(2026, 3, 3, tzinfo=UTC)})
    with pytest.raises(SchemaError, match=r"detail\.<key>") as bad_key:
        models.Alarm.from_avro({**alarm, "detail": {"Okonkwo Adaeze": "x"}})
    assert "Okonkwo" not in str(bad_key.value)
    with pytest.raises(SchemaError, match="ema_deep_link"):
        models.AuditEvent.from_avro(
            {
                "event_id": uuid.uuid4(),
                "occurred_at": moment,
                "practice_id": models.UNRESOLVED_PRACTICE_ID,
                "action": "DEAD_LETTER",
                "outcome": "FAILURE",
                "ema_deep_link": "javascript:alert(1)",
            }
        )


def test_a_truncated_dead_letter_value_carries_what_identifies_the_original() -> None:
    letter = {
        "dead_letter_id": uuid.uuid4(),
        "source_topic": "callstream.call-events.v1",
        "source_partition": 3,
        "source_offset": 41,
        "key": b"call-1",
        "value": b"\xc3\x01head",
        "reason": "CallEvent message of 2000000 bytes exceeds the 1048576-byte limit",
        "error_class": "SchemaError",
        "failed_at": datetime(2026, 3, 2, tzinfo=UTC),
        "attempts": 1,
    }
    older = models.DeadLetter.from_avro(letter)  # as written before the size, digest and truncation fields
    assert older.value_size is None and older.value_sha256 is None and not older.value_truncated
    truncated = {**letter, "value_size": 2_000_000, "value_sha256": "ab" * 32, "value_truncated": True}
    assert models.DeadLetter.from_avro(truncated).value_truncated
    for missing in ({"value_size": None}, {"value_sha256": None}, {"value_size": 6}):
        with pytest.raises(SchemaError, match="truncated value needs"):
            models.DeadLetter.from_avro({**truncated, **missing})
    with pytest.raises(SchemaError, match="value_sha256"):
        models.DeadLetter.from_avro({**truncated, "value_sha256": "AB" * 32})


@pytest.mark.parametrize(
    ("link", "accepted"),
    [
        ("https://ema.example/firm/acme/chart/pat-1", True),
        ("http://127.0.0.1:8700/ema/acme/chart/pat-1", True),  # the sandbox's EMA
        ("http://localhost:8700/ema/acme/chart/pat-1", True),
        ("http://[::1]/ema/acme/chart/pat-1", True),
        ("http://ema.example/firm/acme/chart/pat-1", False),  # plain http off the loopback interface
        ("http://127.0.0.1.evil.example/chart", False),
        ("javascript:alert(1)", False),
        ("https://ema.example/chart/pat 1", False),
    ],
)
def test_an_ema_deep_link_is_https_or_loopback_http(link: str, accepted: bool) -> None:
    record = {"event_id": uuid.uuid4(), "occurred_at": datetime(2026, 3, 2, tzinfo=UTC), "practice_id": "pain-1001",
              "action": "FHIR_READ", "outcome": "SUCCESS", "ema_deep_link": link}
    if accepted:
        assert models.AuditEvent.from_avro(record).ema_deep_link == link
    else:
        with pytest.raises(SchemaError, match="ema_deep_link"):
            models.AuditEvent.from_avro(record)


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ("not a mapping", "record must be a mapping"),
        ({"payload": {"caller_number": "+15125550142"}}, "union branch"),
        ({"payload": ("dev.callstream.v1.Prescription", {})}, "not a known call step record"),
    ],
)
def test_call_event_from_avro_refuses_malformed_records(record: Any, reason: str) -> None:
    with pytest.raises(SchemaError, match=reason):
        models.CallEvent.from_avro(record)


def test_birth_date_travels_as_yyyy_mm_dd_text_in_the_avro_record() -> None:
    event = _phi_event(models.CallerIdentified(family_name="Okonkwo", given_name="Adaeze", birth_date=date(1961, 7, 4)))
    assert event.to_avro()["payload"] == (
        "dev.callstream.v1.CallerIdentified",
        {"family_name": "Okonkwo", "given_name": "Adaeze", "birth_date": "1961-07-04", "callback_number": None,
         "email": None, "contact_channel": None, "registration": None},
    )


def test_the_contract_speaks_the_guards_vocabulary() -> None:
    """schemas may not import guards (docs/CONTRACTS.md), so the shared values are pinned here."""
    assert [intent.value for intent in models.Intent] == [intent.value for intent in guards_model.Intent]
    assert [kind.value for kind in models.CommandKind] == [command.value for command in guards_model.Command]
    visit_reason_doc = next(
        field["doc"]
        for branch in default_catalogue().current("CallEvent").definition["fields"][5]["type"]
        if branch["name"] == "IntentRecognised"
        for field in branch["fields"]
        if field["name"] == "visit_reason"
    )
    documented = re.search(r"\(([^)]*)\)", visit_reason_doc)
    assert documented is not None
    assert documented.group(1).split(", ") == [reason.value for reason in guards_model.VisitReason]
