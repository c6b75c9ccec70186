"""The EMA lock store: round trip, file permissions, and failing closed on damaged or planted files."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.ema.errors import EmaLockedError
from connectors.ema.locks import EmaLockStore, EmaLockStoreError, LockReason


@pytest.fixture
def store(tmp_path: Path) -> EmaLockStore:
    return EmaLockStore.under(tmp_path / "data")


def test_lock_round_trip_keeps_the_first_reason_and_time(store: EmaLockStore) -> None:
    assert store.get("pain-1001") is None
    store.raise_if_locked("pain-1001")
    lock = store.lock("pain-1001", LockReason.LOGIN_REFUSED, step="login", evidence="20261121T101010123456Z-login-0a1b2c3d")
    again = store.lock("pain-1001", LockReason.ACCOUNT_LOCKED)
    assert again == lock == store.get("pain-1001")
    assert lock.locked_at.tzinfo is not None and lock.step == "login"
    with pytest.raises(EmaLockedError, match="callstream ema unlock pain-1001") as failure:
        store.raise_if_locked("pain-1001")
    assert failure.value.reason == "LOGIN_REFUSED"
    assert [found.practice_id for found in store.all()] == ["pain-1001"]
    assert store.unlock("pain-1001") == lock
    assert store.unlock("pain-1001") is None and store.all() == []


def test_lock_files_are_private(store: EmaLockStore) -> None:
    store.lock("pain-1001", LockReason.LOGIN_REFUSED)
    assert store.directory.stat().st_mode & 0o777 == 0o700
    assert (store.directory / "pain-1001.json").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in store.directory.iterdir()] == ["pain-1001.json"]  # no temporary file left behind


@pytest.mark.parametrize("practice_id", ["../etc/passwd", "Pain-1001", "", "a", "pain 1001", "x" * 64, "pain-1001/.."])
def test_a_practice_id_that_is_not_one_never_names_a_file(store: EmaLockStore, practice_id: str) -> None:
    for action in (store.get, store.unlock, lambda pid: store.lock(pid, LockReason.LOGIN_REFUSED)):
        with pytest.raises(EmaLockStoreError, match="not a practice id"):
            action(practice_id)


def test_lock_refuses_free_text_in_step_or_evidence(store: EmaLockStore) -> None:
    with pytest.raises(EmaLockStoreError, match="step"):
        store.lock("pain-1001", LockReason.LOGIN_REFUSED, step="Login for Jane Doe")
    with pytest.raises(EmaLockStoreError, match="evidence"):
        store.lock("pain-1001", LockReason.LOGIN_REFUSED, evidence="../../secret")
    with pytest.raises(ValueError):
        store.lock("pain-1001", "PLEASE_UNLOCK")  # type: ignore[arg-type]
    assert store.get("pain-1001") is None


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b"\xff\xfe",
        b"[" * 5000,
        json.dumps({"practice_id": "pain-1001", "reason": "NOT_A_REASON", "locked_at": "2026-11-21T10:00:00+00:00",
                    "step": None, "evidence": None}).encode(),
        json.dumps({"practice_id": "pain-9999", "reason": "LOGIN_REFUSED", "locked_at": "2026-11-21T10:00:00+00:00",
                    "step": None, "evidence": None}).encode(),
        json.dumps({"practice_id": "pain-1001", "reason": "LOGIN_REFUSED", "locked_at": "2026-11-21T10:00:00",
                    "step": None, "evidence": None}).encode(),
        json.dumps({"practice_id": "pain-1001", "reason": "LOGIN_REFUSED", "locked_at": "2026-11-21T10:00:00+00:00",
                    "step": "<script>", "evidence": None, "extra": 1}).encode(),
    ],
)
def test_a_damaged_lock_file_still_locks(store: EmaLockStore, content: bytes) -> None:
    store.directory.mkdir(parents=True)
    (store.directory / "pain-1001.json").write_bytes(content)
    lock = store.get("pain-1001")
    assert lock is not None and lock.reason is LockReason.UNREADABLE_LOCK_FILE
    with pytest.raises(EmaLockedError, match="UNREADABLE_LOCK_FILE"):
        store.raise_if_locked("pain-1001")
    assert store.unlock("pain-1001") is not None and store.get("pain-1001") is None


def test_a_planted_symlink_locks_and_unlock_removes_only_the_link(store: EmaLockStore, tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    store.directory.mkdir(parents=True)
    os.symlink(target, store.directory / "pain-1001.json")
    assert store.get("pain-1001").reason is LockReason.UNREADABLE_LOCK_FILE  # type: ignore[union-attr]
    store.unlock("pain-1001")
    assert target.read_text() == "keep me" and store.get("pain-1001") is None


def test_an_oversized_lock_file_is_not_read_whole(store: EmaLockStore) -> None:
    store.directory.mkdir(parents=True)
    valid = {"practice_id": "pain-1001", "reason": "LOGIN_REFUSED", "locked_at": datetime.now(UTC).isoformat(),
             "step": None, "evidence": None}
    (store.directory / "pain-1001.json").write_text(json.dumps(valid) + " " * 10_000)
    assert store.get("pain-1001").reason is LockReason.UNREADABLE_LOCK_FILE  # type: ignore[union-attr]


def test_files_that_are_not_practice_locks_are_ignored(store: EmaLockStore) -> None:
    store.directory.mkdir(parents=True)
    (store.directory / "README.txt").write_text("operators: see callstream ema status")
    (store.directory / "Not A Practice.json").write_text("{}")
    assert store.all() == []
