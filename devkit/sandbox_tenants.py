"""A tenant directory for the practices of a running sandbox (demo, benchmark, end-to-end tests).

The sandbox lists its practices with their credentials (`GET /_admin/practices`); this writes the
credentials to 0600 files next to the directory (the directory itself holds only ``file:`` references,
as in production) and returns the YAML directory's path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from callstream.errors import ServiceUnavailableError
from callstream.tenants import TenantDirectory, load_tenant_directory


def sandbox_listing(base_url: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The practices a sandbox serves, as `callstream sandbox --list-practices --json` prints them."""
    try:
        response = httpx.get(f"{base_url}/_admin/practices", timeout=timeout_s, trust_env=False)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise ServiceUnavailableError(f"sandbox at {base_url} did not list its practices ({type(exc).__name__})") from None
    listing = response.json()
    if not isinstance(listing, list):
        raise ServiceUnavailableError(f"sandbox at {base_url} answered an unexpected practice listing")
    return listing


def practice_entry(listing: Mapping[str, Any], secrets_dir: Path, *, phase: str = "sandbox",
                   rate_limit_per_min: int | None = None) -> dict[str, Any]:
    """One directory entry; the credentials go to ``secrets_dir/<practice>.json`` (mode 0600)."""
    practice_id = listing["practice_id"]
    if listing["track"] == "certified":
        certified = listing["certified"]
        credentials = {key: certified[key] for key in ("client_id", "private_key_pem", "key_id")}
        credentials.update(username=listing["username"], password=listing["password"])
        location: dict[str, Any] = {"track": "certified", "fhir_base_url": certified["fhir_base"]}
        method = "private_key_jwt"
    else:
        credentials = {key: listing[key] for key in ("username", "password", "api_key", "client_id", "client_secret")}
        location = {"track": "proprietary", "firm_url_prefix": listing["firm_url_prefix"]}
        method = "password"
    secret_file = secrets_dir / f"{practice_id}.json"
    descriptor = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump({key: value for key, value in credentials.items() if value is not None}, handle)
    base_url = str(listing["fhir_base"]).split("/firm/")[0].split("/certified/")[0]
    return {
        "practice_id": practice_id,
        "name": listing["name"],
        "called_numbers": list(listing["called_numbers"]),
        "timezone": listing["timezone"],
        "base_url": base_url,
        **location,
        "auth": {"method": method, "credentials_ref": f"file:{secret_file}"},
        "rate_limit_per_min": rate_limit_per_min or listing["rate_limit_per_minute"],
        "capabilities": {
            **{key: value for key, value in listing["capabilities"].items() if key != "track"},
            "ema_url": listing["ema_base_url"],
        },
        "phase": phase,
    }


def write_sandbox_directory(base_url: str, directory: Path, *, phases: Mapping[str, str] | None = None,
                            rate_limit_per_min: int | None = None, timeout_s: float = 10.0,
                            extra: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Write ``directory/tenants.yaml`` (+ secrets) for every sandbox practice; returns the file's path.
    ``extra``: further directory fields per practice id (``intake``, ``office_hours``, ...)."""
    secrets = directory / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    os.chmod(secrets, 0o700)
    entries = [
        {**practice_entry(listing, secrets, phase=(phases or {}).get(listing["practice_id"], "sandbox"),
                          rate_limit_per_min=rate_limit_per_min), **(extra or {}).get(listing["practice_id"], {})}
        for listing in sandbox_listing(base_url, timeout_s)
    ]
    path = directory / "tenants.yaml"
    path.write_text(yaml.safe_dump({"practices": entries}, sort_keys=False), encoding="utf-8")
    return path


def load_sandbox_directory(base_url: str, directory: Path, **options: Any) -> tuple[Path, TenantDirectory]:
    path = write_sandbox_directory(base_url, directory, **options)
    return path, load_tenant_directory(path)
