"""The topic catalogue, docs/asyncapi.yaml and docs/events.md describe the same contract."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.catalogue import default_catalogue
from schemas.models import CallEvent
from schemas.topics import AUDIT, CALL_EVENTS, DEAD_LETTER, TOPICS, TOPICS_BY_NAME, Topic, topic_named

DOCS = Path(__file__).resolve().parents[2] / "docs"
TOPIC_NAME = re.compile(r"callstream\.[a-z][a-z-]*\.v\d+")


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
    return document


@pytest.fixture(scope="module")
def events_md() -> str:
    return (DOCS / "events.md").read_text()


def _resolve(document: dict[str, Any], reference: dict[str, str]) -> Any:
    """Follow a local JSON pointer ($ref: '#/a/b')."""
    pointer = reference["$ref"]
    assert pointer.startswith("#/"), pointer
    node: Any = document
    for part in pointer[2:].split("/"):
        node = node[part]
    return node


def test_catalogue_names_schemas_that_exist_and_uses_every_schema() -> None:
    assert {topic.value_schema for topic in TOPICS} == set(default_catalogue().names)
    assert len(TOPICS_BY_NAME) == len(TOPICS)
    for topic in TOPICS:
        fields = [field["name"] for field in default_catalogue().current(topic.value_schema).definition["fields"]]
        assert topic.key_field in fields, topic.name


def test_asyncapi_lists_exactly_the_catalogue_topics_with_their_settings(asyncapi: dict[str, Any]) -> None:
    assert asyncapi["asyncapi"] == "3.0.0"
    channels = {channel["address"]: channel for channel in asyncapi["channels"].values()}
    assert set(channels) == set(TOPICS_BY_NAME)
    for name, channel in channels.items():
        topic = TOPICS_BY_NAME[name]
        kafka = channel["bindings"]["kafka"]
        assert kafka["topic"] == name
        assert kafka["partitions"] == topic.partitions
        assert kafka["topicConfiguration"] == {
            "cleanup.policy": [topic.cleanup_policy],
            "retention.ms": topic.retention_ms,
        }
        assert channel["x-producer"] == topic.producer
        assert channel["x-consumers"] == list(topic.consumers)
        assert channel["x-compatibility"] == topic.compatibility.value
        [message_ref] = channel["messages"].values()
        message = _resolve(asyncapi, message_ref)
        assert message["name"] == topic.value_schema
        assert message["payload"]["schemaFormat"].startswith("application/vnd.apache.avro+json")
        schema_file = (DOCS / message["payload"]["schema"]["$ref"]).resolve()
        assert schema_file.is_file() and schema_file.stem == topic.value_schema


def test_asyncapi_operations_point_at_channels_and_their_messages(asyncapi: dict[str, Any]) -> None:
    operated = set()
    for operation in asyncapi["operations"].values():
        assert operation["action"] in ("send", "receive")
        channel = _resolve(asyncapi, operation["channel"])
        operated.add(channel["address"])
        for message_ref in operation["messages"]:
            assert _resolve(asyncapi, message_ref) in channel["messages"].values()
    assert operated == set(TOPICS_BY_NAME)


def test_events_md_lists_exactly_the_catalogue_topics(events_md: str) -> None:
    assert set(TOPIC_NAME.findall(events_md)) == set(TOPICS_BY_NAME)
    rows = {row.split("|")[1].strip(" `"): row for row in events_md.splitlines() if row.startswith("| `callstream.")}
    assert set(rows) == set(TOPICS_BY_NAME)
    for name, row in rows.items():
        topic = TOPICS_BY_NAME[name]
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[2] == str(topic.partitions)
        days = topic.retention_ms // 86_400_000
        assert cells[3] == f"{topic.cleanup_policy} / {days} day{'s' if days > 1 else ''}"
        assert f"[`{topic.value_schema}`]" in cells[4]
        assert cells[5].replace("`", "") == topic.producer
        assert cells[6] == ", ".join(topic.consumers)
        assert cells[7] == topic.compatibility.value
    assert "callstream-worker-<table>-changelog" in events_md


def _records(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, list):
        return [record for item in node for record in _records(item)]
    if not isinstance(node, dict):
        return []
    if node.get("type") == "record":
        return [node, *(record for field in node["fields"] for record in _records(field["type"]))]
    return _records(node.get("items")) + _records(node.get("values"))


def test_events_md_documents_every_field_of_every_record(events_md: str) -> None:
    sections = re.split(r"^#{2,3} ", events_md, flags=re.MULTILINE)
    section_by_record = {section.split("\n", 1)[0].strip("` "): section for section in sections[1:]}
    for schema_name in default_catalogue().names:
        for record in _records(default_catalogue().current(schema_name).definition):
            section = section_by_record.get(record["name"])
            assert section is not None, f"events.md has no section for {record['name']}"
            documented = re.findall(r"^\| `([a-z][a-z0-9_]*)` \|", section, flags=re.MULTILINE)
            assert documented == [field["name"] for field in record["fields"]], record["name"]


def test_every_schema_element_carries_a_doc() -> None:
    def undocumented(node: Any, path: str) -> list[str]:
        if isinstance(node, list):
            return [gap for item in node for gap in undocumented(item, path)]
        if not isinstance(node, dict):
            return []
        gaps = []
        if node.get("type") in ("record", "enum") and not node.get("doc"):
            gaps.append(f"{path}:{node['name']}")
        for field in node.get("fields", ()):
            if not field.get("doc"):
                gaps.append(f"{path}.{field['name']}")
            gaps += undocumented(field["type"], f"{path}.{field['name']}")
        return gaps + undocumented(node.get("items"), path) + undocumented(node.get("values"), path)

    for name in default_catalogue().names:
        assert undocumented(default_catalogue().current(name).definition, name) == []


def test_events_md_example_call_is_valid_jsonl(events_md: str) -> None:
    block = re.search(r"```jsonl\n(.*?)```", events_md, re.DOTALL)
    assert block, "events.md lost its JSONL example"
    events = [CallEvent.model_validate_json(line) for line in block.group(1).splitlines()]
    assert [event.payload.type for event in events] == [
        "call_started",
        "caller_identified",
        "intent_recognised",
        "slot_chosen",
        "call_ended",
    ]
    assert {event.call_id for event in events} == {"call-20260302-0001"}
    assert [event.seq for event in events] == list(range(len(events)))


def test_message_keys_come_from_the_key_field() -> None:
    assert topic_named(CALL_EVENTS).key_of({"call_id": "call-1"}) == b"call-1"
    assert topic_named(AUDIT).key_of({"practice_id": "pain-austin"}) == b"pain-austin"
    assert topic_named(DEAD_LETTER).key_of({"key": b"\x00raw"}) == b"\x00raw"
    assert topic_named(DEAD_LETTER).key_of({"key": None}) is None
    assert topic_named(CALL_EVENTS).registry_subject == "callstream.call-events.v1-value"
    with pytest.raises(ValueError, match="lacks key field 'call_id'"):
        topic_named(CALL_EVENTS).key_of({"practice_id": "p"})
    with pytest.raises(ValueError, match="must be a string or bytes, not int"):
        topic_named(CALL_EVENTS).key_of({"call_id": 7})
    with pytest.raises(KeyError, match="unknown topic"):
        topic_named("callstream.calls")


def test_topics_are_immutable() -> None:
    topic: Topic = TOPICS[0]
    with pytest.raises(AttributeError):
        topic.partitions = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        TOPICS_BY_NAME["x"] = topic  # type: ignore[index]
