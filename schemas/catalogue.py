"""Loads the Avro schemas shipped in schemas/avro and schemas/released, parsed once.

Every schema version callstream ever released stays decodable: the catalogue indexes current and
released schemas by their CRC-64-AVRO fingerprint, which is what the single-object encoding
carries in each message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fastavro.schema import SchemaParseException, fingerprint, load_schema, to_parsing_canonical_form

from schemas.errors import SchemaError

NAMESPACE = "dev.callstream.v1"
AVRO_DIR = Path(__file__).resolve().parent / "avro"
RELEASED_DIR = Path(__file__).resolve().parent / "released"
CURRENT = "current"

ParsedSchema = dict[str, Any]


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One version of a top-level record schema, parsed and fingerprinted."""

    name: str
    """Record name without namespace, e.g. "CallEvent"."""
    version: str
    """"current" or the released directory name, e.g. "v1"."""
    text: str
    """The schema JSON of the .avsc file, compact (what gets registered)."""
    parsed: ParsedSchema
    """fastavro's parsed form, ready for schemaless_writer/reader."""
    canonical_form: str
    fingerprint: bytes
    """8-byte little-endian CRC-64-AVRO of the parsing canonical form (single-object header)."""

    @property
    def definition(self) -> dict[str, Any]:
        """A fresh copy of the schema JSON, safe to hand to code that mutates it."""
        definition: dict[str, Any] = json.loads(self.text)
        return definition


def crc64_avro_fingerprint(canonical_form: str) -> bytes:
    """The CRC-64-AVRO fingerprint as the 8 little-endian bytes of the single-object encoding."""
    return bytes.fromhex(fingerprint(canonical_form, "CRC-64-AVRO"))


def load_version(path: Path, version: str) -> SchemaVersion:
    """Load, parse and check one .avsc file: its record name must match the file name.

    Raises:
        SchemaError: unreadable file, invalid JSON or Avro, or a name/namespace mismatch.
    """
    try:
        definition = json.loads(path.read_text(encoding="utf-8"))
        parsed = load_schema(str(path))
    except (OSError, json.JSONDecodeError, SchemaParseException, ValueError, TypeError, KeyError) as exc:
        raise SchemaError(f"{path}: not a valid Avro schema ({type(exc).__name__}: {exc})") from None
    if not isinstance(definition, dict) or definition.get("type") != "record" or not isinstance(parsed, dict):
        raise SchemaError(f"{path}: top-level schema must be a record")
    if definition.get("name") != path.stem or definition.get("namespace") != NAMESPACE:
        raise SchemaError(f"{path}: record must be named {NAMESPACE}.{path.stem}")
    canonical_form = to_parsing_canonical_form(parsed)
    return SchemaVersion(
        name=path.stem,
        version=version,
        text=json.dumps(definition, separators=(",", ":")),
        parsed=parsed,
        canonical_form=canonical_form,
        fingerprint=crc64_avro_fingerprint(canonical_form),
    )


class SchemaCatalogue:
    """Current schemas by name, released versions by version, every version by fingerprint."""

    def __init__(self, current: Mapping[str, SchemaVersion], released: Mapping[str, Mapping[str, SchemaVersion]]):
        self._current = MappingProxyType(dict(current))
        self._released = MappingProxyType(
            {version: MappingProxyType(dict(schemas)) for version, schemas in released.items()}
        )
        by_fingerprint: dict[bytes, SchemaVersion] = {}
        for schema in [*current.values(), *(s for schemas in released.values() for s in schemas.values())]:
            known = by_fingerprint.setdefault(schema.fingerprint, schema)
            if known.name != schema.name:
                raise SchemaError(f"schemas {known.name} and {schema.name} have the same fingerprint")
        self._by_fingerprint = MappingProxyType(by_fingerprint)

    @classmethod
    def load(cls, avro_dir: Path = AVRO_DIR, released_dir: Path = RELEASED_DIR) -> SchemaCatalogue:
        """Load every *.avsc of avro_dir (current) and of each released_dir/<version>/."""
        current = {path.stem: load_version(path, CURRENT) for path in sorted(avro_dir.glob("*.avsc"))}
        if not current:
            raise SchemaError(f"{avro_dir}: no .avsc schemas found")
        released = (
            {
                version_dir.name: {
                    path.stem: load_version(path, version_dir.name) for path in sorted(version_dir.glob("*.avsc"))
                }
                for version_dir in sorted(released_dir.iterdir())
                if version_dir.is_dir()
            }
            if released_dir.is_dir()
            else {}
        )
        return cls(current, released)

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the current top-level schemas."""
        return tuple(self._current)

    @property
    def released(self) -> Mapping[str, Mapping[str, SchemaVersion]]:
        """Released versions: version directory name -> schema name -> schema."""
        return self._released

    def current(self, name: str) -> SchemaVersion:
        """The current version of a schema.

        Raises:
            SchemaError: no such schema.
        """
        try:
            return self._current[name]
        except KeyError:
            raise SchemaError(f"unknown schema {name!r}; known: {', '.join(self._current)}") from None

    def by_fingerprint(self, schema_fingerprint: bytes) -> SchemaVersion | None:
        """The schema version (current or released) with this fingerprint, if callstream knows it."""
        return self._by_fingerprint.get(schema_fingerprint)


@cache
def default_catalogue() -> SchemaCatalogue:
    """The catalogue of the schemas shipped with this package, loaded once per process."""
    return SchemaCatalogue.load()
