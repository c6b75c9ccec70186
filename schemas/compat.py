"""Schema compatibility checks by the Avro schema-resolution rules.

`check_backward(old, new)` lists what stops a reader on `new` from reading data written with
`old` (the telephony producer keeps writing with the released schema after we deploy a new one);
`check_forward` the reverse (a reader still on `old` meets data written with `new`). CI runs them
against the snapshots in schemas/released, so a breaking change fails before it ships.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastavro.schema import SchemaParseException, UnknownType, parse_schema

from schemas.topics import Compatibility

Schema = Any
"""An Avro schema in JSON form or fastavro's parsed form."""

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
PROMOTIONS: Mapping[str, frozenset[str]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}
"""Writer type -> reader types it may be promoted to (Avro specification, schema resolution)."""


def check_backward(old_schema: Schema, new_schema: Schema) -> list[str]:
    """Problems a reader using `new_schema` has with data written with `old_schema`; empty when compatible."""
    invalid = _invalid("old", old_schema) + _invalid("new", new_schema)
    return invalid or _Resolver(writer=old_schema, reader=new_schema).problems()


def check_forward(old_schema: Schema, new_schema: Schema) -> list[str]:
    """Problems a reader still using `old_schema` has with data written with `new_schema`."""
    invalid = _invalid("old", old_schema) + _invalid("new", new_schema)
    return invalid or _Resolver(writer=new_schema, reader=old_schema).problems()


def check_compatibility(old_schema: Schema, new_schema: Schema, mode: Compatibility) -> list[str]:
    """Problems under a topic's compatibility mode, each prefixed with the direction that breaks."""
    problems = [f"backward: {problem}" for problem in check_backward(old_schema, new_schema)]
    if mode is Compatibility.FULL:
        problems += [f"forward: {problem}" for problem in check_forward(old_schema, new_schema)]
    return problems


def _invalid(role: str, schema: Schema) -> list[str]:
    """A schema fastavro cannot parse is a problem in itself, not a crash of the checker."""
    try:
        parse_schema(schema, named_schemas={})
    except (SchemaParseException, UnknownType, ValueError, TypeError, KeyError, AttributeError) as exc:
        return [f"{role} schema is not valid Avro ({type(exc).__name__}: {exc})"]
    return []


def _parse(schema: Schema) -> tuple[Schema, dict[str, Any]]:
    """fastavro's parsed form (full names everywhere) and its named types."""
    named: dict[str, Any] = {}
    return parse_schema(schema, named_schemas=named), named


def _short_name(full_name: str) -> str:
    return full_name.rsplit(".", 1)[-1]


class _Resolver:
    """Walks writer and reader schemas together, collecting every resolution failure."""

    def __init__(self, writer: Schema, reader: Schema):
        self._writer, self._writer_names = _parse(writer)
        self._reader, self._reader_names = _parse(reader)
        self._problems: list[str] = []
        self._visited: set[tuple[str, str]] = set()

    def problems(self) -> list[str]:
        root = self._resolve(self._reader, self._reader_names)
        name = root.get("name", "schema") if isinstance(root, dict) else "schema"
        self._check(self._writer, self._reader, _short_name(str(name)))
        return self._problems

    def _resolve(self, schema: Schema, names: Mapping[str, Any]) -> Schema:
        """Replace a reference to a named type by its definition."""
        if isinstance(schema, str) and schema not in PRIMITIVES:
            return names[schema]
        return schema

    def _type_name(self, schema: Schema) -> str:
        if isinstance(schema, list):
            return "union"
        if isinstance(schema, str):
            return schema
        return str(schema["type"])

    def _describe(self, schema: Schema, names: Mapping[str, Any]) -> str:
        resolved = self._resolve(schema, names)
        type_name = self._type_name(resolved)
        if type_name in ("record", "enum", "fixed"):
            return f"{type_name} {_short_name(resolved['name'])}"
        if isinstance(resolved, dict) and "logicalType" in resolved:
            return f"{type_name}/{resolved['logicalType']}"
        return type_name

    def _matches(self, writer: Schema, reader: Schema) -> bool:
        """Whether the reader type can take the writer type at all (the spec's "match")."""
        writer = self._resolve(writer, self._writer_names)
        reader = self._resolve(reader, self._reader_names)
        writer_type, reader_type = self._type_name(writer), self._type_name(reader)
        if writer_type in PRIMITIVES:
            return reader_type == writer_type or reader_type in PROMOTIONS.get(writer_type, ())
        if writer_type != reader_type:
            return False
        if writer_type in ("record", "enum", "fixed"):
            reader_names = {_short_name(reader["name"]), *(_short_name(alias) for alias in reader.get("aliases", ()))}
            if _short_name(writer["name"]) not in reader_names:
                return False
            return writer_type != "fixed" or writer["size"] == reader["size"]
        return True

    def _first_match(self, writer: Schema, reader_union: list[Schema]) -> Schema | None:
        """The reader union branch a writer value lands in: the first that matches."""
        return next((branch for branch in reader_union if self._matches(writer, branch)), None)

    def _check(self, writer: Schema, reader: Schema, path: str) -> None:
        writer = self._resolve(writer, self._writer_names)
        reader = self._resolve(reader, self._reader_names)
        if isinstance(writer, list):
            for branch in writer:
                self._check_branch(branch, reader, self._branch_path(path, branch))
            return
        if isinstance(reader, list):
            self._check_branch(writer, reader, self._branch_path(path, writer))
            return
        if not self._matches(writer, reader):
            self._problems.append(
                f"{path}: type changed from {self._describe(writer, self._writer_names)} "
                f"to {self._describe(reader, self._reader_names)}"
            )
            return
        type_name = self._type_name(writer)
        if type_name == "record":
            self._check_record(writer, reader, path)
        elif type_name == "enum":
            self._check_enum(writer, reader, path)
        elif type_name == "array":
            self._check(writer["items"], reader["items"], f"{path}[]")
        elif type_name == "map":
            self._check(writer["values"], reader["values"], f"{path}{{}}")
        elif type_name in PRIMITIVES:
            self._check_logical_type(writer, reader, path)

    def _check_branch(self, writer_branch: Schema, reader: Schema, path: str) -> None:
        """A writer value of one type read where the reader has `reader` (a union or a single type)."""
        target = self._first_match(writer_branch, reader) if isinstance(reader, list) else reader
        if target is None or not self._matches(writer_branch, target):
            self._problems.append(
                f"{path}: writer type {self._describe(writer_branch, self._writer_names)} has no match in reader type "
                f"{self._describe_union(reader)}"
            )
            return
        self._check(writer_branch, target, path)

    def _branch_path(self, path: str, writer_branch: Schema) -> str:
        """Name the union branch in problem paths, e.g. CallEvent.payload<CallStarted>.caller_number."""
        resolved = self._resolve(writer_branch, self._writer_names)
        if isinstance(resolved, dict) and resolved.get("type") in ("record", "enum", "fixed"):
            return f"{path}<{_short_name(resolved['name'])}>"
        return path

    def _describe_union(self, reader: Schema) -> str:
        if isinstance(reader, list):
            return "[" + ", ".join(self._describe(branch, self._reader_names) for branch in reader) + "]"
        return self._describe(reader, self._reader_names)

    def _check_record(self, writer: Mapping[str, Any], reader: Mapping[str, Any], path: str) -> None:
        pair = (writer["name"], reader["name"])
        if pair in self._visited:
            return
        self._visited.add(pair)
        writer_fields = {field["name"]: field for field in writer["fields"]}
        for reader_field in reader["fields"]:
            field_path = f"{path}.{reader_field['name']}"
            candidates = [reader_field["name"], *reader_field.get("aliases", ())]
            writer_field = next((writer_fields[name] for name in candidates if name in writer_fields), None)
            if writer_field is not None:
                self._check(writer_field["type"], reader_field["type"], field_path)
            elif "default" not in reader_field:
                self._problems.append(f"{field_path}: reader field missing from the writer schema and has no default")
            elif not self._default_fits(reader_field["default"], reader_field["type"]):
                self._problems.append(f"{field_path}: default does not fit the field's type")

    def _check_enum(self, writer: Mapping[str, Any], reader: Mapping[str, Any], path: str) -> None:
        unknown = [symbol for symbol in writer["symbols"] if symbol not in reader["symbols"]]
        if unknown and reader.get("default") is None:
            enum_name = _short_name(reader["name"])
            self._problems.append(
                f"{path}: enum {enum_name} lacks writer symbols {', '.join(unknown)} and has no default"
            )

    def _check_logical_type(self, writer: Schema, reader: Schema, path: str) -> None:
        """Same bytes, different meaning (e.g. millis read as a date) is a break too."""
        writer_logical = writer.get("logicalType") if isinstance(writer, dict) else None
        reader_logical = reader.get("logicalType") if isinstance(reader, dict) else None
        if writer_logical != reader_logical:
            self._problems.append(
                f"{path}: logical type changed from {writer_logical or 'none'} to {reader_logical or 'none'}"
            )

    def _default_fits(self, default: Any, schema: Schema) -> bool:
        """Whether a field default is a valid JSON value for its type (unions: the first branch)."""
        schema = self._resolve(schema, self._reader_names)
        type_name = self._type_name(schema)
        if type_name == "union":
            return bool(schema) and self._default_fits(default, schema[0])
        if type_name == "null":
            return default is None
        if type_name == "boolean":
            return isinstance(default, bool)
        if type_name in ("int", "long"):
            return isinstance(default, int) and not isinstance(default, bool)
        if type_name in ("float", "double"):
            return isinstance(default, (int, float)) and not isinstance(default, bool)
        if type_name in ("string", "bytes", "fixed"):
            return isinstance(default, str)
        if type_name == "enum":
            return default in schema["symbols"]
        if type_name == "array":
            return isinstance(default, list) and all(self._default_fits(item, schema["items"]) for item in default)
        if type_name == "map":
            return isinstance(default, dict) and all(
                self._default_fits(item, schema["values"]) for item in default.values()
            )
        if type_name == "record":
            return isinstance(default, dict) and all(
                self._default_fits(default[field["name"]], field["type"])
                if field["name"] in default
                else "default" in field
                for field in schema["fields"]
            )
        return False
