"""A small Confluent Schema Registry client: register a value schema, fetch a schema by id.

Only the two calls the Confluent wire format needs. Ids and schemas are cached for the life of
the client, so the hot path touches the network once per subject and once per unseen id.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from schemas.errors import SchemaError, SchemaRegistryError

REGISTRY_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
MAX_SCHEMA_ID = 2**31 - 1
"""Confluent schema ids are signed 32-bit integers."""


class SchemaRegistryClient:
    """Talks to one Schema Registry over HTTP (sync httpx; calls happen only on cache misses)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        auth: tuple[str, str] | None = None,
    ):
        """Credentials may come as `auth` or in the URL's user-info; they never appear in errors.

        Raises:
            SchemaRegistryError: the URL is not an http(s) URL with a host.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SchemaRegistryError("schema registry URL must be http(s)://host[:port][/path]")
        if parts.username is not None:
            auth = auth or (parts.username, parts.password or "")
        netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        self.display_url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        """The registry URL without credentials: the only form used in messages."""
        self._http = httpx.Client(
            base_url=self.display_url,
            auth=auth,
            timeout=timeout_s,
            headers={"Accept": REGISTRY_CONTENT_TYPE},
        )
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Register `schema` under `subject` (idempotent on the registry side) and return its id."""
        schema_text = json.dumps(schema, separators=(",", ":"), sort_keys=True)
        cache_key = (subject, schema_text)
        with self._lock:
            if cache_key in self._ids:
                return self._ids[cache_key]
        body = self._request("POST", f"/subjects/{quote(subject, safe='')}/versions", json_body={"schema": schema_text})
        schema_id = body.get("id")
        if not isinstance(schema_id, int) or isinstance(schema_id, bool) or not 0 <= schema_id <= MAX_SCHEMA_ID:
            raise SchemaRegistryError(
                f"schema registry at {self.display_url} answered a registration without a valid id"
            )
        with self._lock:
            self._ids[cache_key] = schema_id
            self._schemas.setdefault(schema_id, json.loads(schema_text))
        return schema_id

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        """The schema JSON registered under `schema_id`.

        Raises:
            SchemaError: the registry does not know the id (the message is bad, not the registry).
            SchemaRegistryError: the registry is unreachable or answered something unusable.
        """
        with self._lock:
            if schema_id in self._schemas:
                return self._schemas[schema_id]
        body = self._request("GET", f"/schemas/ids/{schema_id}", unknown_id=schema_id)
        schema_text = body.get("schema")
        if body.get("schemaType", "AVRO") != "AVRO" or not isinstance(schema_text, str):
            raise SchemaRegistryError(
                f"schema registry at {self.display_url} returned no Avro schema for id {schema_id}"
            )
        try:
            schema = json.loads(schema_text)
        except json.JSONDecodeError:
            raise SchemaRegistryError(
                f"schema registry at {self.display_url} returned invalid JSON for schema id {schema_id}"
            ) from None
        if not isinstance(schema, dict):
            raise SchemaRegistryError(
                f"schema registry at {self.display_url} returned a non-record schema for id {schema_id}"
            )
        with self._lock:
            self._schemas[schema_id] = schema
        return schema

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> SchemaRegistryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(
        self, method: str, path: str, *, json_body: Mapping[str, Any] | None = None, unknown_id: int | None = None
    ) -> dict[str, Any]:
        """One registry call; maps transport failures and error answers to typed errors."""
        try:
            response = self._http.request(
                method,
                path,
                content=None if json_body is None else json.dumps(json_body).encode(),
                headers=None if json_body is None else {"Content-Type": REGISTRY_CONTENT_TYPE},
            )
        except httpx.HTTPError as exc:
            raise SchemaRegistryError(
                f"schema registry at {self.display_url} unreachable ({type(exc).__name__})"
            ) from None
        if response.status_code == 404 and unknown_id is not None:
            raise SchemaError(f"schema id {unknown_id} is not known to the schema registry at {self.display_url}")
        if response.status_code >= 400:
            raise SchemaRegistryError(
                f"schema registry at {self.display_url} answered HTTP {response.status_code} to {method} {path}"
                f"{_error_code_suffix(response)}"
            )
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SchemaRegistryError(
                f"schema registry at {self.display_url} answered {method} {path} with invalid JSON"
            ) from None
        if not isinstance(body, dict):
            raise SchemaRegistryError(
                f"schema registry at {self.display_url} answered {method} {path} with a non-object"
            )
        return body


def _error_code_suffix(response: httpx.Response) -> str:
    """The registry's numeric error_code (e.g. 409 incompatible, 42201 invalid schema), if present."""
    try:
        error_code = response.json().get("error_code")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return ""
    return f" (error_code {error_code})" if isinstance(error_code, int) else ""
