"""One frozen settings object, built once at start-up and passed explicitly to whatever needs it.

Sources, strongest first: explicit keyword arguments, environment variables (``CALLSTREAM_*``, plus the
conventional ``KAFKA_BOOTSTRAP_SERVERS``, ``CLICKHOUSE_DSN`` and ``SCHEMA_REGISTRY_URL``), then an
optional YAML file named by ``CALLSTREAM_CONFIG``. Unset service addresses mean "use the embedded
default stack": the Tansu broker on 127.0.0.1 and chDB under ``data_dir``.
"""

from __future__ import annotations

import os
import re
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from callstream.errors import ConfigError
from callstream.mailbox import mailbox_address

CONFIG_FILE_ENV = "CALLSTREAM_CONFIG"
SECRET_REFERENCE = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+)\Z")
DSN_SCHEMES = ("chdb", "http", "https")
SmtpSecurity = Literal["starttls", "tls", "none"]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Settings(BaseSettings):
    """Process-wide configuration; immutable so no component can change it under another's feet."""

    model_config = SettingsConfigDict(env_prefix="CALLSTREAM_", frozen=True, extra="forbid")

    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("kafka_bootstrap_servers", "CALLSTREAM_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"),
        description="External Kafka cluster; unset means the embedded Tansu broker.",
    )
    clickhouse_dsn: str | None = Field(
        default=None,
        validation_alias=AliasChoices("clickhouse_dsn", "CALLSTREAM_CLICKHOUSE_DSN", "CLICKHOUSE_DSN"),
        description="chdb:///path or http(s)://user:pass@host:port/db; unset means chDB under data_dir.",
        repr=False,  # may carry a password
    )
    schema_registry_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("schema_registry_url", "CALLSTREAM_SCHEMA_REGISTRY_URL", "SCHEMA_REGISTRY_URL"),
        description="Confluent Schema Registry; unset means self-describing Avro single-object encoding.",
        repr=False,  # may carry credentials
    )
    data_dir: Path = Path("var")
    tenants_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("tenants_file", "CALLSTREAM_TENANTS_FILE", "CALLSTREAM_TENANT_DIRECTORY"),
        description="The practice (tenant) directory, YAML or JSON.",
    )
    broker_host: str = "127.0.0.1"
    broker_port: int = Field(default=19092, ge=1, le=65535)
    sandbox_port: int = Field(default=18080, ge=1, le=65535, description="`callstream sandbox` listens here on 127.0.0.1.")
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    consumer_session_timeout_ms: int = Field(default=6000, ge=1000)
    turn_hold_after_ms: int = Field(
        default=700, ge=50, description="No answer this long after a call event was produced: the caller hears PLEASE_HOLD.")
    turn_budget_ms: int = Field(
        default=4000, ge=500, description="The turn's deadline: reads are cut and the caller gets an honest answer (callstream.deadline).")
    rate_budget_reserve: float = Field(
        default=0.1, gt=0.0, lt=1.0,
        description="Share of each practice's ModMed rate budget kept for background work (the review queue); the "
                    "workers split the rest by the call-events partitions they own (connectors.ratelimit).")
    redelivery_horizon_ms: int | None = Field(
        default=None, ge=3_600_000,
        description="Call events older than this are dead-lettered, and idempotency-ledger entries unused for this "
                    "long (plus a margin) are forgotten (streams.horizon); unset: the call-events retention (7 days).",
    )
    alert_webhook_url: str | None = Field(default=None, repr=False, description="Slack-compatible; its path is a secret")
    read_api_host: str = Field(
        default="127.0.0.1", description="Where the sinks process serves the audit read API (sinks/read_api.py); "
                                         "any other address than the loopback needs read_api_token_ref.")
    read_api_port: int = Field(default=0, ge=0, le=65535, description="0: a free port; either way the address is "
                                                                       "published in data_dir/run/read-api.json")
    read_api_url: str | None = Field(default=None, description="Clients: the read API to use; unset, the one "
                                                               "data_dir/run/read-api.json names")
    read_api_token_ref: str | None = Field(default=None, description="env:VAR or file:/path holding the API's "
                                                                     "bearer token; required on a non-loopback address")
    smtp_host: str | None = Field(default=None, description="The digest's SMTP relay; unset: no scheduled digest")
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_security: SmtpSecurity = Field(default="starttls", description="starttls, tls (implicit) or none (loopback only)")
    smtp_credentials_ref: str | None = Field(
        default=None, description="env:VAR or file:/path holding JSON {username, password}; unset: no SMTP login")
    smtp_ca_file: Path | None = Field(default=None, description="PEM of the CAs to trust beyond the system's")
    smtp_timeout_s: float = Field(default=30.0, gt=0, le=300)
    digest_sender: str = Field(default="callstream@localhost", description="From: address of the daily digest")
    digest_send_at: str = Field(default="07:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
                                description="Local time (each practice's zone) the previous day's digest goes out")
    digest_call_url: str | None = Field(
        default=None, description="Link to a call in the digest, with {call_id} (e.g. the QA view's call page)")
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR; below INFO, library chatter shows too.")
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one JSON object per line, for log shippers (callstream.logs).")
    connect_timeout_s: float = Field(
        default=15.0, gt=0, description="How long a command waits for Kafka at start-up before it fails with one line.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @field_validator("clickhouse_dsn")
    @classmethod
    def _dsn_scheme(cls, dsn: str | None) -> str | None:
        if dsn is None:
            return None
        scheme = urlsplit(dsn).scheme
        if scheme not in DSN_SCHEMES:
            raise ValueError(f"must start with chdb://, http:// or https:// (got scheme {scheme or 'none'!r})")
        return dsn

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, level: str) -> str:
        name = "WARNING" if level.upper() == "WARN" else level.upper()
        if name not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)} (got {level!r})")
        return name

    @field_validator("read_api_token_ref", "smtp_credentials_ref")
    @classmethod
    def _secret_reference(cls, reference: str | None) -> str | None:
        if reference is not None and not SECRET_REFERENCE.match(reference):
            raise ValueError("must be env:VARIABLE or file:/path (the secret itself never goes in the settings)")
        return reference

    @field_validator("digest_sender")
    @classmethod
    def _sender_address(cls, address: str) -> str:
        return mailbox_address(address)

    @field_validator("digest_call_url")
    @classmethod
    def _call_url_template(cls, template: str | None) -> str | None:
        if template is not None and (template.count("{call_id}") != 1 or not template.startswith(("https://", "http://"))):
            raise ValueError("must be an http(s) URL with one {call_id} placeholder")
        return template

    @model_validator(mode="after")
    def _hold_inside_the_turn(self) -> Settings:
        if self.turn_hold_after_ms >= self.turn_budget_ms:
            raise ValueError("turn_hold_after_ms must be below turn_budget_ms")
        return self

    @property
    def uses_embedded_broker(self) -> bool:
        return self.kafka_bootstrap_servers is None

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap_servers or f"{self.broker_host}:{self.broker_port}"

    @property
    def effective_clickhouse_dsn(self) -> str:
        if self.clickhouse_dsn:
            return self.clickhouse_dsn
        return f"chdb://{(self.data_dir / 'clickhouse').resolve()}"


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning validation failures into one ConfigError line per bad field."""
    config_file = os.environ.get(CONFIG_FILE_ENV)
    if config_file and not Path(config_file).is_file():
        raise ConfigError(f"{CONFIG_FILE_ENV}={config_file}: no such file")
    try:
        return Settings(**overrides)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{CONFIG_FILE_ENV}={config_file}: not valid YAML{where}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        source = f" (from {config_file})" if config_file else ""
        raise ConfigError(f"invalid settings{source}: {problems}") from None
    except (TypeError, ValueError):  # a YAML document that is not a mapping
        raise ConfigError(f"{CONFIG_FILE_ENV}={config_file}: expected a mapping of setting names to values") from None


def redact_dsn(dsn: str) -> str:
    """The DSN without password or query (which may hold ``?password=``), safe for logs and errors."""
    parts = urlsplit(dsn)
    if not parts.netloc:  # chdb:///path
        return dsn.partition("?")[0]
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username}:***@{host}" if parts.password is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def is_loopback(host: str) -> bool:
    """Whether an address only this machine can reach (what the unauthenticated local APIs bind to)."""
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False
