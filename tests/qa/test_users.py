"""The users file, password hashes and the login throttle, without a server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from callstream.errors import ConfigError
from qa.cli import main as qa_main
from qa.users import LoginThrottle, UserDirectory, add_user, hash_password, parse_users, verify_password


def test_passwords_are_scrypt_hashed_salted_and_checked_in_constant_time() -> None:
    stored = hash_password("a long enough password")
    assert stored.startswith("scrypt$16384$8$1$") and "a long enough password" not in stored
    assert stored != hash_password("a long enough password"), "a fresh salt each time"
    assert verify_password("a long enough password", stored)
    assert not verify_password("a long enough passwore", stored)
    assert not verify_password("anything", "scrypt$3$8$1$AAAA$BBBB"), "a malformed hash never matches"


def test_qa_adduser_writes_an_owner_only_users_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    users = tmp_path / "users.json"
    monkeypatch.setattr("sys.stdin", io.StringIO("a-password-for-dora\n"))
    assert qa_main(["adduser", "dora", "--practice", "pain-1002", "--users", f"file:{users}", "--password-stdin"]) == 0
    assert "added dora (practice pain-1002)" in capsys.readouterr().out
    assert users.stat().st_mode & 0o777 == 0o600
    directory = UserDirectory(f"file:{users}")
    assert directory.authenticate("dora", "a-password-for-dora").practice_id == "pain-1002"  # type: ignore[union-attr]
    assert directory.authenticate("dora", "wrong") is None and directory.authenticate("eve", "x") is None
    with pytest.raises(ConfigError, match="12-1024 characters"):
        add_user(f"file:{users}", "dora", "pain-1002", "short")
    with pytest.raises(ConfigError, match="writes a file: reference"):
        add_user("env:QA_USERS", "dora", "pain-1002", "a-password-for-dora")


@pytest.mark.parametrize(("document", "message"), [
    ("not json", "not JSON"),
    ('{"people": []}', 'expected {"users"'),
    ('{"users": [{"username": "a b", "practice_id": "p", "password_hash": "x"}]}', "no valid username"),
    ('{"users": [{"username": "ab", "practice_id": "p", "password_hash": "plaintext"}]}', "no scrypt password_hash"),
])
def test_a_malformed_users_file_is_refused_naming_the_entry_not_the_hash(document: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_users(document, "file:/etc/qa.json")
    assert "plaintext" not in str(caught.value)


def test_users_come_from_an_env_reference_too(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = {"username": "fay", "practice_id": "pain-1001", "password_hash": hash_password("fay-password-123")}
    monkeypatch.setenv("QA_USERS_JSON", json.dumps({"users": [entry]}))
    assert UserDirectory("env:QA_USERS_JSON").get("fay") is not None
    with pytest.raises(ConfigError, match="must be file:/path or env:VARIABLE"):
        UserDirectory("/etc/qa.json")


def test_the_throttle_counts_failures_in_a_sliding_window() -> None:
    now = [0.0]
    throttle = LoginThrottle(per_user=2, per_address=3, window_s=60, clock=lambda: now[0])
    throttle.failed("Ana", "10.0.0.1")
    assert throttle.retry_after("ana", "10.0.0.1") == 0
    now[0] = 10.0
    throttle.failed("ana", "10.0.0.2")
    assert throttle.retry_after("ana", "10.0.0.9") == pytest.approx(50.0), "names are case-insensitive"
    now[0] = 61.0
    assert throttle.retry_after("ana", "10.0.0.9") == 0, "the oldest failure left the window"
    for name in ("x", "y", "z"):
        throttle.failed(name, "10.0.0.3")
    assert throttle.retry_after("new", "10.0.0.3") > 0 and throttle.retry_after("new", "10.0.0.4") == 0
    throttle.failed("bo", "10.0.0.5")
    throttle.succeeded("bo")
    throttle.failed("bo", "10.0.0.5")
    assert throttle.retry_after("bo", "10.0.0.6") == 0, "a success clears the name's failures"
