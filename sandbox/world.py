"""The sandbox world: every tenant (practice) with its store, schedule and mutable settings.

A `SandboxWorld` is built once (generator + optional mirror) and shared by every request
handler. Practices never share state: each `Tenant` has its own store, slot book, lock and
EMA accounts, which is what keeps one practice's token, key or ids away from another's data.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sandbox.profile import PracticeProfile
from sandbox.scheduling import SlotBook
from sandbox.store import ResourceStore

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class TenantSettings:
    """Per-practice knobs an operator may change at runtime (admin endpoint)."""

    rate_limit_per_minute: int
    access_token_ttl_seconds: int
    refresh_token_ttl_seconds: int
    ema_lockout_threshold: int


@dataclass
class Tenant:
    profile: PracticeProfile
    store: ResourceStore
    slots: SlotBook
    anchor: dt.date
    settings: TenantSettings
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def practice_id(self) -> str:
        return self.profile.practice_id

    def id_prefix(self, kind: str) -> str:
        return f"{kind}-{self.profile.firm_number}"


class SandboxWorld:
    """All tenants, addressable by practice id and by firm URL prefix."""

    def __init__(self, tenants: list[Tenant], seed: int, clock: Clock = utc_now) -> None:
        self.seed = seed
        self.clock = clock
        self.tenants: dict[str, Tenant] = {}
        self._by_prefix: dict[str, Tenant] = {}
        for tenant in tenants:
            if tenant.practice_id in self.tenants or tenant.profile.firm_url_prefix in self._by_prefix:
                raise ValueError(f"duplicate practice {tenant.practice_id} / {tenant.profile.firm_url_prefix}")
            self.tenants[tenant.practice_id] = tenant
            self._by_prefix[tenant.profile.firm_url_prefix] = tenant

    def now(self) -> dt.datetime:
        return self.clock()

    def tenant(self, practice_id: str) -> Tenant | None:
        return self.tenants.get(practice_id)

    def tenant_by_prefix(self, firm_url_prefix: str) -> Tenant | None:
        return self._by_prefix.get(firm_url_prefix)

    def describe(self, base_url: str) -> list[dict]:
        """What `--list-practices --json` prints: credentials, numbers and capabilities per practice."""
        described = []
        for tenant in self.tenants.values():
            profile = tenant.profile
            coordinator = profile.coordinator()
            entry: dict = {
                "practice_id": profile.practice_id,
                "name": profile.name,
                "firm_url_prefix": profile.firm_url_prefix,
                "track": profile.track,
                "timezone": profile.timezone,
                "api_key": profile.api_key,
                "username": profile.username,
                "password": profile.password,
                "client_id": profile.client_id,
                "client_secret": profile.client_secret,
                "called_numbers": list(profile.called_numbers),
                "capabilities": profile.capabilities.model_dump(mode="json"),
                "rate_limit_per_minute": tenant.settings.rate_limit_per_minute,
                "controlled_substance_coordinator": coordinator.practitioner_id if coordinator else None,
                "ema_base_url": f"{base_url}/ema/{profile.firm_url_prefix}",
                "chart_url_template": f"{base_url}/ema/{profile.firm_url_prefix}/chart/{{patient_id}}",
                "fhir_base": f"{base_url}/firm/{profile.firm_url_prefix}/ema/fhir/v2",
                "token_url": f"{base_url}/firm/{profile.firm_url_prefix}/ema/ws/oauth2/grant",
                "certified": None,
            }
            if profile.certified is not None:
                fhir_base = f"{base_url}/certified/{profile.practice_id}/fhir/r4"
                entry["fhir_base"] = fhir_base
                entry["token_url"] = f"{base_url}/certified/{profile.practice_id}/oauth2/token"
                entry["certified"] = {
                    "fhir_base": fhir_base,
                    "token_url": f"{base_url}/certified/{profile.practice_id}/oauth2/token",
                    "smart_configuration_url": f"{fhir_base}/.well-known/smart-configuration",
                    "client_id": profile.certified.client_id,
                    "key_id": profile.certified.key_id,
                    "signing_algorithm": "RS384",
                    "private_key_pem": profile.certified.private_key_pem,
                }
            described.append(entry)
        return described
