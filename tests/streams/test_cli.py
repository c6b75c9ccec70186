"""The pipeline's command lines refuse bad input with one line (exit status 2) before starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from callstream.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = main(argv)
    return status, capsys.readouterr().err


def test_the_worker_needs_a_tenant_directory(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLSTREAM_TENANTS_FILE", raising=False)
    status, err = run(["worker"], capsys)
    assert status == 2 and "needs a tenant directory" in err


def test_the_worker_refuses_a_missing_directory_and_bad_numbers(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run(["worker", "--tenants", str(tmp_path / "absent.yaml")], capsys)
    assert status == 2 and "absent.yaml" in err
    status, err = run(["worker", "--tenants", str(tmp_path / "absent.yaml"), "--drift-window", "0"], capsys)
    assert status == 2 and "--drift-window" in err


def test_replay_refuses_an_empty_or_missing_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    status, err = run(["replay", str(empty)], capsys)
    assert status == 2 and "holds no call events" in err
    status, err = run(["replay", str(tmp_path / "gone.jsonl")], capsys)
    assert status == 2 and "cannot read the script" in err


def test_the_pipeline_benchmark_refuses_unusable_loads(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run(["bench", "pipeline", "--rate", "0"], capsys)
    assert status == 2 and "--rate" in err
