"""`callstream dev up|down` (devkit.broker): the detached embedded broker under a data directory, as README
users start it, reused when it runs and stopped by pid."""

from __future__ import annotations

from pathlib import Path

import pytest

from callstream.backends import free_port, wait_for_broker
from callstream.errors import ServiceUnavailableError
from tests.fixtures.cli import run_cli


def test_cli_dev_up_and_down(tmp_path: Path) -> None:
    port = str(free_port())
    env = {"CALLSTREAM_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'ch'}"}
    up = run_cli("dev", "up", "--data-dir", str(tmp_path), "--broker-port", port, env=env)
    try:
        assert up.returncode == 0, up.stderr
        assert f"started Tansu" in up.stdout and "topics ready" in up.stdout and "healthy" in up.stdout
        wait_for_broker(f"127.0.0.1:{port}", timeout_s=5)
        again = run_cli("dev", "up", "--data-dir", str(tmp_path), "--broker-port", port, env=env)
        assert "already running" in again.stdout, again.stderr
    finally:
        down = run_cli("dev", "down", "--data-dir", str(tmp_path), "--broker-port", port)
    assert down.returncode == 0 and "stopped Tansu" in down.stdout
    with pytest.raises(ServiceUnavailableError):
        wait_for_broker(f"127.0.0.1:{port}", timeout_s=1)
