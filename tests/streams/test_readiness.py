"""A worker whose practice directory names a credential it cannot resolve never reports ready (/readyz)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from callstream.settings import load_settings
from callstream.tenants import parse_tenant_directory
from streams.app import Pipeline, WorkerOptions
from callstream.metrics_server import serve_metrics

SECRET = "s3cret-of-the-practice"


def entry(practice_id: str, number: str, credentials_ref: str) -> dict[str, Any]:
    return {
        "practice_id": practice_id, "name": "Desert Spine & Pain", "called_numbers": [number],
        "base_url": "http://127.0.0.1:18080", "firm_url_prefix": practice_id.replace("-", ""),
        "auth": {"method": "password", "credentials_ref": credentials_ref},
    }


def pipeline_for(tmp_path: Path, *entries: dict[str, Any]) -> Pipeline:
    """The worker's app and tables, not started (no broker needed to ask for readiness)."""
    return Pipeline(load_settings(), parse_tenant_directory({"practices": list(entries)}, "tenants.yaml"),
                    WorkerOptions(data_dir=str(tmp_path / "var")))


def started(pipeline: Pipeline) -> Pipeline:
    """Everything else readiness waits for: resources open, partitions assigned, tables recovered."""
    pipeline.runtime.ready.set()
    pipeline._recovered.set()
    return pipeline


def test_a_worker_with_resolvable_credentials_reports_ready(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"username": "svc", "password": SECRET}))
    pipeline = pipeline_for(tmp_path, entry("desert-spine", "+16025550100", f"file:{good}"))
    assert pipeline.credential_problems == [] and not pipeline.is_ready()
    assert started(pipeline).is_ready()


def test_an_unresolvable_credential_keeps_the_worker_unready_with_one_line_per_practice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"username": "svc", "password": SECRET}))
    broken = tmp_path / "broken.json"
    broken.write_text(f'{{"username": "svc", "password": "{SECRET}"')  # cut short: not JSON
    caplog.set_level(logging.ERROR, logger="streams.app")
    pipeline = started(pipeline_for(
        tmp_path,
        entry("desert-spine", "+16025550100", f"file:{good}"),
        entry("valley-pain", "+14805550111", f"file:{broken}"),
        entry("mesa-pain", "+14805550112", "env:CALLSTREAM_TEST_NEVER_SET"),
    ))
    assert not pipeline.is_ready()
    lines = [record.getMessage() for record in caplog.records if record.name == "streams.app"]
    assert lines == [
        f"not ready: tenants.yaml: practice valley-pain: credential reference file:{broken}: not a JSON object of "
        "username/password/api_key/client_id/client_secret/private_key_pem/key_id",
        "not ready: tenants.yaml: practice mesa-pain: credential reference env:CALLSTREAM_TEST_NEVER_SET: "
        "variable is not set",
    ]
    assert SECRET not in caplog.text
    server = serve_metrics(pipeline.metrics.registry, "127.0.0.1", 0, readiness=pipeline.is_ready)
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 503
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200, "alive: other practices' calls go on"
    finally:
        server.close()
