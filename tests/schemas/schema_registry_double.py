"""A minimal Confluent-Schema-Registry-compatible HTTP server for tests, on 127.0.0.1.

It speaks the two calls callstream uses with the registry's status codes and error bodies:
POST /subjects/{subject}/versions (same schema -> same id, ids global across subjects) and
GET /schemas/ids/{id}. Tests can require basic auth and queue one faulty answer.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from fastavro.schema import SchemaParseException, parse_schema, to_parsing_canonical_form

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


@dataclass
class RegistryState:
    """Schemas by id, subjects' versions, and what the server was asked."""

    schemas: dict[int, str] = field(default_factory=dict)
    ids_by_canonical_form: dict[str, int] = field(default_factory=dict)
    subjects: dict[str, list[int]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    required_auth: tuple[str, str] | None = None
    queued_fault: tuple[int, bytes] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class SchemaRegistryDouble:
    """Runs the registry on a free port of 127.0.0.1 in a background thread."""

    def __init__(self) -> None:
        self.state = RegistryState()
        state = self.state

        class Handler(_RegistryHandler):
            registry = state

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="schema-registry-double",
            daemon=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> SchemaRegistryDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def answer_next_with(self, status: int, body: bytes) -> None:
        """Make the next request get this status and raw body (a registry misbehaving once)."""
        with self.state.lock:
            self.state.queued_fault = (status, body)

    def add_schema(self, subject: str, schema: dict[str, Any]) -> int:
        """Register a schema directly, as another producer would have done."""
        return _register(self.state, subject, json.dumps(schema))


def _register(state: RegistryState, subject: str, schema_text: str) -> int:
    canonical_form = to_parsing_canonical_form(parse_schema(json.loads(schema_text)))
    with state.lock:
        schema_id = state.ids_by_canonical_form.get(canonical_form)
        if schema_id is None:
            schema_id = len(state.schemas) + 1
            state.schemas[schema_id] = schema_text
            state.ids_by_canonical_form[canonical_form] = schema_id
        versions = state.subjects.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
    return schema_id


class _RegistryHandler(BaseHTTPRequestHandler):
    registry: RegistryState

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's signature
        """Keep test output clean."""

    def do_GET(self) -> None:
        if not self._admitted("GET"):
            return
        match = re.fullmatch(r"/schemas/ids/(\d+)", self.path)
        schema_text = self.registry.schemas.get(int(match.group(1))) if match else None
        if schema_text is None:
            self._reply(404, {"error_code": 40403, "message": "Schema not found"})
            return
        self._reply(200, {"schema": schema_text})

    def do_POST(self) -> None:
        if not self._admitted("POST"):
            return
        match = re.fullmatch(r"/subjects/([^/]+)/versions", self.path)
        if match is None:
            self._reply(404, {"error_code": 404, "message": "HTTP 404 Not Found"})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            schema_id = _register(self.registry, unquote(match.group(1)), body["schema"])
        except (json.JSONDecodeError, KeyError, TypeError, SchemaParseException, ValueError):
            self._reply(422, {"error_code": 42201, "message": "Invalid schema"})
            return
        self._reply(200, {"id": schema_id})

    def _admitted(self, method: str) -> bool:
        """Record the request, play a queued fault, check basic auth."""
        with self.registry.lock:
            self.registry.requests.append((method, self.path))
            fault, self.registry.queued_fault = self.registry.queued_fault, None
        if fault is not None:
            self._send(fault[0], fault[1])
            return False
        required = self.registry.required_auth
        if required is not None:
            expected = "Basic " + base64.b64encode(f"{required[0]}:{required[1]}".encode()).decode()
            if self.headers.get("Authorization") != expected:
                self._reply(401, {"error_code": 401, "message": "Unauthorized"})
                return False
        return True

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode())

    def _send(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
