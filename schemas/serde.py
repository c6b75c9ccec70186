"""Avro serialization of the event contract in the two framings callstream speaks.

- Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro binary) when a Schema
  Registry is configured: what Confluent/Java/Go clients of the telephony side expect.
- Avro single-object encoding (0xC3 0x01, 8-byte little-endian CRC-64-AVRO fingerprint, Avro
  binary) otherwise: self-describing without any registry, the fingerprint is looked up in the
  local catalogue of current and released schemas.

Decoding accepts both framings regardless of configuration, so a topic can migrate between them.
Schemas are parsed once; the per-message work is one fastavro schemaless write or read.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import SchemaParseException, parse_schema, to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

from schemas.catalogue import ParsedSchema, SchemaCatalogue, SchemaVersion, crc64_avro_fingerprint, default_catalogue
from schemas.errors import SchemaError, SchemaRegistryError
from schemas.registry import SchemaRegistryClient
from schemas.topics import Topic, topic_named

__all__ = ["AvroSerde", "SchemaError", "SchemaRegistryError"]

CONFLUENT_MAGIC = b"\x00"
CONFLUENT_HEADER_SIZE = 5
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
SINGLE_OBJECT_HEADER_SIZE = 10
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
"""Kafka's default max.message.bytes; anything larger is refused before decoding."""


@dataclass(frozen=True, slots=True)
class _Resolution:
    """How to read data written with one writer schema: reader None means "same schema, no resolution"."""

    writer: ParsedSchema
    reader: ParsedSchema | None


class AvroSerde:
    """Encodes and decodes the values of one record schema (e.g. "CallEvent").

    Records are the Avro form of schemas.models (`Model.to_avro()` / `Model.from_avro()`): plain
    dicts, union branches of records as (fullname, dict) tuples, timestamps as aware datetimes.
    """

    def __init__(
        self,
        schema_name: str,
        *,
        catalogue: SchemaCatalogue | None = None,
        registry: SchemaRegistryClient | None = None,
        subject: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ):
        """With `registry` (and the subject to register under) encode uses the Confluent wire format.

        Raises:
            SchemaError: unknown schema name.
            ValueError: a registry without a subject.
        """
        if registry is not None and not subject:
            raise ValueError("a schema registry needs the subject to register the schema under")
        self._catalogue = catalogue or default_catalogue()
        self._schema: SchemaVersion = self._catalogue.current(schema_name)
        self._registry = registry
        self._subject = subject
        self._max_message_bytes = max_message_bytes
        self._schema_id: int | None = None
        self._single_object_header = SINGLE_OBJECT_MAGIC + self._schema.fingerprint
        self._by_fingerprint: dict[bytes, _Resolution] = {}
        self._by_schema_id: dict[int, _Resolution] = {}

    @classmethod
    def for_topic(
        cls,
        topic: Topic | str,
        *,
        catalogue: SchemaCatalogue | None = None,
        registry: SchemaRegistryClient | None = None,
    ) -> AvroSerde:
        """The serde of a topic's value schema; with a registry, the subject is "<topic>-value"."""
        entry = topic_named(topic) if isinstance(topic, str) else topic
        return cls(entry.value_schema, catalogue=catalogue, registry=registry, subject=entry.registry_subject)

    @property
    def schema_name(self) -> str:
        """Name of the record schema this serde writes (and reads into)."""
        return self._schema.name

    def register(self) -> int:
        """Register the schema now (instead of on the first encode) and return its registry id.

        Raises:
            SchemaRegistryError: no registry configured, or it is unreachable or refuses the schema.
        """
        if self._registry is None or self._subject is None:
            raise SchemaRegistryError("no schema registry configured for this serde")
        if self._schema_id is None:
            self._schema_id = self._registry.register(self._subject, self._schema.definition)
        return self._schema_id

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Frame and Avro-encode one record.

        Raises:
            SchemaError: the record does not fit the schema (names fields, never values).
            SchemaRegistryError: the registry is needed and unavailable.
        """
        if not isinstance(record, Mapping):
            raise SchemaError(f"{self.schema_name} record must be a mapping, not {type(record).__name__}")
        if self._registry is not None:
            header = CONFLUENT_MAGIC + self.register().to_bytes(4, "big")
        else:
            header = self._single_object_header
        buffer = io.BytesIO()
        buffer.write(header)
        try:
            schemaless_writer(buffer, self._schema.parsed, record, strict_allow_default=True)
        except Exception:  # noqa: BLE001 - fastavro raises many types; the original message may hold values (PHI)
            raise SchemaError(self._describe_write_failure(record)) from None
        return buffer.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        """Decode one framed message into a record of this serde's schema.

        Data written with an older released schema (or an older registry version) is resolved
        to the current schema by Avro's rules.

        Raises:
            SchemaError: empty, oversized, unknown framing or schema, truncated, trailing bytes,
                or written with a schema that is not a version of this one.
            SchemaRegistryError: the registry is needed and unavailable.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise SchemaError(f"{self.schema_name} message must be bytes, not {type(data).__name__}")
        size = len(data)
        if size == 0:
            raise SchemaError(f"{self.schema_name} message is empty")
        if size > self._max_message_bytes:
            raise SchemaError(
                f"{self.schema_name} message of {size} bytes exceeds the {self._max_message_bytes}-byte limit"
            )
        if data[:2] == SINGLE_OBJECT_MAGIC:
            resolution, offset = (
                self._resolution_for_fingerprint(bytes(data[2:SINGLE_OBJECT_HEADER_SIZE]), size),
                SINGLE_OBJECT_HEADER_SIZE,
            )
        elif data[:1] == CONFLUENT_MAGIC:
            resolution, offset = self._resolution_for_schema_id(data, size), CONFLUENT_HEADER_SIZE
        else:
            raise SchemaError(
                f"{self.schema_name} message has unknown framing (first byte 0x{data[0]:02x}); expected "
                "single-object encoding (0xc3 0x01) or Confluent wire format (0x00)"
            )
        stream = io.BytesIO(data)
        stream.seek(offset)
        try:
            record = schemaless_reader(
                stream,
                resolution.writer,
                resolution.reader,
                return_record_name=True,
                return_record_name_override=True,
            )
        except Exception as exc:  # noqa: BLE001 - truncated or hostile bytes raise many types
            raise SchemaError(
                f"{self.schema_name} message is malformed ({type(exc).__name__} after byte {stream.tell()} of {size})"
            ) from None
        if stream.tell() != size:
            raise SchemaError(f"{self.schema_name} message has {size - stream.tell()} trailing bytes after the record")
        if not isinstance(record, dict):  # narrows fastavro's union return type: the top level is a record
            raise SchemaError(f"{self.schema_name} message did not decode to a record")
        return record

    def _resolution_for_fingerprint(self, schema_fingerprint: bytes, size: int) -> _Resolution:
        """Reader plan for single-object data: the writer must be a known version of this schema."""
        if size < SINGLE_OBJECT_HEADER_SIZE:
            raise SchemaError(f"{self.schema_name} message is shorter than the single-object header")
        resolution = self._by_fingerprint.get(schema_fingerprint)
        if resolution is not None:
            return resolution
        writer = self._catalogue.by_fingerprint(schema_fingerprint)
        if writer is None:
            raise SchemaError(
                f"{self.schema_name} message was written with unknown schema fingerprint {schema_fingerprint.hex()}"
            )
        if writer.name != self.schema_name:
            raise SchemaError(f"{self.schema_name} message was written with schema {writer.name}")
        resolution = self._plan(writer.parsed, writer.canonical_form)
        self._by_fingerprint[schema_fingerprint] = resolution
        return resolution

    def _resolution_for_schema_id(self, data: bytes | bytearray | memoryview, size: int) -> _Resolution:
        """Reader plan for Confluent-framed data, fetching the writer schema from the registry once per id."""
        if size < CONFLUENT_HEADER_SIZE:
            raise SchemaError(f"{self.schema_name} message is shorter than the Confluent wire-format header")
        schema_id = int.from_bytes(data[1:CONFLUENT_HEADER_SIZE], "big")
        resolution = self._by_schema_id.get(schema_id)
        if resolution is not None:
            return resolution
        if self._registry is None:
            raise SchemaError(
                f"{self.schema_name} message uses the Confluent wire format (schema id {schema_id}) "
                "but no schema registry is configured"
            )
        definition = self._registry.schema_by_id(schema_id)
        try:
            writer = parse_schema(definition)
            canonical_form = to_parsing_canonical_form(writer)
        except (SchemaParseException, ValueError, TypeError, KeyError, AttributeError):
            raise SchemaError(f"schema id {schema_id} from the registry is not a valid Avro schema") from None
        if not isinstance(writer, dict) or writer.get("name") != self._schema.parsed["name"]:
            raise SchemaError(
                f"{self.schema_name} message was written with registry schema id {schema_id} of another record"
            )
        resolution = self._plan(writer, canonical_form)
        self._by_schema_id[schema_id] = resolution
        return resolution

    def _plan(self, writer: ParsedSchema, writer_canonical_form: str) -> _Resolution:
        """Skip schema resolution (the slow path) when the writer is the current schema."""
        if crc64_avro_fingerprint(writer_canonical_form) == self._schema.fingerprint:
            return _Resolution(writer=self._schema.parsed, reader=None)
        return _Resolution(writer=writer, reader=self._schema.parsed)

    def _describe_write_failure(self, record: Mapping[str, Any]) -> str:
        """Name the offending fields of a record that failed to encode, without their values."""
        try:
            validate(record, self._schema.parsed, raise_errors=True)
        except ValidationError as exc:
            fields = sorted({error.field or self.schema_name for error in exc.errors})
            return f"{self.schema_name} record has wrong types or values in: {', '.join(fields)}"
        except Exception:  # noqa: BLE001 - validate itself trips over some malformed shapes
            return f"{self.schema_name} record is malformed"
        known = {field["name"] for field in self._schema.parsed["fields"]}
        required = {field["name"] for field in self._schema.parsed["fields"] if "default" not in field}
        unknown = sorted(str(name)[:64] for name in set(record) - known)
        missing = sorted(required - set(record))
        problems = [f"unknown fields: {', '.join(unknown)}"] if unknown else []
        problems += [f"missing fields: {', '.join(missing)}"] if missing else []
        summary = "; ".join(problems) or "a nested record has unknown or missing fields"
        return f"{self.schema_name} record does not fit the schema ({summary})"
