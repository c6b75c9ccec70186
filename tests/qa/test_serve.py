"""`callstream qa serve --with-sinks` as a subprocess: the one owner of its embedded chDB runs the audit sink
and serves the pages, so a call audited on Kafka shows on the QA view while the sink runs, and `callstream
audit call` and `audit pdf` still read it (through the read API the process serves)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pypdf
import pytest

from callstream.backends import free_port
from schemas.models import AuditAction
from schemas.topics import AUDIT
from tests.fixtures.pipeline import REPO
from tests.qa.conftest import PASSWORDS, PRACTICE_A, QaWorld
from tests.qa.helpers import sign_in
from tests.sinks.audit_helpers import make_event, produce_events, wait_until

pytestmark = pytest.mark.broker


def test_qa_serve_with_sinks_shows_calls_as_the_sink_stores_them_and_audit_call_and_pdf_still_work(kafka_bootstrap: str, qa_world: QaWorld,
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
        commands = {"-> started": ["call", call_id],
                    "record SHA-256": ["pdf", call_id, "--out", str(tmp_path / "call.pdf"), "--tenants",
                                       str(qa_world.tenants_file)]}
        running = {expected: subprocess.Popen([sys.executable, "-m", "callstream.cli", "audit", *command], cwd=REPO,
                                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for expected, command in commands.items()}  # side by side: each start-up takes seconds
        for expected, audit in running.items():
            out, err = audit.communicate(timeout=60)
            assert audit.returncode == 0 and expected in out, err[-2000:]
        text = pypdf.PdfReader(tmp_path / "call.pdf").pages[0].extract_text()
        assert f"Call record {call_id}" in text and "-> started" in text
    finally:
        process.terminate()
        process.wait(30)
    assert process.returncode == 0, log.read_text()[-3000:]
    assert "+15551230000" not in log.read_text(), "no caller number in the process's log"
