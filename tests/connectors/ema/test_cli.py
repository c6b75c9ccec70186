"""`callstream ema unlock PRACTICE` and `callstream ema status` against a real lock directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors.ema.cli import main
from connectors.ema.locks import EmaLockStore, LockReason


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"


def test_status_without_locks(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data-dir", str(data_dir), "status"]) == 0
    assert capsys.readouterr().out == "no EMA locks\n"
    assert main(["--data-dir", str(data_dir), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_status_lists_locks_and_unlock_clears_exactly_one(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = EmaLockStore.under(data_dir)
    first = store.lock("pain-1001", LockReason.LOGIN_REFUSED, step="login", evidence="20261121T101010123456Z-login-0a1b2c3d")
    store.lock("pain-1003", LockReason.ACCOUNT_LOCKED, step="login")

    assert main(["--data-dir", str(data_dir), "status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"pain-1001: LOCKED (reason LOGIN_REFUSED, since {first.locked_at.isoformat()}, step login, "
        "evidence 20261121T101010123456Z-login-0a1b2c3d)",
        lines[1],
    ]
    assert lines[1].startswith("pain-1003: LOCKED (reason ACCOUNT_LOCKED")
    assert main(["--data-dir", str(data_dir), "status", "--json"]) == 0
    assert [entry["practice_id"] for entry in json.loads(capsys.readouterr().out)] == ["pain-1001", "pain-1003"]

    assert main(["--data-dir", str(data_dir), "unlock", "pain-1001"]) == 0
    assert capsys.readouterr().out.startswith("pain-1001: cleared EMA lock (reason LOGIN_REFUSED")
    assert [lock.practice_id for lock in store.all()] == ["pain-1003"]
    assert main(["--data-dir", str(data_dir), "unlock", "pain-1001"]) == 1
    assert "was not locked" in capsys.readouterr().out

    assert main(["--data-dir", str(data_dir), "unlock", "pain-1003"]) == 0
    assert "unlock it in EMA too" in capsys.readouterr().out


def test_data_dir_comes_from_settings(data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CALLSTREAM_DATA_DIR", str(data_dir))
    monkeypatch.delenv("CALLSTREAM_CONFIG", raising=False)
    EmaLockStore.under(data_dir).lock("pain-1002", LockReason.LOGIN_UNCONFIRMED)
    assert main(["status"]) == 0
    assert capsys.readouterr().out.startswith("pain-1002: LOCKED (reason LOGIN_UNCONFIRMED")


@pytest.mark.parametrize("practice", ["../../etc", "PAIN-1001", "pain 1001"])
def test_unlock_refuses_what_is_not_a_practice_id(data_dir: Path, practice: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data-dir", str(data_dir), "unlock", practice]) == 2
    assert "not a practice id" in capsys.readouterr().err


def test_bad_arguments_exit_2(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["lock", "pain-1001"], ["unlock"]):
        with pytest.raises(SystemExit) as exit_:
            main(["--data-dir", str(data_dir), *argv])
        assert exit_.value.code == 2
    capsys.readouterr()


def test_an_unusable_settings_file_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CALLSTREAM_CONFIG", str(tmp_path / "missing.yaml"))
    assert main(["status"]) == 2
    assert "CALLSTREAM_CONFIG" in capsys.readouterr().err
