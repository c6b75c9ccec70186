"""SchemaRegistryClient against a registry-compatible HTTP server on 127.0.0.1."""

from __future__ import annotations

import pytest

from schemas.catalogue import default_catalogue
from schemas.errors import SchemaError, SchemaRegistryError
from schemas.registry import SchemaRegistryClient
from tests.schemas.schema_registry_double import SchemaRegistryDouble

SUBJECT = "callstream.audit.v1-value"


def test_register_is_idempotent_and_cached(
    registry: SchemaRegistryDouble, registry_client: SchemaRegistryClient
) -> None:
    schema = default_catalogue().current("AuditEvent").definition
    first = registry_client.register(SUBJECT, schema)
    assert registry_client.register(SUBJECT, schema) == first
    with SchemaRegistryClient(registry.url) as other_client:
        assert other_client.register(SUBJECT, schema) == first
    assert registry.state.requests.count(("POST", f"/subjects/{SUBJECT}/versions")) == 2
    assert registry_client.schema_by_id(first) == schema
    assert not any(method == "GET" for method, _ in registry.state.requests)


def test_schema_by_id_returns_what_another_producer_registered(
    registry: SchemaRegistryDouble, registry_client: SchemaRegistryClient
) -> None:
    schema = default_catalogue().current("Alarm").definition
    schema_id = registry.add_schema("callstream.alarms.v1-value", schema)
    assert registry_client.schema_by_id(schema_id) == schema
    assert registry_client.schema_by_id(schema_id) == schema
    assert registry.state.requests == [("GET", f"/schemas/ids/{schema_id}")]


def test_unknown_id_is_a_schema_error(registry_client: SchemaRegistryClient) -> None:
    with pytest.raises(SchemaError, match="schema id 77 is not known"):
        registry_client.schema_by_id(77)


def test_a_schema_the_registry_rejects_is_a_registry_error_with_its_code(registry_client: SchemaRegistryClient) -> None:
    with pytest.raises(SchemaRegistryError, match=r"HTTP 422 .*error_code 42201"):
        registry_client.register(
            SUBJECT, {"type": "record", "name": "Broken", "fields": [{"name": "x", "type": "nope"}]}
        )


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (500, b'{"error_code": 50001, "message": "Error in the backend data store"}', r"HTTP 500 .*error_code 50001"),
        (200, b"<html>proxy login</html>", "invalid JSON"),
        (200, b"[1, 2]", "non-object"),
        (200, b'{"id": "seven"}', "without a valid id"),
        (200, b'{"id": -1}', "without a valid id"),
    ],
    ids=["server-error", "html", "array", "string-id", "negative-id"],
)
def test_misbehaving_registry_answers_to_register_are_registry_errors(
    registry: SchemaRegistryDouble, registry_client: SchemaRegistryClient, status: int, body: bytes, reason: str
) -> None:
    registry.answer_next_with(status, body)
    with pytest.raises(SchemaRegistryError, match=reason):
        registry_client.register(SUBJECT, default_catalogue().current("AuditEvent").definition)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"schema": 12}', "no Avro schema"),
        (b'{"schema": "{}", "schemaType": "PROTOBUF"}', "no Avro schema"),
        (b'{"schema": "{not json"}', "invalid JSON for schema id 1"),
        (b'{"schema": "\\"string\\""}', "non-record schema"),
    ],
    ids=["number", "protobuf", "broken-json", "primitive"],
)
def test_misbehaving_registry_answers_to_fetch_are_registry_errors(
    registry: SchemaRegistryDouble, registry_client: SchemaRegistryClient, body: bytes, reason: str
) -> None:
    registry.answer_next_with(200, body)
    with pytest.raises(SchemaRegistryError, match=reason):
        registry_client.schema_by_id(1)


def test_credentials_from_the_url_authenticate_and_never_appear_in_errors(registry: SchemaRegistryDouble) -> None:
    registry.state.required_auth = ("callstream", "s3cret-registry-key")
    host_port = registry.url.removeprefix("http://")
    with SchemaRegistryClient(f"http://callstream:s3cret-registry-key@{host_port}/") as client:
        assert client.display_url == registry.url
        schema_id = client.register(SUBJECT, default_catalogue().current("AuditEvent").definition)
        assert isinstance(schema_id, int)
    with (
        SchemaRegistryClient(f"http://callstream:wrong-key@{host_port}") as client,
        pytest.raises(SchemaRegistryError, match="HTTP 401") as denied,
    ):
        client.register(SUBJECT, default_catalogue().current("AuditEvent").definition)
    assert "wrong-key" not in str(denied.value) and "callstream:" not in str(denied.value)


@pytest.mark.parametrize("url", ["ftp://registry:8081", "registry:8081", "http://", ""])
def test_a_registry_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(SchemaRegistryError, match="must be http"):
        SchemaRegistryClient(url)
