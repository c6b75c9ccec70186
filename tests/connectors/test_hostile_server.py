"""A hostile or broken ModMed: malformed bodies, foreign links, oversize answers, endless 401s.

The server is a real HTTP server on 127.0.0.1 whose answers each test chooses; the connector must turn
every one of them into a typed error without crashing, leaking or following it somewhere else.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from urllib.parse import parse_qs
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.task import Task
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from callstream.deadline import Deadline
from callstream.tenants import Practice
from callstream.work_scope import BACKGROUND, WorkScope
from connectors.errors import (
    AuthError,
    InvalidResponseError,
    NotFoundError,
    RateLimitedError,
    ResourceNotAllowed,
    RetryableError,
    TerminalError,
)
from connectors.fhir import ClientConfig, ModMedClient
from connectors.idempotent_writes import IdempotentWriter
from connectors.ledger import InMemoryLedger
from connectors.ratelimit import RateLimiterRegistry
from connectors.vocabulary import IDEMPOTENCY_KEY_SYSTEM
from tests.connectors.helpers import Recorder, serve
from tests.fixtures.sandbox import MovableTime

GOOD_TOKEN = {"access_token": "tok-abc123", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "ref-xyz789"}
Handler = Callable[[Request], Response | Awaitable[Response]]


@dataclass
class Hostile:
    """The routes' current behaviour; tests replace the handlers."""

    token: Handler = field(default=lambda _: JSONResponse(GOOD_TOKEN))
    fhir: Handler = field(default=lambda _: JSONResponse({"resourceType": "Bundle", "type": "searchset"}))
    foreign_hits: int = 0


@pytest.fixture(scope="module")
def hostile() -> Iterator[tuple[Hostile, str]]:
    state = Hostile()

    async def token(request: Request) -> Response:
        await request.body()
        answer = state.token(request)
        return await answer if inspect.isawaitable(answer) else answer

    async def fhir(request: Request) -> Response:
        await request.body()
        return state.fhir(request)

    async def foreign(_: Request) -> Response:
        state.foreign_hits += 1
        return JSONResponse({"resourceType": "Bundle", "type": "searchset"})

    app = Starlette(routes=[
        Route("/firm/evil/ema/ws/oauth2/grant", token, methods=["POST"]),
        Route("/firm/evil/ema/fhir/v2/{rest:path}", fhir, methods=["GET", "POST", "PUT"]),
        Route("/elsewhere/{rest:path}", foreign),
    ])
    with serve(app) as base_url:
        yield state, base_url


@pytest.fixture
def evil(hostile: tuple[Hostile, str], tmp_path: Path) -> Iterator[tuple[Hostile, Practice]]:
    state, base_url = hostile
    secret = tmp_path / "evil.json"
    secret.write_text(json.dumps({"username": "u", "password": "p4ss-w0rd-XYZ", "api_key": "key-QWERTY-123"}))
    practice = Practice.model_validate({
        "practice_id": "evil-practice", "name": "Evil", "called_numbers": ["+15555550100"], "base_url": base_url,
        "firm_url_prefix": "evil", "auth": {"method": "password", "credentials_ref": f"file:{secret}"},
    })
    yield state, practice
    state.token = Hostile.token
    state.fhir = Hostile.fhir
    state.foreign_hits = 0


def make_client(recorder: Recorder | None = None, clock: MovableTime | None = None, **config: object) -> ModMedClient:
    return ModMedClient(limiters=RateLimiterRegistry(), observer=recorder,
                        config=ClientConfig(backoff_base_s=0.001, **config),  # type: ignore[arg-type]
                        clock=clock.monotonic if clock is not None else time.monotonic)


async def test_non_json_and_wrong_shapes_are_invalid_responses(evil: tuple[Hostile, Practice]) -> None:
    state, practice = evil
    async with make_client() as client:
        state.fhir = lambda _: Response("<html>oops</html>", media_type="text/html")
        with pytest.raises(InvalidResponseError, match="not JSON"):
            await client.search(practice, Patient, {"family": "x"})
        state.fhir = lambda _: JSONResponse({"resourceType": "Patient", "id": "1"})
        with pytest.raises(InvalidResponseError, match="Bundle"):
            await client.search(practice, Patient, {"family": "x"})
        state.fhir = lambda _: JSONResponse({"resourceType": "Bundle", "type": "searchset", "entry": "nope"})
        with pytest.raises(InvalidResponseError, match="invalid Bundle"):
            await client.search(practice, Patient, {"family": "x"})
        state.fhir = lambda _: JSONResponse({"resourceType": "Patient", "id": "other", "birthDate": "1970-01-01"})
        with pytest.raises(InvalidResponseError, match="different resource id"):
            await client.read(practice, Patient, "1")
        state.fhir = lambda _: JSONResponse({"resourceType": "Patient", "id": "1", "birthDate": "Jane Doe 1970"})
        with pytest.raises(InvalidResponseError) as invalid:
            await client.read(practice, Patient, "1")
        assert "Jane" not in str(invalid.value)  # pydantic's message (with the value) is not passed on


async def test_next_links_to_another_origin_are_not_followed(evil: tuple[Hostile, Practice]) -> None:
    state, practice = evil
    foreign = practice.base_url.replace("127.0.0.1", "localhost") + "/elsewhere/Patient"
    state.fhir = lambda _: JSONResponse({"resourceType": "Bundle", "type": "searchset",
                                         "link": [{"relation": "next", "url": foreign}]})
    async with make_client() as client:
        with pytest.raises(ResourceNotAllowed, match="outside"):
            await client.search(practice, Patient, {"family": "x"})
    state.fhir = lambda _: JSONResponse({"resourceType": "Bundle", "type": "searchset",
                                         "link": [{"relation": "next", "url": practice.base_url + "/elsewhere/x"}]})
    async with make_client() as client:
        with pytest.raises(ResourceNotAllowed):
            await client.search(practice, Patient, {"family": "x"})
    assert state.foreign_hits == 0


async def test_oversize_answers_are_refused(evil: tuple[Hostile, Practice]) -> None:
    state, practice = evil
    state.fhir = lambda _: JSONResponse({"resourceType": "Bundle", "type": "searchset", "padding": "x" * 5000})
    async with make_client(max_response_bytes=1024) as client:
        with pytest.raises(InvalidResponseError, match="exceeds"):
            await client.search(practice, Patient, {"family": "x"})


@pytest.mark.parametrize(
    "body",
    [{}, {"access_token": ""}, {"access_token": "t", "token_type": "mac"}, {"access_token": "t", "expires_in": "soon"},
     {"access_token": "t", "expires_in": -5}, ["not", "an", "object"]],
)
async def test_malformed_token_answers_are_typed_errors(evil: tuple[Hostile, Practice], body: object) -> None:
    state, practice = evil
    state.token = lambda _: JSONResponse(body)
    async with make_client() as client:
        with pytest.raises(InvalidResponseError):
            await client.search(practice, Patient, {"family": "x"})


async def test_a_refused_refresh_token_never_wedges_the_practice(evil: tuple[Hostile, Practice]) -> None:
    """ModMed refuses the refresh token (RFC 6749: 400 invalid_grant) and the fresh grant then fails on a 503:
    the next call must go straight to a fresh grant, not present the dead refresh token again (and again)."""
    state, practice = evil
    grants: list[str] = []
    outage = {"password grants left to fail": 0}

    async def token(request: Request) -> Response:
        grant_type = parse_qs((await request.body()).decode())["grant_type"][0]
        grants.append(grant_type)
        if grant_type == "refresh_token":
            return JSONResponse({"error": "invalid_grant", "error_description": "refresh token revoked"}, 400)
        if outage["password grants left to fail"]:
            outage["password grants left to fail"] -= 1
            return JSONResponse({"resourceType": "OperationOutcome"}, 503)
        return JSONResponse(GOOD_TOKEN)

    state.token = token
    clock = MovableTime()
    async with make_client(clock=clock) as client:
        await client.search(practice, Patient, {"family": "x"})
        clock.advance(3600)  # GOOD_TOKEN's lifetime: the access token is expired, the refresh token is dead
        outage["password grants left to fail"] = 3  # every attempt of the next fresh grant
        with pytest.raises(RetryableError):
            await client.search(practice, Patient, {"family": "x"})
        recovered = await client.search(practice, Patient, {"family": "x"})
    assert recovered.matches == [] and not recovered.truncated  # the empty searchset of the healthy FHIR route
    assert grants == ["password", "refresh_token", "password", "password", "password", "password"]


async def test_endless_401_means_one_reauthentication_then_auth_error(evil: tuple[Hostile, Practice]) -> None:
    state, practice = evil
    state.fhir = lambda _: JSONResponse({"resourceType": "OperationOutcome", "issue": [{"code": "login"}]}, 401)
    recorder = Recorder()
    async with make_client(recorder) as client:
        with pytest.raises(AuthError) as failure:
            await client.search(practice, Patient, {"family": "x"})
    assert failure.value.status == 401 and failure.value.issue_codes == ("login",)
    assert [(r, s) for _, r, _, s in recorder.calls] == [("token", 200), ("Patient", 401), ("token", 200), ("Patient", 401)]


async def test_status_mapping_and_phi_free_messages(evil: tuple[Hostile, Practice]) -> None:
    state, practice = evil
    outcome = {"resourceType": "OperationOutcome", "issue": [{"code": "not-found", "diagnostics": "Patient Jane Roe not found"}]}
    state.fhir = lambda _: JSONResponse(outcome, 404)
    async with make_client() as client:
        with pytest.raises(NotFoundError) as missing:
            await client.read(practice, Patient, "pt-1")
        assert missing.value.issue_codes == ("not-found",)
        assert all("Jane" not in text for text in (str(missing.value), repr(missing.value), repr(vars(missing.value))))
        state.fhir = lambda _: JSONResponse({}, 422)
        with pytest.raises(TerminalError):
            await client.read(practice, Patient, "pt-1")
        state.fhir = lambda _: Response(status_code=429, headers={"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"})
        with pytest.raises(RateLimitedError) as limited:
            await client.read(practice, Patient, "pt-1")
        assert limited.value.retry_after is not None and limited.value.retry_after > 10_000


async def test_write_answered_by_location_only_is_read_back(evil: tuple[Hostile, Practice]) -> None:
    state, practice = evil
    stored = {"resourceType": "Appointment", "id": "appt-77", "status": "booked",
              "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"}]}

    def answer(request: Request) -> Response:
        if request.method == "POST":
            return Response(status_code=201, headers={"Location": f"{practice.fhir_base}/Appointment/appt-77/_history/1"})
        return JSONResponse(stored)

    state.fhir = answer
    new = Appointment.model_validate({k: v for k, v in stored.items() if k != "id"})
    async with make_client() as client:
        written = await client.write(practice, "POST", new)
    assert written.id == "appt-77"


async def test_a_429_pause_past_the_callers_deadline_fails_fast_and_sends_nothing_more(
    evil: tuple[Hostile, Practice],
) -> None:
    """ModMed asks for 40 s of quiet; a caller has 4 s: the turn gets a typed refusal at once (the caller
    hears an honest answer), and no request goes out during the pause."""
    state, practice = evil
    sent: list[str] = []

    def answer(request: Request) -> Response:
        sent.append(request.method)
        return Response(status_code=429, headers={"Retry-After": "40"})

    state.fhir = answer
    async with make_client() as client:
        started = time.monotonic()
        turn = WorkScope(deadline=Deadline.after(4.0))
        with pytest.raises(RateLimitedError) as answered:
            await client.read(practice, Patient, "pt-1", scope=turn)
        with pytest.raises(RateLimitedError) as refused:
            await client.read(practice, Patient, "pt-2", scope=turn)
        elapsed = time.monotonic() - started
    assert answered.value.status == 429 and refused.value.status is None
    assert refused.value.retry_after is not None and refused.value.retry_after > 30
    assert sent == ["GET"] and elapsed < 2.0


async def test_a_write_looks_landed_only_when_a_found_resource_carries_its_key(evil: tuple[Hostile, Practice]) -> None:
    """A ModMed that ignores the identifier search answers with somebody else's Task: taking it for ours would
    record a write that never happened. Only a resource carrying the key counts; Coverage is searched by patient."""
    state, practice = evil
    key = "call-77|CREATE_TASK|Patient/pt-1|refill-review"
    other = {"resourceType": "Task", "id": "t-other", "status": "requested", "intent": "order",
             "identifier": [{"system": IDEMPOTENCY_KEY_SYSTEM, "value": "call-12|CREATE_TASK|Patient/pt-1|x"}]}
    ours = {**other, "id": "t-ours", "identifier": [{"system": IDEMPOTENCY_KEY_SYSTEM, "value": key}]}
    queries: list[dict[str, list[str]]] = []
    entries: list[dict[str, object]] = [other]

    def answer(request: Request) -> Response:
        queries.append(parse_qs(request.url.query))
        return JSONResponse({"resourceType": "Bundle", "type": "searchset",
                             "entry": [{"resource": entry} for entry in entries]})

    state.fhir = answer
    async with make_client() as client:
        writes = IdempotentWriter(client, InMemoryLedger())
        task_landed = writes.carrying_key(practice, Task, key, BACKGROUND)
        assert await task_landed() is None
        entries.append(ours)
        found = await task_landed()
        assert found is not None and found.id == "t-ours"
        entries[:] = [{"resourceType": "Coverage", "id": "cov-1", "status": "active",
                       "beneficiary": {"reference": "Patient/pt-1"}, "payor": [{"display": "Acme"}],
                       "identifier": [{"system": IDEMPOTENCY_KEY_SYSTEM, "value": key}]}]
        coverage = await writes.carrying_key(practice, Coverage, key, BACKGROUND, {"patient": "pt-1"})()
        assert coverage is not None and coverage.id == "cov-1"
    assert queries[0] == {"identifier": [f"{IDEMPOTENCY_KEY_SYSTEM}|{key}"]}
    assert queries[-1] == {"patient": ["pt-1"]}
