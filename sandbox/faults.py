"""Fault injection per practice: latency, 5xx, 429 bursts, token revocation, screen-login failure.

Faults let the regression scenarios and the connector's retry logic meet the failures a
real tenant produces, on demand. They are set at start (`--fault`, `--faults FILE`) or at
runtime through `PUT /_admin/practices/{practice_id}/faults`.
"""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class FaultError(ValueError):
    """A fault specification that cannot be applied (unknown key, bad value, unknown practice)."""


class PracticeFaults(BaseModel):
    """The faults active for one practice. All default to 'no fault'."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: int = Field(default=0, ge=0, le=60_000, description="added to every API and screen response")
    error_5xx_ratio: float = Field(default=0.0, ge=0.0, le=1.0, description="API calls answered 500 before any work")
    error_5xx_after_write_ratio: float = Field(
        default=0.0, ge=0.0, le=1.0, description="successful writes whose response is replaced by 500 (write kept)"
    )
    burst_429: int = Field(default=0, ge=0, le=1_000_000, description="the next N API calls get 429")
    burst_retry_after_s: int = Field(default=1, ge=0, le=86_400, description="Retry-After of the injected 429s")
    revoke_tokens: bool = Field(default=False, description="on apply: every issued token of the practice stops working")
    screen_login_failure: bool = Field(default=False, description="EMA login refuses every attempt (counts toward lockout)")


class FaultBoard:
    """Current faults per practice, with the counters and random stream they consume."""

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str, PracticeFaults] = {}
        self._bursts_left: dict[str, int] = {}
        self._rng = random.Random(seed)

    def set(self, practice_id: str, faults: PracticeFaults) -> None:
        with self._lock:
            self._faults[practice_id] = faults
            self._bursts_left[practice_id] = faults.burst_429

    def clear(self, practice_id: str) -> None:
        with self._lock:
            self._faults.pop(practice_id, None)
            self._bursts_left.pop(practice_id, None)

    def get(self, practice_id: str) -> PracticeFaults:
        with self._lock:
            return self._faults.get(practice_id, PracticeFaults())

    def status(self, practice_id: str) -> dict:
        with self._lock:
            current = self._faults.get(practice_id, PracticeFaults())
            return {**current.model_dump(), "burst_429_remaining": self._bursts_left.get(practice_id, 0)}

    def take_burst(self, practice_id: str) -> bool:
        """Consume one call of a 429 burst; True when this call must be refused."""
        with self._lock:
            left = self._bursts_left.get(practice_id, 0)
            if left <= 0:
                return False
            self._bursts_left[practice_id] = left - 1
            return True

    def roll(self, ratio: float) -> bool:
        if ratio <= 0:
            return False
        with self._lock:
            return self._rng.random() < ratio


def parse_fault_assignment(text: str) -> tuple[str, str, str]:
    """'pain-1001:latency_ms=250' → ('pain-1001', 'latency_ms', '250')."""
    practice, sep, assignment = text.partition(":")
    key, eq, value = assignment.partition("=")
    if not sep or not eq or not practice or not key:
        raise FaultError(f"fault {text!r} must look like PRACTICE_ID:key=value")
    return practice.strip(), key.strip(), value.strip()


def build_faults(spec: dict[str, dict[str, object]]) -> dict[str, PracticeFaults]:
    """Validate {practice_id: {key: value}} into PracticeFaults, with readable errors."""
    if not isinstance(spec, dict):
        raise FaultError("faults must be a mapping of practice id to fault settings")
    built = {}
    for practice_id, settings in spec.items():
        if not isinstance(settings, dict):
            raise FaultError(f"faults for {practice_id!r} must be a mapping")
        try:
            built[str(practice_id)] = PracticeFaults.model_validate(settings)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise FaultError(f"faults for {practice_id!r}: {problems}") from error
    return built


def load_fault_file(path: Path) -> dict[str, PracticeFaults]:
    """A YAML or JSON file mapping practice ids to fault settings."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise FaultError(f"cannot read fault file {path}: {error.strerror}") from error
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise FaultError(f"fault file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}") from error
    return build_faults(data or {})


def merge_assignments(base: dict[str, PracticeFaults], assignments: list[str]) -> dict[str, PracticeFaults]:
    """Apply `--fault PRACTICE:key=value` flags on top of a fault file."""
    raw: dict[str, dict[str, object]] = {pid: faults.model_dump(exclude_defaults=True) for pid, faults in base.items()}
    for text in assignments:
        practice, key, value = parse_fault_assignment(text)
        try:
            parsed: object = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        raw.setdefault(practice, {})[key] = parsed
    return build_faults(raw)
