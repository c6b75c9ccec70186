"""`callstream qa serve --with-sinks` as a subprocess: the one owner of its embedded chDB runs the audit sink
and serves the pages, so a call audited on Kafka shows on the QA view while the sink runs, and `callstream
audit call` still reads it (through the read API the process serves)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from callstream.devstack import free_port
from schemas.models import AuditAction
from schemas.topics import AUDIT
from tests.fixtures.pipeline import REPO
from tests.qa.conftest import PASSWORDS, PRACTICE_A, QaWorld
from tests.qa.helpers import sign_in
from tests.sinks.audit_helpers import make_event, produce_events, wait_until

pytestmark = pytest.mark.broker


def test_qa_serve_with_sinks_shows_calls_as_the_sink_stores_them_and_audit_call_still_works(kafka_bootstrap: str, qa_world: QaWorld,
                                                                  tmp_path: Path) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items()
           if key not in ("CALLSTREAM_CONFIG", "CALLSTREAM_TENANTS_FILE", "CALLSTREAM_QA_USERS")}
    env.update(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, CLICKHOUSE_DSN=f"chdb://{tmp_path / 'clickhouse'}",
               CALLSTREAM_DATA_DIR=str(tmp_path), CALLSTREAM_QUEUE_API=f"http://127.0.0.1:{free_port()}",
               CALLSTREAM_READ_API_PORT="0")
    log = tmp_path / "qa.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "callstream.cli", "qa", "serve", "--with-sinks", "--port", str(port),
             "--tenants", str(qa_world.tenants_file), "--users", qa_world.users_ref],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def serving() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            return False

        wait_until(serving, 60, "qa serve to listen")
        call_id = f"call-qa-serve-{uuid.uuid4().hex[:8]}"
        produce_events(kafka_bootstrap, AUDIT, [make_event(
            PRACTICE_A, 0, call_id=call_id, occurred_at=datetime.now(UTC), action=AuditAction.CALL_STATE_TRANSITION,
            state_from=None, state_to="started", resource_type=None, resource_ids=[])])
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert sign_in(client, "ana", PASSWORDS["ana"]) == 303
            wait_until(lambda: client.get(f"/calls/{call_id}").status_code == 200, 30, "the call on its page")
            assert call_id in client.get("/calls").text
        audited = subprocess.run([sys.executable, "-m", "callstream.cli", "audit", "call", call_id], cwd=REPO, env=env,
                                 capture_output=True, text=True, timeout=60, check=False)
        assert audited.returncode == 0 and "-> started" in audited.stdout, audited.stderr[-2000:]
    finally:
        process.terminate()
        process.wait(30)
    assert process.returncode == 0, log.read_text()[-3000:]
    assert "+15551230000" not in log.read_text(), "no caller number in the process's log"
