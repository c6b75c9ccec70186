"""Authentication per practice over real HTTP: the three grants, refresh-ahead, one re-auth on 401, secrecy."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx

import jwt
import pytest
from fhir.resources.R4B.location import Location
from fhir.resources.R4B.patient import Patient

from callstream.tenants import Practice
from connectors.auth import PrivateKeyJwtGrant
from connectors.errors import AuthError
from connectors.fhir import ModMedClient
from connectors.ledger import InMemoryLedger
from connectors.operations import ModMedConnector
from connectors.ratelimit import RateLimiterRegistry
from sandbox.generator import build_world
from tests.connectors.helpers import PracticeSet, Recorder, practice_entry
from tests.fixtures.sandbox import MovableTime, SandboxServer, running_sandbox

TOKEN_TTL_S = 60


@pytest.fixture
def timed() -> Iterator[tuple[MovableTime, SandboxServer]]:
    """A one-practice sandbox with one-minute access tokens whose clock the test moves (with the client's)."""
    world = build_world(seed=41, practices=1, patients_per_practice=2, access_token_ttl_seconds=TOKEN_TTL_S)
    clock = MovableTime()
    world.clock = clock.now
    with running_sandbox(world) as server:
        yield clock, server


def secrets_of(practice: Practice) -> list[str]:
    credentials = practice.auth.resolve()
    values = [credentials.password, credentials.api_key, credentials.client_secret, credentials.private_key_pem]
    return [v.get_secret_value() for v in values if v is not None]


async def test_client_credentials_grant(private_practices: PracticeSet, recorder: Recorder) -> None:
    listing = private_practices.listing(track="proprietary", fhir_task_create=True)
    practice = private_practices.entry(listing, auth={"method": "client_credentials"})
    async with ModMedClient(limiters=RateLimiterRegistry(), observer=recorder) as client:
        assert (await client.search(practice, Location, {}, max_pages=1)).matches
    assert recorder.calls[0][1:] == ("token", "POST", 200)


def test_private_key_jwt_assertion_is_smart_backend_services_shaped(sandbox_practices: PracticeSet) -> None:
    certified = sandbox_practices.certified()
    form = PrivateKeyJwtGrant(certified.practice_id, certified.auth.resolve()).grant_form("https://ehr.example/token")
    assert form["grant_type"] == "client_credentials" and form["scope"] == "system/*.rs"
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    header = jwt.get_unverified_header(form["client_assertion"])
    claims = jwt.decode(form["client_assertion"], options={"verify_signature": False})
    assert header["alg"] == "RS384" and header["kid"] == certified.auth.resolve().key_id
    assert claims["iss"] == claims["sub"] == certified.auth.resolve().client_id
    assert claims["aud"] == "https://ehr.example/token" and claims["exp"] - claims["iat"] == 300
    second = PrivateKeyJwtGrant(certified.practice_id, certified.auth.resolve()).grant_form("https://ehr.example/token")
    assert jwt.decode(second["client_assertion"], options={"verify_signature": False})["jti"] != claims["jti"]


async def test_token_is_refreshed_before_expiry_without_making_callers_wait(
    timed: tuple[MovableTime, SandboxServer], tmp_path: Path, recorder: Recorder
) -> None:
    clock, server = timed
    listing = server.practices[0]
    practice = practice_entry(listing, tmp_path)
    async with ModMedClient(limiters=RateLimiterRegistry(), observer=recorder, clock=clock.monotonic) as client:
        await client.search(practice, Location, {}, max_pages=1)
        tokens = client.session(practice).tokens
        first = await tokens.bearer()
        clock.advance(0.85 * TOKEN_TTL_S)  # past the refresh point (80% of the lifetime), before expiry
        await client.search(practice, Location, {}, max_pages=1)  # served at once with the first token...
        assert recorder.calls[-1][1:] == ("Location", "GET", 200) and recorder.count(resource="token") == 1
        for _ in range(250):  # ...while one background refresh runs
            if recorder.count(resource="token") == 2:
                break
            await asyncio.sleep(0.02)
        second = await tokens.bearer()
        clock.advance(0.25 * TOKEN_TTL_S)  # the first token has now expired at ModMed
        await client.search(practice, Location, {}, max_pages=1)
    with httpx.Client() as http:
        stale = http.get(f"{listing['fhir_base']}/Location", headers={"x-api-key": listing["api_key"],
                                                                       "Authorization": f"Bearer {first}"})
    assert stale.status_code == 401 and second != first
    assert recorder.count(resource="token", status=200) == 2 and recorder.count(status=401) == 0


async def test_an_expired_token_whose_refresh_is_refused_gets_one_fresh_grant(
    timed: tuple[MovableTime, SandboxServer], tmp_path: Path, recorder: Recorder
) -> None:
    clock, server = timed
    practice = practice_entry(server.practices[0], tmp_path)
    async with ModMedClient(limiters=RateLimiterRegistry(), observer=recorder, clock=clock.monotonic) as client:
        await client.search(practice, Location, {}, max_pages=1)
        server.set_faults(practice.practice_id, revoke_tokens=True)  # the refresh token dies with the access token
        clock.advance(TOKEN_TTL_S)
        assert (await client.search(practice, Location, {}, max_pages=1)).matches
        assert (await client.search(practice, Location, {}, max_pages=1)).matches
    statuses = [(resource, status) for _, resource, _, status in recorder.calls]
    # RFC 6749: the dead refresh token is answered 400 invalid_grant; one fresh password grant follows.
    assert statuses == [("token", 200), ("Location", 200), ("token", 400), ("token", 200), ("Location", 200),
                        ("Location", 200)]


async def test_revoked_token_is_replaced_once_transparently(
    private_sandbox: SandboxServer, private_practices: PracticeSet, recorder: Recorder
) -> None:
    practice = private_practices.proprietary(fhir_task_create=False)
    async with ModMedClient(limiters=RateLimiterRegistry(), observer=recorder) as client:
        await client.search(practice, Location, {}, max_pages=1)
        try:
            private_sandbox.set_faults(practice.practice_id, revoke_tokens=True)
            assert (await client.search(practice, Location, {}, max_pages=1)).matches
        finally:
            private_sandbox.clear_faults(practice.practice_id)
    statuses = [(resource, status) for _, resource, _, status in recorder.calls]
    # 401, the refresh token (revoked too) refused with RFC 6749's 400 invalid_grant, a fresh grant, success.
    assert statuses[2:] == [("Location", 401), ("token", 400), ("token", 200), ("Location", 200)]


async def test_wrong_credentials_are_a_clear_auth_error_that_leaks_nothing(
    private_practices: PracticeSet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    listing = private_practices.listing(track="proprietary", fhir_task_create=True)
    bad = {k: listing[k] for k in ("username", "api_key", "client_id", "client_secret")} | {"password": "Wr0ng-Pa55word!"}
    secret_file = tmp_path / "bad.json"
    secret_file.write_text(json.dumps(bad))
    practice = private_practices.entry(listing, auth={"credentials_ref": f"file:{secret_file}"})
    caplog.set_level(logging.DEBUG)
    async with ModMedClient(limiters=RateLimiterRegistry()) as client:
        with pytest.raises(AuthError) as failure:
            await client.search(practice, Location, {}, max_pages=1)
        rendered = [str(failure.value), repr(failure.value), repr(client.session(practice).tokens._grant)]
    assert (failure.value.status, failure.value.issue_codes) == (400, ("invalid_grant",))
    assert failure.value.practice_id == practice.practice_id
    for secret in [*secrets_of(practice), listing["password"]]:
        assert secret not in caplog.text and all(secret not in text for text in rendered)


async def test_no_secret_or_phi_reaches_logs_reprs_or_errors(
    private_sandbox: SandboxServer, private_practices: PracticeSet, caplog: pytest.LogCaptureFixture
) -> None:
    practice = private_practices.proprietary(fhir_task_create=True)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")  # an in-process `callstream` command earlier quiets it
    async with ModMedClient(limiters=RateLimiterRegistry()) as client:
        patient = (await client.search(practice, Patient, {"_count": "1"}, max_pages=1)).matches[0]
        connector = ModMedConnector(client, InMemoryLedger())
        match = await connector.search_patients(
            practice, family=patient.name[0].family, given=patient.name[0].given[0], birthdate=patient.birthDate
        )
        try:
            private_sandbox.set_faults(practice.practice_id, revoke_tokens=True)
            await client.search(practice, Location, {}, max_pages=1)
        finally:
            private_sandbox.clear_faults(practice.practice_id)
        session = client.session(practice)
        token = await session.tokens.bearer()
        rendered = " ".join([repr(session.tokens._token), repr(session.tokens._grant), repr(match), repr(practice)])
    for secret in [*secrets_of(practice), token]:
        assert secret not in caplog.text and secret not in rendered
    for phi in (patient.name[0].family, patient.birthDate.isoformat()):
        assert phi not in caplog.text
    assert "<redacted>" in caplog.text  # httpx's request log lost its query string
