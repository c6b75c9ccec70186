"""ModMed's certified (ONC) FHIR API: SMART Backend Services auth, read/search, Bulk $export.

Base `/certified/{practice_id}/fhir/r4`. Tokens come from `/certified/{practice_id}/oauth2/token`
with client_credentials and an RS384 private_key_jwt; scopes are SMART system scopes
(`system/Patient.rs`, `system/*.read`, ...). Only GET (and DELETE of an export job) exists.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox import resources
from sandbox.auth import JWT_BEARER, AccessGrant, OAuthError, TokenRegistry, parse_form, require, verify_client_assertion
from sandbox.bulk import PATIENT_TYPES, SYSTEM_TYPES, ExportJobs, parse_kickoff
from sandbox.capability import certified_capability_statement
from sandbox.errors import FhirError
from sandbox.fhirhttp import base_url_of, error_response, fhir_response, query_params, resource_headers, searchset
from sandbox.gateway import Gateway
from sandbox.search import CERTIFIED_SEARCH
from sandbox.world import SandboxWorld, Tenant

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
ACCESS_TOKEN_SECONDS = 300
READABLE = frozenset(CERTIFIED_SEARCH) | {"Group"}
SCOPE = re.compile(r"^system/(\*|[A-Z][A-Za-z]+)\.(read|\*|[cruds]+)\Z")


def parse_scopes(text: str) -> frozenset[str]:
    """SMART v1/v2 system scopes, normalised to 'Type.r' / 'Type.s' permissions."""
    granted: set[str] = set()
    for scope in text.split():
        match = SCOPE.match(scope)
        if match is None:
            raise OAuthError(400, "invalid_scope", "only SMART system scopes like system/Patient.rs are supported")
        resource_type, permission = match.groups()
        if resource_type != "*" and resource_type not in READABLE:
            raise OAuthError(400, "invalid_scope", f"{resource_type} is not available on this API")
        letters = {"read": "rs", "*": "cruds"}.get(permission, permission)
        for letter in set(letters) & {"r", "s"}:
            granted.add(f"{resource_type}.{letter}")
    if not granted:
        raise OAuthError(400, "invalid_scope", "no read or search permission requested")
    return frozenset(granted)


def allows(grant: AccessGrant, resource_type: str, letter: str) -> bool:
    return f"{resource_type}.{letter}" in grant.scopes or f"*.{letter}" in grant.scopes


class CertifiedApi:
    def __init__(self, world: SandboxWorld, gateway: Gateway, tokens: TokenRegistry, exports: ExportJobs) -> None:
        self.world = world
        self.gateway = gateway
        self.tokens = tokens
        self.exports = exports

    def routes(self) -> list[Route]:
        return [
            Route("/certified/{practice_id}/fhir/r4/.well-known/smart-configuration", self.smart_configuration),
            Route("/certified/{practice_id}/fhir/r4/.well-known/smart-configuration.json", self.smart_configuration),
            Route("/certified/{practice_id}/oauth2/token", self.token, methods=ALL_METHODS),
            Route("/certified/{practice_id}/fhir/r4/{rest:path}", self.fhir, methods=ALL_METHODS),
        ]

    def _tenant(self, request: Request) -> Tenant:
        tenant = self.world.tenant(request.path_params["practice_id"])
        if tenant is None or tenant.profile.certified is None:
            raise FhirError(404, "unknown certified FHIR endpoint")
        return tenant

    @staticmethod
    def _urls(request: Request, tenant: Tenant) -> tuple[str, str]:
        root = f"{base_url_of(request)}/certified/{tenant.practice_id}"
        return f"{root}/fhir/r4", f"{root}/oauth2/token"

    async def smart_configuration(self, request: Request) -> Response:
        try:
            tenant = self._tenant(request)
        except FhirError as error:
            return error_response(error)
        _, token_url = self._urls(request, tenant)
        return JSONResponse(
            {
                "issuer": f"{base_url_of(request)}/certified/{tenant.practice_id}",
                "token_endpoint": token_url,
                "grant_types_supported": ["client_credentials"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": ["RS384"],
                "scopes_supported": ["system/*.rs", "system/*.read", *(f"system/{t}.rs" for t in sorted(READABLE))],
                "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def token(self, request: Request) -> Response:
        try:
            tenant = self._tenant(request)
        except FhirError as error:
            return error_response(error)
        await self.gateway.delay(tenant)
        registration = tenant.profile.certified
        if registration is None:
            return error_response(FhirError(404, "unknown certified FHIR endpoint"))
        try:
            self.gateway.admit(tenant, registration.client_id)
            if request.method != "POST":
                raise FhirError(405, "the token endpoint accepts POST only", headers={"Allow": "POST"})
            form = parse_form(await request.body(), request.headers.get("content-type"))
            if form.get("grant_type") != "client_credentials":
                raise OAuthError(400, "unsupported_grant_type", "only client_credentials is supported for backend services")
            assertion_type, assertion, scope = require(form, "client_assertion_type", "client_assertion", "scope")
            if assertion_type != JWT_BEARER:
                raise OAuthError(400, "invalid_request", f"client_assertion_type must be {JWT_BEARER}")
            _, token_url = self._urls(request, tenant)
            now = self.world.now()
            verify_client_assertion(
                assertion, client_id=registration.client_id, public_key_pem=registration.public_key_pem,
                token_url=token_url, practice_id=tenant.practice_id, registry=self.tokens, now=now,
            )
            scopes = parse_scopes(scope)
            issued = self.tokens.issue(
                tenant.practice_id, "certified", registration.client_id, now, ACCESS_TOKEN_SECONDS, None, scopes
            )
            issued["token_type"] = "bearer"
            issued["scope"] = scope
            response: Response = JSONResponse(issued, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
        except FhirError as error:
            response = error_response(error)
        except OAuthError as error:
            response = JSONResponse(error.body(), error.status, headers={"Cache-Control": "no-store"})
        self.gateway.record(tenant, f"{request.method} /certified/{{practice_id}}/oauth2/token", response.status_code)
        return response

    def _grant(self, request: Request, tenant: Tenant) -> AccessGrant:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise FhirError(401, "a Bearer access token is required", headers={"WWW-Authenticate": "Bearer"})
        grant = self.tokens.access(token.strip(), self.world.now())
        challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        if grant is None:
            raise FhirError(401, "the access token is unknown, expired or revoked", headers=challenge)
        if grant.practice_id != tenant.practice_id:
            raise FhirError(403, "this access token was issued for another practice")
        if grant.track != "certified":
            raise FhirError(401, "this access token is not valid for the certified API", headers=challenge)
        return grant

    async def fhir(self, request: Request) -> Response:
        parts = [p for p in request.path_params.get("rest", "").split("/") if p]
        try:
            tenant = self._tenant(request)
        except FhirError as error:
            return error_response(error)
        if parts == ["metadata"] and request.method == "GET":
            return fhir_response(certified_capability_statement(tenant, self.world.now()))
        await self.gateway.delay(tenant)
        route = "/certified/{practice_id}/fhir/r4/" + "/".join(parts[:1] + ["{id}"] * (len(parts) > 1))
        registration = tenant.profile.certified
        try:
            if registration is None:
                raise FhirError(404, "unknown certified FHIR endpoint")
            self.gateway.admit(tenant, registration.client_id)
            grant = self._grant(request, tenant)
            response = await self._dispatch(request, tenant, grant, parts)
        except FhirError as error:
            response = error_response(error)
        self.gateway.record(tenant, f"{request.method} {route}", response.status_code)
        return response

    async def _dispatch(self, request: Request, tenant: Tenant, grant: AccessGrant, parts: list[str]) -> Response:
        base, _ = self._urls(request, tenant)
        if parts and parts[0] == "$export-status" and len(parts) == 2:
            return self._export_status(request, tenant, parts[1], base)
        if request.method != "GET":
            raise FhirError(405, "the certified API is read, search and bulk only", headers={"Allow": "GET"})
        if parts and parts[0] == "$export-file" and len(parts) == 3:
            file = self.exports.get(tenant, parts[1]).files.get(parts[2])
            if file is None:
                raise FhirError(404, "unknown export file")
            return Response(file.body, media_type="application/fhir+ndjson")
        if parts == ["$export"]:
            return self._kickoff(request, tenant, grant, SYSTEM_TYPES, None)
        if len(parts) == 2 and parts == ["Patient", "$export"]:
            return self._kickoff(request, tenant, grant, PATIENT_TYPES, None)
        if len(parts) == 3 and parts[0] == "Group" and parts[2] == "$export":
            group = resources.read(tenant, "Group", parts[1], self.world.now())
            members = {m["entity"]["reference"].split("/")[-1] for m in group.get("member") or []}
            return self._kickoff(request, tenant, grant, PATIENT_TYPES, members)
        if not parts or parts[0] not in READABLE or len(parts) > 2 or any(p.startswith(("$", "_")) for p in parts):
            raise FhirError(404, "resource type or operation not supported by the certified API")
        resource_type = parts[0]
        if len(parts) == 1:
            if resource_type == "Group":
                raise FhirError(405, "Group supports read only", headers={"Allow": "GET"})
            if not allows(grant, resource_type, "s"):
                raise FhirError(403, f"the token's scopes do not allow searching {resource_type}")
            params = query_params(request)
            page, total, offset, count = resources.search(tenant, CERTIFIED_SEARCH[resource_type], resource_type, params)
            return fhir_response(searchset(page, base, resource_type, params, total, offset, count))
        if not allows(grant, resource_type, "r"):
            raise FhirError(403, f"the token's scopes do not allow reading {resource_type}")
        resource = resources.read(tenant, resource_type, parts[1], self.world.now())
        return fhir_response(resource, headers=resource_headers(resource))

    def _kickoff(
        self, request: Request, tenant: Tenant, grant: AccessGrant, types: tuple[str, ...], members: set[str] | None
    ) -> Response:
        if "respond-async" not in request.headers.get("prefer", ""):
            raise FhirError(400, "bulk export needs the header Prefer: respond-async")
        accept = request.headers.get("accept", "application/fhir+json")
        if not any(a in accept for a in ("application/fhir+json", "*/*")):
            raise FhirError(400, "bulk export answers application/fhir+json")
        permitted = tuple(t for t in types if allows(grant, t, "r"))
        if not permitted:
            raise FhirError(403, "the token's scopes allow none of the exported resource types")
        chosen, since = parse_kickoff(query_params(request), permitted)
        job = self.exports.start(tenant, str(request.url), chosen, since, members, self.world.now())
        base, _ = self._urls(request, tenant)
        return Response(status_code=202, headers={"Content-Location": f"{base}/$export-status/{job.job_id}"})

    def _export_status(self, request: Request, tenant: Tenant, job_id: str, base: str) -> Response:
        if request.method == "DELETE":
            self.exports.cancel(tenant, job_id)
            return Response(status_code=202)
        if request.method != "GET":
            raise FhirError(405, "export status supports GET and DELETE", headers={"Allow": "GET, DELETE"})
        job = self.exports.poll(tenant, job_id)
        if job is None:
            return Response(status_code=202, headers={"X-Progress": "in-progress: 50%", "Retry-After": "1"})
        return JSONResponse(self.exports.manifest(job, base))
