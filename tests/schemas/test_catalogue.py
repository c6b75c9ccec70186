"""Loading the shipped schemas, and clear errors for broken schema files."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from schemas.catalogue import AVRO_DIR, NAMESPACE, RELEASED_DIR, SchemaCatalogue, default_catalogue
from schemas.errors import SchemaError


def test_shipped_catalogue_has_every_schema_and_its_released_snapshot() -> None:
    catalogue = default_catalogue()
    assert set(catalogue.names) == {path.stem for path in AVRO_DIR.glob("*.avsc")}
    assert "v1" in catalogue.released and set(catalogue.released["v1"]) == set(catalogue.names)
    for schemas in catalogue.released.values():
        for schema in schemas.values():
            known = catalogue.by_fingerprint(schema.fingerprint)
            assert known is not None and known.name == schema.name
    assert catalogue.by_fingerprint(bytes(8)) is None


def _catalogue_dir(tmp_path: Path) -> Path:
    avro = tmp_path / "avro"
    shutil.copytree(AVRO_DIR, avro)
    return avro


@pytest.mark.parametrize(
    ("file_name", "content", "reason"),
    [
        ("Broken.avsc", "{not json", "Broken.avsc: not a valid Avro schema"),
        (
            "Typo.avsc",
            json.dumps(
                {"type": "record", "name": "Typo", "namespace": NAMESPACE, "fields": [{"name": "x", "type": "strng"}]}
            ),
            "Typo.avsc: not a valid Avro schema",
        ),
        ("Listed.avsc", json.dumps(["null", "string"]), "Listed.avsc: top-level schema must be a record"),
        (
            "Mismatch.avsc",
            json.dumps({"type": "record", "name": "Other", "namespace": NAMESPACE, "fields": []}),
            f"must be named {NAMESPACE}.Mismatch",
        ),
        (
            "Elsewhere.avsc",
            json.dumps({"type": "record", "name": "Elsewhere", "namespace": "com.acme", "fields": []}),
            f"must be named {NAMESPACE}.Elsewhere",
        ),
    ],
    ids=["json", "unknown-type", "not-a-record", "name", "namespace"],
)
def test_a_broken_schema_file_is_named_in_the_error(tmp_path: Path, file_name: str, content: str, reason: str) -> None:
    avro = _catalogue_dir(tmp_path)
    (avro / file_name).write_text(content)
    with pytest.raises(SchemaError, match=reason):
        SchemaCatalogue.load(avro, RELEASED_DIR)


def test_an_empty_schema_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match=r"no \.avsc schemas found"):
        SchemaCatalogue.load(tmp_path, tmp_path / "released")


def test_two_schemas_with_one_fingerprint_are_refused() -> None:
    """The fingerprint must identify one schema, or single-object data would decode as the wrong record."""
    alarm = default_catalogue().current("Alarm")
    with pytest.raises(SchemaError, match="schemas Alarm and Impostor have the same fingerprint"):
        SchemaCatalogue({"Alarm": alarm}, {"v0": {"Impostor": replace(alarm, name="Impostor")}})
