"""Structural guarantee: no path of the connector can write MedicationRequest or MedicationStatement.

Proved twice: over the code (AST of every connectors/ module, the EMA automation included) and at
runtime (every public write entry, and every disallowed read, refuses before a byte is sent: no token is
fetched and the sandbox counts zero calls).
"""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement

import connectors
from connectors.ema.screens import Screen
from connectors.allow_lists import FORBIDDEN_WRITE_TYPES, READABLE_RESOURCE_TYPES, WRITE_ALLOW_LIST, resource_url
from connectors.errors import InvalidRequestError, ResourceNotAllowed, WriteNotAllowed
from connectors.fhir import ModMedClient
from connectors.ledger import InMemoryLedger
from connectors.operations import ModMedConnector
from connectors.ratelimit import RateLimiterRegistry
from connectors.vocabulary import COMPLIANCE_SYSTEM
from tests.connectors.helpers import PracticeSet, Recorder
from tests.fixtures.sandbox import SandboxServer

PACKAGE = Path(connectors.__file__).parent
MEDICATION_WORDS = ("MedicationRequest", "MedicationStatement")
SENDING_ATTRIBUTES = {"post", "put", "patch", "delete", "request", "send", "stream", "build_request"}
SENDING_FUNCTIONS = {("fhir.py", "_attempt"), ("bulk_files.py", "__aenter__")}
"""Where httpx requests are built and sent: the chokepoint and the bulk-file stream (GET only)."""
NOT_MODMED_TRAFFIC = {
    ("keeper.py", "_alert", "self._alerts.send"),  # the EMA lockout alert goes to the operators' chat webhook
}
WIRE = {("http_transport.py", "handle_async_request", "self._open().request")}
"""The transport under httpx: it sends only what httpx hands it, and only the chokepoint hands it requests."""
MEDICATION_SCREEN_WORDS = ("medic", "prescri", "rx", "refill", "pharm", "erx")


def connector_modules() -> list[Path]:
    """Every module of the connectors package, the EMA web automation included."""
    return sorted(PACKAGE.rglob("*.py"))


def _is_statement_string(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Docstrings and bare string statements do nothing at runtime."""
    return isinstance(parents.get(node), ast.Expr)


def test_allow_lists_are_closed_and_exclude_medications() -> None:
    assert WRITE_ALLOW_LIST == {
        ("Appointment", "POST"), ("Appointment", "PUT"), ("Task", "POST"), ("DocumentReference", "POST"),
        ("Patient", "POST"), ("Coverage", "POST"),
    }
    assert FORBIDDEN_WRITE_TYPES == set(MEDICATION_WORDS)
    assert not {resource for resource, _ in WRITE_ALLOW_LIST} & FORBIDDEN_WRITE_TYPES
    assert not READABLE_RESOURCE_TYPES & FORBIDDEN_WRITE_TYPES
    assert not any("Medication" in resource for resource in READABLE_RESOURCE_TYPES)


def test_no_code_names_a_medication_resource_outside_the_forbidden_list() -> None:
    offenders = []
    for path in connector_modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and not _is_statement_string(node, parents):
                names.append(node.value)
            if isinstance(node, ast.Name | ast.alias | ast.Attribute):
                names.append(getattr(node, "id", None) or getattr(node, "name", None) or getattr(node, "attr", ""))
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
            for name in names:
                if any(word.lower() in name.lower() for word in MEDICATION_WORDS):
                    offenders.append((path.name, node.lineno, name))
    # The only mention is the forbidden list itself, in connectors/allow_lists.py: one literal of each name.
    assert sorted((file, name) for file, _, name in offenders) == [
        ("allow_lists.py", "MedicationRequest"), ("allow_lists.py", "MedicationStatement")]
    assert any(path.parts[-2:] == ("ema", "commands.py") for path in connector_modules())  # EMA was scanned


def test_requests_are_sent_only_from_the_chokepoint() -> None:
    senders = set()
    for path in connector_modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in SENDING_ATTRIBUTES):
                    senders.add((path.name, function.name, ast.unparse(node.func)))
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    assert node.func.attr != "handle_async_request", "the wire is reached through httpx only"
    assert NOT_MODMED_TRAFFIC <= senders and WIRE <= senders
    senders -= NOT_MODMED_TRAFFIC | WIRE
    assert {(file, function) for file, function, _ in senders} == SENDING_FUNCTIONS
    assert {call.rsplit(".", 1)[1] for _, _, call in senders} == {"build_request", "send"}
    assert all(call.startswith(("self._http.", "self._client._http.")) for _, _, call in senders)


def test_public_write_entries_accept_only_allow_listed_methods() -> None:
    hints = typing.get_type_hints(ModMedClient.write)
    assert set(typing.get_args(hints["method"])) == {"POST", "PUT"}
    assert set(typing.get_args(typing.get_type_hints(ModMedClient.bulk_request)["method"])) == {"GET", "DELETE"}
    public = {name for name in dir(ModMedClient) if not name.startswith("_")}
    assert public == {"aclose", "bulk_request", "limiter", "read", "search", "search_json", "session", "stream_file", "write"}


async def test_every_medication_write_attempt_is_refused_before_sending(
    private_sandbox: SandboxServer, private_practices: PracticeSet, recorder: Recorder
) -> None:
    practice = private_practices.proprietary(fhir_task_create=True)
    order = MedicationRequest.model_validate({
        "resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "medicationCodeableConcept": {"text": "oxycodone 10 mg"}, "subject": {"reference": "Patient/pt-1"},
    })
    statement = MedicationStatement.model_validate({
        "resourceType": "MedicationStatement", "status": "active",
        "medicationCodeableConcept": {"text": "oxycodone 10 mg"}, "subject": {"reference": "Patient/pt-1"},
    })

    class DisguisedOrder(Appointment):
        @classmethod
        def get_resource_type(cls) -> str:
            return "MedicationRequest"

    disguised = DisguisedOrder.model_validate({"resourceType": "Appointment", "status": "booked", "participant": [
        {"actor": {"reference": "Patient/pt-1"}, "status": "accepted"}]})
    before = private_sandbox.stats(practice.practice_id)["calls"]
    async with ModMedClient(limiters=RateLimiterRegistry(), observer=recorder) as client:
        session = client.session(practice)
        base = practice.fhir_base
        attempts = [
            client.write(practice, "POST", order),  # type: ignore[arg-type]
            client.write(practice, "PUT", statement),  # type: ignore[arg-type]
            client.write(practice, "POST", disguised),
            client.write(practice, "DELETE", order),  # type: ignore[arg-type]
            client.bulk_request(practice, "DELETE", f"{base}/MedicationRequest/rx-1"),
            client.bulk_request(practice, "GET", f"{base}/MedicationRequest"),
            client.read(practice, MedicationRequest, "rx-1"),
            client._call(session, "POST", f"{base}/MedicationRequest", json_body=order.model_dump(mode="json")),
            client._call(session, "PUT", f"{base}/MedicationStatement/ms-1", json_body={}),
            client._call(session, "PUT", f"{base}/Appointment/../MedicationRequest", json_body={}),
            client._call(session, "POST", f"{base}/Appointment%2F..%2FMedicationRequest", json_body={}),
            client._call(session, "PUT", f"{base}/Patient/pt-1", json_body={}),  # charts are created, never changed
            client._call(session, "PUT", f"{base}/Coverage/cov-1", json_body={}),  # Coverage is create-only
            client._call(session, "POST", f"{base}/Flag", json_body={}),
            client._call(session, "PATCH", f"{base}/Appointment/a-1", json_body={}),
        ]
        for attempt in attempts:
            with pytest.raises(ResourceNotAllowed):
                await attempt
        with pytest.raises(WriteNotAllowed):
            resource_url(practice, "MedicationStatement")
        connector = ModMedConnector(client, InMemoryLedger())
        with pytest.raises(InvalidRequestError):
            await connector.cancel_appointment(practice, call_id="c", appointment_id="../MedicationRequest/rx-1")
    assert recorder.calls == []
    assert private_sandbox.stats(practice.practice_id)["calls"] == before


def test_the_browser_only_ever_goes_to_the_closed_set_of_screens() -> None:
    """EMA's structural twin of the chokepoint: the page navigates in one place, to a URL built from a Screen."""
    navigations = set()
    for path in connector_modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for function in ast.walk(tree):
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(function):
                    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                        "goto", "_goto"
                    ):
                        navigations.add((path.name, function.name, ast.unparse(node)))
    assert navigations == {
        ("page.py", "_goto", "self._page.goto(url, wait_until='load')"),
        ("page.py", "open", "self._goto(url)"),
        ("keeper.py", "_checkin", "page.goto('about:blank')"),
    }
    assert not [screen for screen in Screen if any(word in screen.value for word in MEDICATION_SCREEN_WORDS)]


async def test_disallowed_reads_are_refused_before_authentication(
    private_sandbox: SandboxServer, private_practices: PracticeSet, recorder: Recorder
) -> None:
    """The chokepoint decides on the URL and query it would send, before a token is even fetched."""
    practice = private_practices.proprietary(fhir_task_create=True)
    before = private_sandbox.stats(practice.practice_id)["calls"]
    base = practice.fhir_base
    uds = f"{COMPLIANCE_SYSTEM}|uds"
    pdmp = f"{COMPLIANCE_SYSTEM}|pdmp-check"
    async with ModMedClient(limiters=RateLimiterRegistry(), observer=recorder) as client:
        session = client.session(practice)
        refused = [
            client._call(session, "GET", f"{base}/Observation/obs-1001-000001"),  # by id: could be a UDS result
            client._call(session, "GET", f"{base}/Observation", params={"patient": "pt-1", "code": uds}),
            client._call(session, "GET", f"{base}/Observation", params={"patient": "pt-1"}),
            client._call(session, "GET", f"{base}/Observation", params={"patient": "pt-1", "code": [pdmp, uds]}),
            client._call(session, "GET", f"{base}/Observation?patient=pt-1&code={uds}", params={"code": pdmp}),
            client._call(session, "GET", f"{base}/Observation", params={"code": pdmp, "_include": "Observation:has-member"}),
            client._call(session, "GET", f"{base}/Observation", params={"code": "pdmp-check"}),  # no system: ambiguous
            client._call(session, "GET", f"{base}/MedicationRequest", params={"patient": "pt-1"}),
        ]
        for attempt in refused:
            with pytest.raises(ResourceNotAllowed):
                await attempt
    assert recorder.calls == []  # not even a token request went out
    assert private_sandbox.stats(practice.practice_id)["calls"] == before
