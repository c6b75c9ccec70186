"""Sandbox-only operator endpoints under `/_admin`: practice list, faults, settings, stats, lockout.

They exist so tests, the demo and the rate benchmark can steer a running sandbox; ModMed
has no equivalent. They listen on 127.0.0.1 like the rest of the server.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.auth import TokenRegistry
from sandbox.ema_screens import EmaAccounts
from sandbox.faults import FaultBoard, PracticeFaults
from sandbox.fhirhttp import base_url_of
from sandbox.gateway import Gateway
from sandbox.world import SandboxWorld, Tenant

MAX_ADMIN_BODY = 16 * 1024


class SettingsUpdate(BaseModel):
    """Runtime knobs; omitted fields keep their value."""

    model_config = ConfigDict(extra="forbid")

    rate_limit_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    access_token_ttl_seconds: int | None = Field(default=None, ge=1, le=86_400)
    refresh_token_ttl_seconds: int | None = Field(default=None, ge=1, le=30 * 86_400)
    ema_lockout_threshold: int | None = Field(default=None, ge=1, le=20)


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def apply_faults(world: SandboxWorld, board: FaultBoard, tokens: TokenRegistry, practice_id: str, faults: PracticeFaults) -> None:
    """Install faults; `revoke_tokens` acts now: every token issued so far stops working."""
    board.set(practice_id, faults)
    if faults.revoke_tokens:
        tokens.revoke_practice(practice_id, world.now())


class AdminApi:
    def __init__(
        self, world: SandboxWorld, gateway: Gateway, faults: FaultBoard, tokens: TokenRegistry, accounts: EmaAccounts
    ) -> None:
        self.world = world
        self.gateway = gateway
        self.faults = faults
        self.tokens = tokens
        self.accounts = accounts

    def routes(self) -> list[Route]:
        p = "/_admin/practices/{practice_id}"
        return [
            Route("/_admin/practices", self.practices),
            Route(f"{p}/faults", self.practice_faults, methods=["GET", "PUT", "DELETE"]),
            Route(f"{p}/settings", self.settings, methods=["GET", "PUT"]),
            Route(f"{p}/stats", self.stats, methods=["GET", "DELETE"]),
            Route(f"{p}/lockout", self.lockout, methods=["DELETE"]),
        ]

    def _tenant(self, request: Request) -> Tenant | None:
        return self.world.tenant(request.path_params["practice_id"])

    @staticmethod
    async def _json(request: Request) -> object:
        body = await request.body()
        if len(body) > MAX_ADMIN_BODY:
            raise ValueError("body too large")
        return json.loads(body.decode("utf-8"))

    async def practices(self, request: Request) -> Response:
        return JSONResponse(self.world.describe(base_url_of(request)))

    async def practice_faults(self, request: Request) -> Response:
        tenant = self._tenant(request)
        if tenant is None:
            return _problem(404, "unknown practice")
        if request.method == "DELETE":
            self.faults.clear(tenant.practice_id)
        elif request.method == "PUT":
            try:
                faults = PracticeFaults.model_validate(await self._json(request))
            except (ValueError, ValidationError) as error:
                detail = error.errors(include_input=False) if isinstance(error, ValidationError) else str(error)
                return JSONResponse({"error": "invalid faults", "detail": detail}, status_code=422)
            apply_faults(self.world, self.faults, self.tokens, tenant.practice_id, faults)
        return JSONResponse(self.faults.status(tenant.practice_id))

    async def settings(self, request: Request) -> Response:
        tenant = self._tenant(request)
        if tenant is None:
            return _problem(404, "unknown practice")
        if request.method == "PUT":
            try:
                update = SettingsUpdate.model_validate(await self._json(request))
            except (ValueError, ValidationError) as error:
                detail = error.errors(include_input=False) if isinstance(error, ValidationError) else str(error)
                return JSONResponse({"error": "invalid settings", "detail": detail}, status_code=422)
            for name, value in update.model_dump(exclude_none=True).items():
                setattr(tenant.settings, name, value)
        return JSONResponse(vars(tenant.settings))

    async def stats(self, request: Request) -> Response:
        tenant = self._tenant(request)
        if tenant is None:
            return _problem(404, "unknown practice")
        if request.method == "DELETE":
            self.gateway.reset_stats(tenant)
        return JSONResponse(self.gateway.stats(tenant))

    async def lockout(self, request: Request) -> Response:
        tenant = self._tenant(request)
        if tenant is None:
            return _problem(404, "unknown practice")
        self.accounts.unlock(tenant.practice_id)
        return Response(status_code=204)
