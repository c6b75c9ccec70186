"""The sandbox world: every tenant (practice) with its store, schedule and mutable settings.

A `SandboxWorld` is built once (generator + optional mirror) and shared by every request
handler. Practices never share state: each `Tenant` has its own store, slot book, lock and
EMA accounts, which is what keeps one practice's token, key or ids away from another's data.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
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


TenantFactory = Callable[[PracticeProfile], Tenant]
"""Generates one practice's data (patients, charts, bookings) from its profile: sandbox.generator.build_tenant."""


class SandboxWorld:
    """All tenants, addressable by practice id and by firm URL prefix.

    Profiles (credentials, numbers, capabilities) exist from the start; a practice's data is generated on
    its first use (`tenant`), so 2,400 practices start in seconds and only the practices a run touches
    cost memory. Generation is deterministic per practice, so the order of first uses changes nothing.
    """

    def __init__(self, profiles: Sequence[PracticeProfile], factory: TenantFactory, seed: int,
                 clock: Clock = utc_now) -> None:
        self.seed = seed
        self.clock = clock
        self.profiles: dict[str, PracticeProfile] = {}
        self._by_prefix: dict[str, str] = {}
        for profile in profiles:
            if profile.practice_id in self.profiles or profile.firm_url_prefix in self._by_prefix:
                raise ValueError(f"duplicate practice {profile.practice_id} / {profile.firm_url_prefix}")
            self.profiles[profile.practice_id] = profile
            self._by_prefix[profile.firm_url_prefix] = profile.practice_id
        self._factory = factory
        self._built: dict[str, Tenant] = {}
        self._building = {practice_id: threading.Lock() for practice_id in self.profiles}
        self.tenants: Mapping[str, Tenant] = _TenantsView(self)
        """Every tenant by practice id; reading one generates it (iterate `profiles` to avoid that)."""
        self.on_generated: Callable[[], None] | None = None
        """Called after each practice's data is generated (the server freezes it out of the cyclic GC)."""

    def now(self) -> dt.datetime:
        return self.clock()

    def tenant(self, practice_id: str) -> Tenant | None:
        built = self._built.get(practice_id)
        if built is not None or practice_id not in self.profiles:
            return built
        with self._building[practice_id]:  # one generation per practice; other practices go on meanwhile
            if practice_id not in self._built:
                self._built[practice_id] = self._factory(self.profiles[practice_id])
                if self.on_generated is not None:
                    self.on_generated()
        return self._built[practice_id]

    def tenant_by_prefix(self, firm_url_prefix: str) -> Tenant | None:
        practice_id = self._by_prefix.get(firm_url_prefix)
        return None if practice_id is None else self.tenant(practice_id)

    def generated(self) -> int:
        """How many practices' data exists so far."""
        return len(self._built)

    def describe(self, base_url: str) -> list[dict]:
        """What `--list-practices --json` prints: credentials, numbers and capabilities per practice."""
        described = []
        for profile in self.profiles.values():
            built = self._built.get(profile.practice_id)
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
                "rate_limit_per_minute": (built.settings.rate_limit_per_minute if built is not None
                                          else profile.rate_limit_per_minute),
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


class _TenantsView(Mapping[str, Tenant]):
    def __init__(self, world: SandboxWorld) -> None:
        self._world = world

    def __getitem__(self, practice_id: str) -> Tenant:
        tenant = self._world.tenant(practice_id)
        if tenant is None:
            raise KeyError(practice_id)
        return tenant

    def __iter__(self) -> Iterator[str]:
        return iter(self._world.profiles)

    def __len__(self) -> int:
        return len(self._world.profiles)
