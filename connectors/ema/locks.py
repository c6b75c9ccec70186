"""Per-practice EMA lock: after one failed login the practice's EMA path stays shut until an operator opens it.

EMA locks an account after a few failed logins, and a locked account stops the practice's staff too,
so callstream never retries a login: the failure is written here, every command checks this store
first and fails fast, and only `callstream ema unlock PRACTICE` removes the lock. The store is a
directory of small JSON files (one per practice, 0600 in a 0700 directory) so the CLI and every worker
process on the host see the same state. A lock file that cannot be read counts as locked: a damaged or
planted file must never reopen a path an operator has not reopened.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from callstream.errors import CallstreamError
from connectors.ema.errors import EmaLockedError

PRACTICE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}\Z")
"""Same pattern as callstream.tenants.Practice.practice_id; it is also the lock file's name."""
STEP_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}\Z")
EVIDENCE_NAME = re.compile(r"^[0-9]{8}T[0-9]{12}Z-[a-z][a-z0-9_]{0,39}-[0-9a-f]{8}\Z")
"""Same form as connectors.ema.evidence names: a time, a step and a random tag; never screen content."""
MAX_LOCK_FILE_BYTES = 4096
LOCK_DIR_NAME = "ema-locks"


class LockReason(StrEnum):
    """Why the path was locked; a closed set so no screen text can reach the file or the CLI output."""

    LOGIN_REFUSED = "LOGIN_REFUSED"
    """EMA rejected the username/password (or the account is being refused right now)."""
    ACCOUNT_LOCKED = "ACCOUNT_LOCKED"
    """EMA reports the account itself locked: it must also be unlocked in EMA."""
    LOGIN_UNCONFIRMED = "LOGIN_UNCONFIRMED"
    """The login was submitted but EMA showed neither success nor an error (timeout, unexpected screen)."""
    UNREADABLE_LOCK_FILE = "UNREADABLE_LOCK_FILE"
    """The lock file exists but is damaged; treated as locked until an operator clears it."""


class EmaLockStoreError(CallstreamError):
    """A practice id that is not one (it would name a file outside the store), or an unusable store directory."""


@dataclass(frozen=True, slots=True)
class EmaLock:
    """One practice's lock: what the operator sees in `callstream ema status`."""

    practice_id: str
    reason: LockReason
    locked_at: datetime
    step: str | None = None
    evidence: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {
            "practice_id": self.practice_id,
            "reason": self.reason.value,
            "locked_at": self.locked_at.isoformat(),
            "step": self.step,
            "evidence": self.evidence,
        }

    def error(self) -> EmaLockedError:
        return EmaLockedError(practice_id=self.practice_id, locked_at=self.locked_at, reason=self.reason.value)


class EmaLockStore:
    """File-backed lock state, shared by every process that uses the same data directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def under(cls, data_dir: Path) -> EmaLockStore:
        """The default location: ``{data_dir}/ema-locks``."""
        return cls(data_dir / LOCK_DIR_NAME)

    def get(self, practice_id: str) -> EmaLock | None:
        """The practice's lock, or None when its EMA path is open."""
        path = self._path(practice_id)
        if not os.path.lexists(path):
            return None
        return self._read(practice_id, path)

    def raise_if_locked(self, practice_id: str) -> None:
        """The check every EMA command makes before touching a browser."""
        lock = self.get(practice_id)
        if lock is not None:
            raise lock.error()

    def lock(
        self, practice_id: str, reason: LockReason, *, step: str | None = None, evidence: str | None = None
    ) -> EmaLock:
        """Lock the practice's EMA path (atomically; an existing lock keeps its original time and reason)."""
        if step is not None and not STEP_NAME.match(step):
            raise EmaLockStoreError("lock step must be a short snake_case step name")
        if evidence is not None and not EVIDENCE_NAME.match(evidence):
            raise EmaLockStoreError("lock evidence must be an evidence file name")
        existing = self.get(practice_id)
        if existing is not None:
            return existing
        lock = EmaLock(practice_id, LockReason(reason), datetime.now(UTC), step, evidence)
        self._ensure_directory()
        handle, temporary = tempfile.mkstemp(prefix=f".{practice_id}-", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as sink:
                json.dump(lock.to_json(), sink)
            os.chmod(temporary, 0o600)
            os.replace(temporary, self._path(practice_id))
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return lock

    def unlock(self, practice_id: str) -> EmaLock | None:
        """Remove the practice's lock; returns what was cleared (None when it was not locked)."""
        path = self._path(practice_id)
        if not os.path.lexists(path):
            return None
        cleared = self._read(practice_id, path)
        path.unlink(missing_ok=True)
        return cleared

    def all(self) -> list[EmaLock]:
        """Every current lock, by practice id; files whose names are not practice ids are ignored."""
        if not self.directory.is_dir():
            return []
        locks = []
        for path in sorted(self.directory.glob("*.json")):
            if PRACTICE_ID.match(path.stem):
                locks.append(self._read(path.stem, path))
        return locks

    def _path(self, practice_id: str) -> Path:
        if not isinstance(practice_id, str) or not PRACTICE_ID.match(practice_id):
            raise EmaLockStoreError(
                "not a practice id (lowercase letters, digits and '-', 2-63 characters)"
            )
        return self.directory / f"{practice_id}.json"

    def _ensure_directory(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise EmaLockStoreError(f"cannot create the EMA lock directory {self.directory}: {exc.strerror}") from None
        if self.directory.is_symlink() or not self.directory.is_dir():
            raise EmaLockStoreError(f"EMA lock directory {self.directory} is not a plain directory")

    def _read(self, practice_id: str, path: Path) -> EmaLock:
        """Parse a lock file; anything unexpected is still a lock (fail closed), dated by the file itself."""
        try:
            if path.is_symlink():
                raise ValueError("lock file is a symbolic link")
            raw = path.read_bytes()[: MAX_LOCK_FILE_BYTES + 1]
            if len(raw) > MAX_LOCK_FILE_BYTES:
                raise ValueError("lock file too large")
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict) or set(data) != {"practice_id", "reason", "locked_at", "step", "evidence"}:
                raise ValueError("lock file has unexpected fields")
            if data["practice_id"] != practice_id:
                raise ValueError("lock file names another practice")
            locked_at = datetime.fromisoformat(data["locked_at"])
            if locked_at.utcoffset() is None:
                raise ValueError("lock time has no zone")
            step = data["step"]
            if step is not None and (not isinstance(step, str) or not STEP_NAME.match(step)):
                raise ValueError("lock step is malformed")
            evidence = data["evidence"]
            if evidence is not None and (not isinstance(evidence, str) or not EVIDENCE_NAME.match(evidence)):
                raise ValueError("lock evidence is malformed")
            return EmaLock(practice_id, LockReason(data["reason"]), locked_at, step, evidence)
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, RecursionError):
            return EmaLock(practice_id, LockReason.UNREADABLE_LOCK_FILE, _file_time(path))


def _file_time(path: Path) -> datetime:
    try:
        return datetime.fromtimestamp(path.lstat().st_mtime, UTC)
    except OSError:
        return datetime.now(UTC)
