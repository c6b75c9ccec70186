"""The sandbox ASGI application: both FHIR tracks, EMA screens and admin endpoints on one server."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.admin import AdminApi, apply_faults
from sandbox.auth import TokenRegistry
from sandbox.bulk import ExportJobs
from sandbox.certified import CertifiedApi
from sandbox.ema_screens import EmaAccounts, EmaScreens
from sandbox.errors import FhirError
from sandbox.faults import FaultBoard, PracticeFaults
from sandbox.fhirhttp import error_response
from sandbox.gateway import Gateway
from sandbox.intake import IntakeService
from sandbox.proprietary import ProprietaryApi
from sandbox.world import SandboxWorld


async def _health(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _http_error(_: Request, error: Exception) -> Response:
    """Unmatched routes and methods answer in FHIR's error shape too."""
    status = error.status_code if isinstance(error, HTTPException) else 500
    return error_response(FhirError(status, "no such endpoint" if status == 404 else "request not supported"))


def create_app(world: SandboxWorld, faults: Mapping[str, PracticeFaults] | None = None) -> Starlette:
    """Build the server for `world`; `faults` (practice id → faults) apply from the first request."""
    board = FaultBoard(seed=world.seed)
    tokens = TokenRegistry()
    gateway = Gateway(world, board)
    accounts = EmaAccounts()
    for practice_id, practice_faults in (faults or {}).items():
        if world.tenant(practice_id) is None:
            raise ValueError(f"faults name unknown practice {practice_id!r}")
        apply_faults(world, board, tokens, practice_id, practice_faults)
    routes = [
        Route("/healthz", _health),
        *ProprietaryApi(world, gateway, tokens).routes(),
        *CertifiedApi(world, gateway, tokens, ExportJobs()).routes(),
        *EmaScreens(world, gateway, board, accounts).routes(),
        *AdminApi(world, gateway, board, tokens, accounts).routes(),
        *IntakeService(world).routes(),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.world = world
    app.state.faults = board
    return app
