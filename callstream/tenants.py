"""The practice (tenant) directory and tenant routing: called number → practice.

Each of ModMed's ~2,400 pain practices has its own firm-specific URL, credentials and go-live phase.
The directory is a YAML or JSON file (a list under ``practices:``); this module validates it and
answers which practice a called number belongs to. Credentials are never in the file itself, only a
reference (``env:VAR`` or ``file:/path``) resolved when a connector needs them.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Mapping
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from callstream.errors import ConfigError, TenantDirectoryError
from callstream.mailbox import mailbox_address
from callstream.secrets import read_login, read_secret
from guards.hours import DEFAULT_OFFICE_HOURS, OfficeHours
from guards.model import GoLivePhase, VisitReason
from schemas.phone import E164_RULE, is_e164

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def require_transport_security(url: str) -> str:
    """PHI and credentials travel only over https; plain http is accepted for loopback (dev, sandbox) alone."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return url
    raise ValueError("must be an https URL (plain http only on 127.0.0.1/localhost)")
CREDENTIAL_REF = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+)\Z")


class ApiTrack(StrEnum):
    PROPRIETARY = "proprietary"
    CERTIFIED = "certified"


class AuthMethod(StrEnum):
    PASSWORD = "password"
    CLIENT_CREDENTIALS = "client_credentials"
    PRIVATE_KEY_JWT = "private_key_jwt"


class SiemFormat(StrEnum):
    OCSF = "ocsf"
    SPLUNK_HEC = "splunk_hec"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Credentials(_Frozen):
    """The secret bundle a credential reference resolves to; every value is a SecretStr."""

    username: SecretStr | None = None
    password: SecretStr | None = None
    api_key: SecretStr | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    private_key_pem: SecretStr | None = None
    key_id: str | None = None


CREDENTIAL_FIELDS: Mapping[AuthMethod, tuple[str, ...]] = MappingProxyType({
    AuthMethod.PASSWORD: ("username", "password"),
    AuthMethod.CLIENT_CREDENTIALS: ("client_id", "client_secret"),
    AuthMethod.PRIVATE_KEY_JWT: ("client_id", "private_key_pem"),
})
"""The fields each auth method's token grant cannot do without (connectors.auth builds its forms from them)."""


class AuthConfig(_Frozen):
    method: AuthMethod
    credentials_ref: str = Field(description="env:VAR or file:/path holding a JSON Credentials object")
    token_url: str | None = Field(default=None, description="Overrides the track's default token endpoint")

    @field_validator("credentials_ref")
    @classmethod
    def _ref_form(cls, ref: str) -> str:
        if not CREDENTIAL_REF.match(ref):
            raise ValueError("must be env:VARIABLE or file:/path (the secret itself never goes in this file)")
        return ref

    def resolve(self) -> Credentials:
        """Read the secret bundle now; errors name the reference, never its content."""
        try:
            raw = read_secret(self.credentials_ref, "credential")
        except ConfigError as exc:
            raise TenantDirectoryError(str(exc)) from None
        try:
            return Credentials.model_validate_json(raw)
        except ValidationError:
            raise TenantDirectoryError(
                f"credential reference {self.credentials_ref}: not a JSON object of username/password/api_key/"
                "client_id/client_secret/private_key_pem/key_id"
            ) from None

    def usable_credentials(self) -> Credentials:
        """``resolve()``, and the bundle has every field the method's grant needs: a reference that would
        only fail at the practice's first call fails here (errors name the reference and the fields)."""
        credentials = self.resolve()
        missing = [name for name in CREDENTIAL_FIELDS[self.method] if not _filled(getattr(credentials, name))]
        if missing:
            raise TenantDirectoryError(
                f"credential reference {self.credentials_ref}: lacks {', '.join(missing)} "
                f"(needed by the {self.method.value} method)"
            )
        return credentials


def _filled(value: SecretStr | str | None) -> bool:
    return bool(value.get_secret_value() if isinstance(value, SecretStr) else value)


class Capabilities(_Frozen):
    """What this practice's ModMed tenant offers, deciding FHIR vs EMA per command."""

    fhir_task_create: bool = False
    fhir_compliance_flags: bool = True
    ema_booking_templates: tuple[str, ...] = ()
    ema_task_queue: bool = True
    ema_url: str | None = Field(default=None, description="EMA web root; defaults to the base URL's /ema/{firm}")

    @field_validator("ema_booking_templates")
    @classmethod
    def _known_visit_reasons(cls, codes: tuple[str, ...]) -> tuple[str, ...]:
        """A typo here would silently route an EMA-only template to FHIR, where it cannot be booked."""
        known = {reason.value for reason in VisitReason}
        unknown = [code for code in codes if code not in known]
        if unknown:
            raise ValueError(f"unknown visit-reason code(s) {unknown}; expected some of {sorted(known)}")
        return codes

    @field_validator("ema_url")
    @classmethod
    def _secure_ema_url(cls, url: str | None) -> str | None:
        return None if url is None else require_transport_security(url)

    @model_validator(mode="after")
    def _a_task_path_exists(self) -> Capabilities:
        """Every refill escalation becomes a task: a practice with no way to create one cannot go live."""
        if not (self.fhir_task_create or self.ema_task_queue):
            raise ValueError("either fhir_task_create or ema_task_queue must be true: escalations become tasks")
        return self


class SiemEndpoint(_Frozen):
    url: str = Field(repr=False, description="Receivers often put a token in the URL")
    secret_ref: str = Field(description="env:VAR or file:/path holding the whsec_... signing secret")
    format: SiemFormat = SiemFormat.OCSF

    @field_validator("url")
    @classmethod
    def _secure_url(cls, url: str) -> str:
        return require_transport_security(url)

    @field_validator("secret_ref")
    @classmethod
    def _ref_form(cls, ref: str) -> str:
        if not CREDENTIAL_REF.match(ref):
            raise ValueError("must be env:VARIABLE or file:/path")
        return ref


PROCEDURE_VISIT_REASONS = frozenset({
    VisitReason.ESI, VisitReason.FACET_INJECTION, VisitReason.RFA, VisitReason.SCS_TRIAL, VisitReason.KYPHOPLASTY,
    VisitReason.TRIGGER_POINT,
})
"""Visit reasons that get the pain-specific intake variant (``intake.procedure_form_url``) unless a form of their own
is configured."""


class SmsChannel(_Frozen):
    """An HTTP SMS provider in the common request shape: POST JSON {to, from, body} with a bearer token."""

    provider_url: str = Field(repr=False)
    from_number: str
    token_ref: str = Field(description="env:VAR or file:/path holding the provider's bearer token")

    @field_validator("provider_url")
    @classmethod
    def _secure_url(cls, url: str) -> str:
        return require_transport_security(url)

    @field_validator("from_number")
    @classmethod
    def _e164(cls, number: str) -> str:
        if not is_e164(number):
            raise ValueError(f"must be an E.164 number ({E164_RULE})")
        return number

    @field_validator("token_ref")
    @classmethod
    def _ref_form(cls, ref: str) -> str:
        if not CREDENTIAL_REF.match(ref):
            raise ValueError("must be env:VARIABLE or file:/path")
        return ref


class EmailChannel(_Frozen):
    """An SMTP relay and the practice's sender address (STARTTLS by default; plain only on the loopback)."""

    smtp_host: str = Field(min_length=1, max_length=253)
    smtp_port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    from_address: str
    credentials_ref: str | None = Field(default=None, description="env:VAR or file:/path holding {username, password}")

    @field_validator("from_address")
    @classmethod
    def _address(cls, address: str) -> str:
        return mailbox_address(address)

    @field_validator("credentials_ref")
    @classmethod
    def _ref_form(cls, ref: str | None) -> str | None:
        if ref is not None and not CREDENTIAL_REF.match(ref):
            raise ValueError("must be env:VARIABLE or file:/path")
        return ref

    @model_validator(mode="after")
    def _tls_off_the_loopback(self) -> EmailChannel:
        if self.security == "none" and self.smtp_host not in LOOPBACK_HOSTS:
            raise ValueError("security none (no TLS) is only allowed for a relay on 127.0.0.1/localhost")
        return self


class IntakeConfig(_Frozen):
    """The practice's branded intake forms and how the link (with the booking confirmation) reaches patients.

    ``forms`` maps visit-reason codes to a form URL; procedure visits without one get ``procedure_form_url``
    (the pain-specific variant); a visit with neither gets no intake link. ``link_secret_ref`` signs the
    reference each link carries, so a completed form can only land on the chart of the appointment it was sent for.
    """

    brand: str | None = Field(default=None, max_length=80, pattern=r"^[^\x00-\x1f\x7f]+$")
    forms: dict[str, str] = Field(default_factory=dict, max_length=20)
    procedure_form_url: str | None = None
    link_secret_ref: str
    sms: SmsChannel | None = None
    email: EmailChannel | None = None
    completions_url: str | None = Field(default=None, description=(
        "the intake service's listing of completed forms (`callstream intake sync` files them on the chart)"))

    def __hash__(self) -> int:  # a Practice (frozen, hashable) holds one; dicts are not hashable by default
        return hash((self.brand, tuple(sorted(self.forms.items())), self.procedure_form_url, self.link_secret_ref,
                     self.sms, self.email, self.completions_url))

    @field_validator("forms")
    @classmethod
    def _known_reasons_secure_urls(cls, forms: dict[str, str]) -> dict[str, str]:
        known = {reason.value for reason in VisitReason}
        unknown = sorted(code for code in forms if code not in known)
        if unknown:
            raise ValueError(f"unknown visit-reason code(s) {unknown}; expected some of {sorted(known)}")
        return {code: require_transport_security(url) for code, url in forms.items()}

    @field_validator("procedure_form_url", "completions_url")
    @classmethod
    def _secure_url(cls, url: str | None) -> str | None:
        return None if url is None else require_transport_security(url)

    @field_validator("link_secret_ref")
    @classmethod
    def _ref_form(cls, ref: str) -> str:
        if not CREDENTIAL_REF.match(ref):
            raise ValueError("must be env:VARIABLE or file:/path")
        return ref

    @model_validator(mode="after")
    def _a_channel(self) -> IntakeConfig:
        if self.sms is None and self.email is None:
            raise ValueError("needs an sms or an email channel (or both)")
        return self

    def form_url(self, visit_reason: VisitReason) -> str | None:
        """The form for this visit: its own, else the pain-specific variant for a procedure, else none."""
        own = self.forms.get(VisitReason(visit_reason).value)
        if own is not None:
            return own
        return self.procedure_form_url if visit_reason in PROCEDURE_VISIT_REASONS else None


class Practice(_Frozen):
    """One pain practice: where its ModMed tenant lives, how to authenticate and how far it is live."""

    practice_id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    name: str = Field(min_length=1, max_length=200)
    called_numbers: tuple[str, ...] = Field(min_length=1)
    timezone: str = "America/New_York"
    track: ApiTrack = ApiTrack.PROPRIETARY
    base_url: str = Field(description="Environment root, e.g. https://mmi.example or http://127.0.0.1:18080")
    firm_url_prefix: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$")
    fhir_base_url: str | None = None
    auth: AuthConfig
    rate_limit_per_min: int = Field(default=1000, ge=1, le=100_000)
    capabilities: Capabilities = Capabilities()
    phase: GoLivePhase = GoLivePhase.SANDBOX
    siem: SiemEndpoint | None = None
    office_hours: OfficeHours = Field(default=DEFAULT_OFFICE_HOURS, description=(
        "weekly openings, holidays and special days in the practice's timezone (guards.hours); none: Mon-Fri 08-17"))
    intake: IntakeConfig | None = Field(default=None, description="branded intake forms and their SMS / e-mail push")
    digest_recipients: tuple[str, ...] = Field(
        default=(), max_length=50, description="Who gets the practice's daily escalation digest (none: no digest)")

    @field_validator("digest_recipients")
    @classmethod
    def _recipient_addresses(cls, addresses: tuple[str, ...]) -> tuple[str, ...]:
        for address in addresses:
            mailbox_address(address)
        if len({address.lower() for address in addresses}) != len(addresses):
            raise ValueError("lists an address twice")
        return addresses

    @field_validator("called_numbers")
    @classmethod
    def _e164(cls, numbers: tuple[str, ...]) -> tuple[str, ...]:
        for number in numbers:
            if not is_e164(number):
                raise ValueError(f"{number!r} is not an E.164 number ({E164_RULE})")
        return numbers

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, url: str) -> str:
        return require_transport_security(url).rstrip("/")

    @field_validator("fhir_base_url")
    @classmethod
    def _fhir_base_url(cls, url: str | None) -> str | None:
        return None if url is None else require_transport_security(url)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        """Office hours and booking dates are computed in this zone; an unknown one must fail at load."""
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{zone!r} is not an IANA time zone (e.g. America/Chicago)") from None
        return zone

    @model_validator(mode="after")
    def _track_fields(self) -> Practice:
        if self.track is ApiTrack.PROPRIETARY and not self.firm_url_prefix:
            raise ValueError("firm_url_prefix is required on the proprietary track")
        if self.track is ApiTrack.CERTIFIED and not self.fhir_base_url:
            raise ValueError("fhir_base_url is required on the certified track")
        if self.track is ApiTrack.CERTIFIED and self.auth.method is AuthMethod.PASSWORD:
            raise ValueError("the certified track has no password grant (use private_key_jwt or client_credentials)")
        return self

    @property
    def fhir_base(self) -> str:
        """Root of this practice's FHIR resources, whichever track it is on."""
        if self.track is ApiTrack.CERTIFIED:
            assert self.fhir_base_url is not None
            return self.fhir_base_url.rstrip("/")
        return f"{self.base_url}/firm/{self.firm_url_prefix}/ema/fhir/v2"

    @property
    def token_url(self) -> str:
        if self.auth.token_url:
            return self.auth.token_url
        return f"{self.base_url}/firm/{self.firm_url_prefix}/ema/ws/oauth2/grant"

    @property
    def ema_url(self) -> str:
        return (self.capabilities.ema_url or f"{self.base_url}/ema/{self.firm_url_prefix}").rstrip("/")

    def chart_deep_link(self, patient_id: str) -> str:
        """The EMA link that opens this patient's chart in the practice's tenant (audit reconciliation)."""
        return f"{self.ema_url}/chart/{patient_id}"


class TenantDirectory(Mapping[str, Practice]):
    """Practices by id, with the called-number routing table built once."""

    def __init__(self, practices: list[Practice], source: str = "<memory>") -> None:
        self.source = source
        self._by_id: dict[str, Practice] = {}
        self._by_number: dict[str, Practice] = {}
        for practice in practices:
            if practice.practice_id in self._by_id:
                raise TenantDirectoryError(f"{source}: practice {practice.practice_id}: duplicate practice_id")
            self._by_id[practice.practice_id] = practice
            for number in practice.called_numbers:
                owner = self._by_number.setdefault(number, practice)
                if owner is not practice:
                    raise TenantDirectoryError(
                        f"{source}: practice {practice.practice_id}: called_numbers: number already belongs to "
                        f"practice {owner.practice_id}"
                    )

    def __getitem__(self, practice_id: str) -> Practice:
        return self._by_id[practice_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def resolve_called_number(self, called_number: str) -> Practice | None:
        """Tenant routing: the practice a caller dialled, or None for an unknown number."""
        return self._by_number.get(called_number)


def unresolvable_credentials(directory: TenantDirectory) -> list[str]:
    """One line per practice whose ``auth.credentials_ref`` does not resolve now (variable unset, file
    missing or unreadable, or not credentials of the method's shape), naming the practice and the
    reference, never the secret. `callstream tenants check` fails on any; the worker never reports ready."""
    problems = []
    for practice in directory.values():
        try:
            practice.auth.usable_credentials()
        except TenantDirectoryError as exc:
            problems.append(f"{directory.source}: practice {practice.practice_id}: {exc}")
        problems += [f"{directory.source}: practice {practice.practice_id}: {problem}"
                     for problem in _intake_secret_problems(practice.intake)]
    return problems


def _intake_secret_problems(intake: IntakeConfig | None) -> list[str]:
    """The intake link secret and the channels' credentials must resolve too: a link that cannot be signed or a
    message that cannot be sent would only fail at a caller's booking."""
    if intake is None:
        return []
    checks: list[tuple[str, str, bool]] = [(intake.link_secret_ref, "intake link secret", False)]
    if intake.sms is not None:
        checks.append((intake.sms.token_ref, "SMS provider token", False))
    if intake.email is not None and intake.email.credentials_ref is not None:
        checks.append((intake.email.credentials_ref, "SMTP credentials", True))
    problems = []
    for reference, purpose, is_login in checks:
        try:
            read_login(reference, purpose) if is_login else read_secret(reference, purpose)
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def parse_tenant_directory(data: Any, source: str) -> TenantDirectory:
    """Validate a decoded directory document; errors name the source, the practice and the field."""
    if not isinstance(data, dict) or not isinstance(data.get("practices"), list):
        raise TenantDirectoryError(f"{source}: expected a mapping with a 'practices' list")
    if set(data) != {"practices"}:
        unknown = sorted(str(key) for key in data if key != "practices")
        raise TenantDirectoryError(f"{source}: {_unknown_keys(unknown, ['practices'])}")
    practices: list[Practice] = []
    for index, entry in enumerate(data["practices"]):
        label = entry.get("practice_id", f"#{index}") if isinstance(entry, dict) else f"#{index}"
        try:
            practices.append(Practice.model_validate(entry))
        except ValidationError as exc:
            raise TenantDirectoryError(f"{source}: practice {label}: {_first_problem(exc)}") from None
    return TenantDirectory(practices, source)


def _first_problem(error: ValidationError) -> str:
    """The line to show for an invalid entry. Unknown keys come first: a misspelt key also makes the real
    one missing, and "called_numbers: Field required" alone hides which key was wrong."""
    problems = error.errors()
    extra = sorted((problem for problem in problems if problem["type"] == "extra_forbidden"), key=lambda p: len(p["loc"]))
    if extra:
        where = extra[0]["loc"][:-1]
        unknown = [".".join(str(part) for part in problem["loc"]) for problem in extra if problem["loc"][:-1] == where]
        line = _unknown_keys(unknown, _keys_at(Practice, where))
        rest = len(problems) - len(unknown)
    else:
        first = problems[0]
        line = f"{'.'.join(str(part) for part in first['loc']) or '(entry)'}: {first['msg']}"
        rest = len(problems) - 1
    return line + (f" (+{rest} more)" if rest else "")


def _unknown_keys(unknown: list[str], known: list[str]) -> str:
    """'unknown key caled_numbers — did you mean called_numbers?' (the guess from the keys allowed there)."""
    parts = []
    for key in unknown:
        guess = difflib.get_close_matches(key.rpartition(".")[2], known, n=1, cutoff=0.6)
        parts.append(f"unknown key {key}" + (f" — did you mean {guess[0]}?" if guess else ""))
    allowed = "" if any("did you mean" in part for part in parts) else f" (allowed: {', '.join(known)})"
    return "; ".join(parts) + allowed


def _keys_at(model: type[BaseModel], path: tuple[int | str, ...]) -> list[str]:
    """The keys the model nested at ``path`` (e.g. ('auth',)) accepts; list indexes are skipped."""
    for part in path:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            continue
        nested = [arg for arg in (field.annotation, *get_args(field.annotation))
                  if isinstance(arg, type) and issubclass(arg, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


def load_tenant_directory(path: Path) -> TenantDirectory:
    """Load the directory from a .yaml/.yml or .json file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TenantDirectoryError(f"{path}: cannot read tenant directory: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        where = getattr(exc, "problem_mark", None) or getattr(exc, "lineno", None)
        line = f" at line {where.line + 1}" if hasattr(where, "line") else (f" at line {where}" if where else "")
        raise TenantDirectoryError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}{line}") from None
    return parse_tenant_directory(data, str(path))
