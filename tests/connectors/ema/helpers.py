"""Plain helpers of the EMA tests: practice entries with EMA logins, the sandbox's screen log, an alert
receiver, a movable sandbox clock and chart lookups in the in-process sandbox world."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callstream.tenants import Practice
from sandbox.world import SandboxWorld, Tenant
from tests.connectors.helpers import practice_entry
from tests.fixtures.sandbox import MovableTime, SandboxServer

LOGIN_ROUTE = "POST /ema/{prefix}/login"


class MovableClock(MovableTime):
    """The sandbox world's clock; moving it past the 30-minute idle limit expires every EMA session.

    It only ever moves forward, so sessions opened after one expiry are not revived by the next test.
    """

    def expire_ema_sessions(self) -> None:
        self.advance(31 * 60)


class ScreenLog(logging.Handler):
    """The sandbox's own access log (practice id, route template, status): its login counter."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[str, str, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.args, tuple) and len(record.args) == 3:
            practice_id, route, status = record.args
            self.lines.append((str(practice_id), str(route), int(status)))

    def logins(self, practice_id: str, status: int | None = None) -> int:
        return sum(
            1 for pid, route, code in list(self.lines)
            if pid == practice_id and route == LOGIN_ROUTE and (status is None or code == status)
        )

    def screens(self, practice_id: str) -> int:
        return sum(1 for pid, route, _ in list(self.lines) if pid == practice_id and " /ema/" in route)


@dataclass
class AlertReceiver:
    """What a Slack-compatible webhook on 127.0.0.1 received."""

    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.bodies)

    def clear(self) -> None:
        with self.lock:
            self.bodies.clear()


def ema_credentials(listing: dict[str, Any]) -> dict[str, Any]:
    """The practice's credential bundle including its EMA login (certified practices too)."""
    bundle: dict[str, Any] = {"username": listing["username"], "password": listing["password"]}
    if listing["track"] == "certified":
        bundle.update({k: listing["certified"][k] for k in ("client_id", "private_key_pem", "key_id")})
    else:
        bundle.update({k: listing[k] for k in ("api_key", "client_id", "client_secret")})
    return bundle


@dataclass
class EmaPracticeSet:
    """Tenant-directory entries of a sandbox's practices whose credential bundles carry the EMA login."""

    server: SandboxServer
    secrets_dir: Path

    def listing(self, practice_id: str) -> dict[str, Any]:
        return next(p for p in self.server.practices if p["practice_id"] == practice_id)

    def practice(self, practice_id: str, *, credentials: dict[str, Any] | None = None, **changes: Any) -> Practice:
        listing = self.listing(practice_id)
        secret = self.secrets_dir / f"{practice_id}-ema-{len(list(self.secrets_dir.iterdir()))}.json"
        secret.touch(mode=0o600)
        secret.write_text(json.dumps(ema_credentials(listing) if credentials is None else credentials))
        capabilities = {"ema_url": listing["ema_base_url"], **changes.pop("capabilities", {})}
        return practice_entry(
            listing, self.secrets_dir, auth={"credentials_ref": f"file:{secret}"}, capabilities=capabilities, **changes
        )


def flags_of(tenant: Tenant, patient_id: str) -> dict[str, dict[str, Any]]:
    """The chart's active compliance Flags by code."""
    return {
        flag["code"]["coding"][0]["code"]: flag
        for flag in tenant.store.for_patient("Flag", patient_id)
        if flag.get("status") == "active"
    }


def pdmp_checks(tenant: Tenant, patient_id: str) -> list[dict[str, Any]]:
    return [
        o for o in tenant.store.for_patient("Observation", patient_id)
        if o["code"]["coding"][0]["code"] == "pdmp-check"
    ]


def patients_where(
    world: SandboxWorld, practice_id: str, predicate: Callable[[Tenant, str], bool]
) -> list[str]:
    tenant = world.tenants[practice_id]
    return [p["id"] for p in tenant.store.all_of("Patient") if predicate(tenant, p["id"])]


def distinct_charts(world: SandboxWorld, practice_id: str) -> list[str]:
    """One patient per distinct combination of compliance flags (and PDMP check on file or not)."""
    tenant = world.tenants[practice_id]
    chosen: dict[tuple[Any, ...], str] = {}
    for patient in tenant.store.all_of("Patient"):
        flags = flags_of(tenant, patient["id"])
        signature = (
            tuple(sorted(
                (code, tuple(e.get("valueCode", "") for e in flag.get("extension", [])))
                for code, flag in flags.items()
            )),
            bool(pdmp_checks(tenant, patient["id"])),
        )
        chosen.setdefault(signature, patient["id"])
    return list(chosen.values())


def phi_of(world: SandboxWorld, practice_id: str, patient_id: str) -> list[str]:
    """Strings that identify the patient (name parts, date of birth, phone digits) and must never be logged."""
    patient = world.tenants[practice_id].store.get("Patient", patient_id)
    assert patient is not None
    name = patient["name"][0]
    phones = [t["value"] for t in patient.get("telecom", []) if t.get("system") == "phone"]
    return [name["family"], *name["given"], patient["birthDate"], *phones, *(p[-10:] for p in phones)]
