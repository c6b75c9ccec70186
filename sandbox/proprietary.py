"""ModMed's proprietary FHIR API: `/firm/{firm_url_prefix}/ema/ws/oauth2/grant` and
`/firm/{firm_url_prefix}/ema/fhir/v2/{Resource}`.

Every call needs the practice's `x-api-key`; FHIR calls also need a Bearer token issued by
the same practice. Writes follow ModMed's matrix (seed 001) narrowed by callstream's hard
guards: MedicationRequest and MedicationStatement writes are always refused.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox import resources, writes
from sandbox.auth import OAuthError, TokenRegistry, parse_form, require
from sandbox.capability import proprietary_capability_statement
from sandbox.errors import FhirError
from sandbox.fhirhttp import (
    base_url_of,
    error_response,
    fhir_response,
    query_params,
    read_json_body,
    resource_headers,
    searchset,
)
from sandbox.gateway import Gateway
from sandbox.search import PROPRIETARY_SEARCH
from sandbox.world import SandboxWorld, Tenant

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
REFUSED_WRITE_TYPES = frozenset({"MedicationRequest", "MedicationStatement"})
READ_TYPES = frozenset(PROPRIETARY_SEARCH) | {"Slot"}
MAX_FORM_BYTES = 64 * 1024

Creator = Callable[[Tenant, object, dt.datetime], dict]
CREATORS: dict[str, Creator] = {
    "Patient": writes.create_patient,
    "Appointment": writes.create_appointment,
    "DocumentReference": writes.create_document_reference,
    "Coverage": writes.create_coverage,
    "Task": writes.create_task,
}
UPDATERS = {"Patient": writes.update_patient, "Appointment": writes.update_appointment}


def _constant_time_equal(given: str | None, expected: str | None) -> bool:
    return given is not None and expected is not None and hmac.compare_digest(given.encode(), expected.encode())


class ProprietaryApi:
    def __init__(self, world: SandboxWorld, gateway: Gateway, tokens: TokenRegistry) -> None:
        self.world = world
        self.gateway = gateway
        self.tokens = tokens
        self._api_keys = frozenset(p.api_key for p in world.profiles.values() if p.api_key)

    def routes(self) -> list[Route]:
        return [
            Route("/firm/{prefix}/ema/ws/oauth2/grant", self.grant, methods=ALL_METHODS),
            Route("/firm/{prefix}/ema/fhir/v2/{rest:path}", self.fhir, methods=ALL_METHODS),
            Route("/firm/{prefix}/ema/fhir/v2", self.fhir, methods=ALL_METHODS),
        ]

    def _tenant(self, request: Request) -> Tenant:
        tenant = self.world.tenant_by_prefix(request.path_params["prefix"])
        if tenant is None or tenant.profile.track != "proprietary":
            raise FhirError(404, "unknown firm URL prefix")
        return tenant

    def _check_api_key(self, request: Request, tenant: Tenant) -> None:
        key = request.headers.get("x-api-key")
        if not key:
            raise FhirError(401, "the x-api-key header is required", headers={"WWW-Authenticate": "ApiKey"})
        if _constant_time_equal(key, tenant.profile.api_key):
            return
        if key in self._api_keys:
            raise FhirError(403, "this API key belongs to another practice")
        raise FhirError(401, "unknown API key", headers={"WWW-Authenticate": "ApiKey"})

    def _check_bearer(self, request: Request, tenant: Tenant) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        if scheme.lower() != "bearer" or not token.strip():
            raise FhirError(401, "a Bearer access token is required", headers={"WWW-Authenticate": "Bearer"})
        grant = self.tokens.access(token.strip(), self.world.now())
        if grant is None:
            raise FhirError(401, "the access token is unknown, expired or revoked", headers=challenge)
        if grant.practice_id != tenant.practice_id:
            raise FhirError(403, "this access token was issued for another practice")
        if grant.track != "proprietary":
            raise FhirError(401, "this access token is not valid for the proprietary API", headers=challenge)

    async def _guarded(self, request: Request, route: str, work: Callable[[Tenant], Awaitable[Response]]) -> Response:
        try:
            tenant = self._tenant(request)
        except FhirError as error:
            return error_response(error)
        await self.gateway.delay(tenant)
        try:
            self._check_api_key(request, tenant)
            self.gateway.admit(tenant, str(tenant.profile.api_key))
            response = await work(tenant)
        except FhirError as error:
            response = error_response(error)
        except OAuthError as error:
            response = JSONResponse(error.body(), error.status, headers={"Cache-Control": "no-store"})
        self.gateway.record(tenant, f"{request.method} {route}", response.status_code)
        return response

    # --- token endpoint -------------------------------------------------------------------

    async def grant(self, request: Request) -> Response:
        return await self._guarded(request, "/firm/{prefix}/ema/ws/oauth2/grant", lambda t: self._grant(request, t))

    async def _grant(self, request: Request, tenant: Tenant) -> Response:
        if request.method != "POST":
            raise FhirError(405, "the grant endpoint accepts POST only", headers={"Allow": "POST"})
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise OAuthError(400, "invalid_request", "the token request is too large")
        form = parse_form(body, request.headers.get("content-type"))
        grant_type = form.get("grant_type")
        profile, now, settings = tenant.profile, self.world.now(), tenant.settings
        if grant_type == "password":
            username, password = require(form, "username", "password")
            if not (_constant_time_equal(username, profile.username) and _constant_time_equal(password, profile.password)):
                raise OAuthError(400, "invalid_grant", "the username or password is incorrect")
            subject = username
        elif grant_type == "refresh_token":
            (refresh,) = require(form, "refresh_token")
            pending = self.tokens.peek_refresh(refresh)
            if pending is None or pending.practice_id != tenant.practice_id:
                raise OAuthError(400, "invalid_grant", "the refresh token is unknown, expired or revoked")
            redeemed = self.tokens.redeem_refresh(refresh, now)
            if redeemed is None:
                raise OAuthError(400, "invalid_grant", "the refresh token is unknown, expired or revoked")
            subject = redeemed.subject
        elif grant_type == "client_credentials":
            client_id, client_secret = self._client_credentials(request, form)
            if not (_constant_time_equal(client_id, profile.client_id) and _constant_time_equal(client_secret, profile.client_secret)):
                raise OAuthError(401, "invalid_client", "the client credentials are incorrect")
            subject = client_id
        else:
            raise OAuthError(400, "unsupported_grant_type", "grant_type must be password, refresh_token or client_credentials")
        issued = self.tokens.issue(
            tenant.practice_id, "proprietary", subject, now,
            settings.access_token_ttl_seconds, settings.refresh_token_ttl_seconds,
        )
        return JSONResponse(issued, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    @staticmethod
    def _client_credentials(request: Request, form: dict[str, str]) -> tuple[str, str]:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError) as error:
                raise OAuthError(401, "invalid_client", "malformed Basic authorization") from error
            client_id, sep, secret = decoded.partition(":")
            if not sep:
                raise OAuthError(401, "invalid_client", "malformed Basic authorization")
            return unquote(client_id), unquote(secret)
        client_id, client_secret = require(form, "client_id", "client_secret")
        return client_id, client_secret

    # --- FHIR resources -------------------------------------------------------------------

    async def fhir(self, request: Request) -> Response:
        parts = [p for p in request.path_params.get("rest", "").split("/") if p]
        route = "/firm/{prefix}/ema/fhir/v2/" + "/".join(parts[:1] + ["{id}"] * (len(parts) > 1))
        return await self._guarded(request, route, lambda t: self._fhir(request, t, parts))

    async def _fhir(self, request: Request, tenant: Tenant, parts: list[str]) -> Response:
        self._check_bearer(request, tenant)
        base = f"{base_url_of(request)}/firm/{tenant.profile.firm_url_prefix}/ema/fhir/v2"
        now = self.world.now()
        if parts == ["metadata"]:
            if request.method != "GET":
                raise FhirError(405, "metadata is read-only", headers={"Allow": "GET"})
            return fhir_response(proprietary_capability_statement(tenant, now))
        if not parts:
            raise FhirError(404, "no resource type given")
        resource_type = parts[0]
        if any(p.startswith("$") for p in parts) or "_history" in parts or len(parts) > 2:
            raise FhirError(501, "this operation is not implemented by the proprietary API")
        if resource_type not in READ_TYPES or (resource_type == "Flag" and not tenant.profile.fhir_compliance_flags):
            raise FhirError(404, f"resource type {resource_type} is not supported")
        allowed = self._allowed_methods(tenant, resource_type, has_id=len(parts) == 2)
        if request.method not in allowed:
            detail = (
                f"writes to {resource_type} are refused" if resource_type in REFUSED_WRITE_TYPES
                else f"{request.method} is not allowed on {resource_type}{'/{id}' if len(parts) == 2 else ''}"
            )
            raise FhirError(405, detail, headers={"Allow": ", ".join(sorted(allowed))})
        if len(parts) == 1 and request.method == "GET":
            params = query_params(request)
            if resource_type == "Slot":
                slots = resources.search_slots(tenant, params, now)
                return fhir_response(searchset(slots, base, resource_type, params, len(slots)))
            page, total, offset, count = resources.search(tenant, PROPRIETARY_SEARCH[resource_type], resource_type, params)
            return fhir_response(searchset(page, base, resource_type, params, total, offset, count))
        if len(parts) == 1:
            return await self._create(request, tenant, resource_type, base, now)
        resource_id = parts[1]
        if request.method == "GET":
            resource = resources.read(tenant, resource_type, resource_id, now)
            headers = resource_headers(resource)
            if request.headers.get("if-none-match") == headers["ETag"]:
                return Response(status_code=304, headers=headers)
            return fhir_response(resource, headers=headers)
        body = await read_json_body(request)
        updated = UPDATERS[resource_type](tenant, resource_id, body, now, request.headers.get("if-match"))
        return self._written(tenant, updated, 200, base)

    @staticmethod
    def _allowed_methods(tenant: Tenant, resource_type: str, has_id: bool) -> set[str]:
        if has_id:
            return {"GET", "PUT"} if resource_type in UPDATERS else {"GET"}
        creatable = resource_type in CREATORS or resource_type == "ChargeItem"
        if resource_type == "Task":
            creatable = tenant.profile.fhir_task_create
        return {"GET", "POST"} if creatable else {"GET"}

    async def _create(self, request: Request, tenant: Tenant, resource_type: str, base: str, now: dt.datetime) -> Response:
        body = await read_json_body(request)
        if resource_type == "ChargeItem":
            charge, created = writes.create_charge_item(tenant, body, now)
            return self._written(tenant, charge, 201 if created else 200, base)
        return self._written(tenant, CREATORS[resource_type](tenant, body, now), 201, base)

    def _written(self, tenant: Tenant, resource: dict, status: int, base: str) -> Response:
        if self.gateway.lose_write_response(tenant):
            raise FhirError(500, "internal error (injected after the write was committed)")
        location = f"{base}/{resource['resourceType']}/{resource['id']}/_history/{resource['meta']['versionId']}"
        return fhir_response(resource, status, resource_headers(resource, location if status == 201 else None))
