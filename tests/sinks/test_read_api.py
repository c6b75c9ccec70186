"""The audit read API (sinks/read_api.py) and `callstream audit call|calls` through it, in-process on the
session's engine, and as real processes: `audit` keeps working while `callstream sinks run` holds the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from callstream.backends import free_port
from callstream.errors import ConfigError
from callstream.settings import redact_dsn
from devkit.broker import TansuBroker
from digest.local import LocalSmtpReceiver
from digest.message import DIGEST_HEADER
from processes.audit import main as audit_main
from review.reader import StoreReader
from review.store import ReviewStore
from schemas.topics import AUDIT
from sinks.clickhouse_store import AuditStore
from sinks.read_api import CallReads, ReadApiServer, serve_read_api
from tests.digest.seed import PRACTICE, day_events, directory, seed_audit, seed_review
from tests.fixtures.pipeline import REPO
from tests.sinks.audit_helpers import discard_broker, produce_events, wait_until

TOKEN = "read-api-token-for-tests-0123456789"
OFFER_TEXT = "I found these openings for your epidural steroid injection: [the offered times]. Which one works best for you?"


@pytest.fixture
def api(clickhouse_client, clickhouse_database: str, clickhouse_dsn: str,  # type: ignore[no-untyped-def]
        tmp_path: Path) -> Iterator[ReadApiServer]:
    store = AuditStore(clickhouse_client, clickhouse_database)
    seed_audit(store)
    review = ReviewStore(clickhouse_client, clickhouse_database)
    seed_review(review)
    reads = CallReads(store, directory({}), StoreReader(review))
    server = serve_read_api(reads, "127.0.0.1", 0, token=TOKEN,
                            publish=(tmp_path, redact_dsn(clickhouse_dsn), clickhouse_database))
    try:
        yield server
    finally:
        server.close()


def test_the_api_serves_calls_with_what_the_caller_heard_and_their_review_items(api: ReadApiServer) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"{api.url}/v1/calls/call-cs-1").status_code == 401
    assert httpx.get(f"{api.url}/v1/calls/call-cs-1", headers={"Authorization": "Bearer wrong"}).status_code == 401
    record = httpx.get(f"{api.url}/v1/calls/call-cs-1", headers=auth).json()
    assert [(r["template"], r["text"], r["interim"], r["unknown_values"]) for r in record["replies"]] == [
        ("PLEASE_HOLD", "Thank you. One moment while I pull up your information.", True, []),
        ("OFFER_SLOTS", OFFER_TEXT, False, ["slot_list"])]
    assert [(item["item_id"], item["state"]) for item in record["review_items"]] == [("item-3", "resolved")]
    assert record["tasks"][0]["task_ref"] == "Task/task-1" and record["review_error"] is None
    listing = httpx.get(f"{api.url}/v1/calls", params={"practice": PRACTICE, "date": "2026-03-14"}, headers=auth).json()
    assert (listing["total"], listing["time_zone"]) == (5, "America/New_York")
    assert [call["call_id"] for call in listing["calls"]] == ["call-cs-1", "call-cs-2", "call-cs-3", "call-blocked",
                                                              "call-bypass"]
    first = listing["calls"][0]
    assert (first["controlled_substance_requests"], first["escalations_with_task"], first["last_state"]) == (1, 1, "identified")
    page = httpx.get(f"{api.url}/v1/calls", params={"practice": PRACTICE, "date": "2026-03-14", "limit": "2",
                                                     "offset": "3"}, headers=auth).json()
    assert [call["call_id"] for call in page["calls"]] == ["call-blocked", "call-bypass"] and page["total"] == 5
    for path, params, status in (("/v1/calls/nobody", {}, 404), ("/v1/calls/bad%20id", {}, 400),
                                 ("/v1/calls", {"practice": "north side"}, 400),
                                 ("/v1/calls", {"practice": PRACTICE, "date": "14/03/2026"}, 400),
                                 ("/v1/calls", {"practice": PRACTICE, "limit": "0"}, 400),
                                 ("/v1/calls", {"practice": PRACTICE, "limit": "ten"}, 400),
                                 ("/v1/digests/figures", {"practice": PRACTICE}, 404), ("/v2/anything", {}, 404)):
        response = httpx.get(f"{api.url}{path}", params=params, headers=auth)
        assert response.status_code == status and "error" in response.json(), (path, params)
    response = httpx.post(f"{api.url}/v1/digests", content=b"not json", headers=auth)
    assert response.status_code == 404 and "sends no digests" in response.json()["error"]


def test_audit_commands_go_through_a_running_api(api: ReadApiServer, clickhouse_client, clickhouse_dsn: str,  # type: ignore[no-untyped-def]
                                                 clickhouse_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CALLSTREAM_CONFIG", raising=False)
    monkeypatch.setenv("CLICKHOUSE_DSN", clickhouse_dsn)
    monkeypatch.setenv("CALLSTREAM_DATA_DIR", str(tmp_path))  # where the API published its address
    monkeypatch.setenv("READ_TOKEN", TOKEN)
    monkeypatch.setenv("CALLSTREAM_READ_API_TOKEN_REF", "env:READ_TOKEN")
    assert audit_main(["call", "call-cs-1", "--database", clickhouse_database]) == 0
    text = capsys.readouterr().out
    assert "what the caller heard:" in text and f'"{OFFER_TEXT}"' in text and "PLEASE_HOLD  (interim)" in text
    assert "item-3  provider_task  ehr_unavailable  resolved  controlled substance" in text, "review items: only the API has them"
    assert audit_main(["calls", "--practice", PRACTICE, "--date", "2026-03-14", "--json",
                       "--database", clickhouse_database]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 5
    monkeypatch.setenv("READ_TOKEN", "not-the-token")
    with pytest.raises(ConfigError, match="bearer token"):
        audit_main(["call", "call-cs-1", "--database", clickhouse_database])
    with pytest.raises(ConfigError, match="needs read_api_token_ref"):
        serve_read_api(CallReads(AuditStore(clickhouse_client, clickhouse_database)), "0.0.0.0", 0)


# ------------------------------------------------------------------------------- as real processes


def _cli(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "callstream.cli", *arguments], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=60, check=False)


def _concurrently(*commands: tuple[list[str], dict[str, str]]) -> list[subprocess.CompletedProcess[str]]:
    started = [(arguments, subprocess.Popen([sys.executable, "-m", "callstream.cli", *arguments], cwd=REPO, env=env,
                                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
               for arguments, env in commands]
    done = []
    for arguments, process in started:
        out, err = process.communicate(timeout=90)
        done.append(subprocess.CompletedProcess(arguments, process.returncode, out, err))
    return done


@pytest.mark.broker
def test_audit_and_digests_work_while_the_sinks_process_holds_the_embedded_store(tmp_path: Path) -> None:
    broker = TansuBroker(port=free_port())  # private: the sink's consumer group name is fixed
    broker.start()
    tenants = tmp_path / "tenants.json"
    tenants.write_text(json.dumps({"practices": [practice.model_dump(mode="json") for practice in
                                                 directory({PRACTICE: ["qa@northside.example"]}).values()]}))
    receiver = LocalSmtpReceiver().__enter__()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CALLSTREAM_", "CLICKHOUSE_"))}
    env.update(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, CALLSTREAM_DATA_DIR=str(tmp_path),
               CALLSTREAM_READ_API_PORT="0", CALLSTREAM_METRICS_PORT="0", CALLSTREAM_LOG_LEVEL="INFO",
               CALLSTREAM_QUEUE_API=f"http://127.0.0.1:{free_port()}",  # no review queue runs
               CALLSTREAM_TENANTS_FILE=str(tenants), CALLSTREAM_SMTP_HOST="127.0.0.1",
               CALLSTREAM_SMTP_PORT=str(receiver.port), CALLSTREAM_SMTP_SECURITY="none",
               CALLSTREAM_DIGEST_SEND_AT="00:00")  # the schedule's digest of yesterday is due at once
    log = (tmp_path / "sinks.log").open("wb")
    sinks = subprocess.Popen([sys.executable, "-m", "callstream.cli", "sinks", "run", "--only", "clickhouse"],
                             cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        run_file = tmp_path / "run" / "read-api.json"
        wait_until(lambda: run_file.exists() or sinks.poll() is not None, 60, "the read API to be published")
        assert sinks.poll() is None, (tmp_path / "sinks.log").read_text()[-3000:]
        produce_events(broker.bootstrap, AUDIT, day_events())
        url = json.loads(run_file.read_text())["url"]
        wait_until(lambda: httpx.get(f"{url}/v1/calls/call-cs-1").status_code == 200
                   and httpx.get(f"{url}/v1/calls/call-cs-1").json()["event_count"] == 6, 60, "the call in the store")
        # three independent commands at once: through the API, the one-line failure, a digest through the process
        shown, stray, sent = _concurrently(
            (["audit", "call", "call-cs-1"], env),
            (["audit", "call", "call-cs-1"], {**env, "CALLSTREAM_READ_API_URL": f"http://127.0.0.1:{free_port()}"}),
            (["digest", "send", "--date", "2026-03-14"], env))
        assert shown.returncode == 0, shown.stderr
        assert f'"{OFFER_TEXT}"' in shown.stdout and "Task/task-1" in shown.stdout
        assert "no review queue answers at" in shown.stdout, "the review queue is not running: said so"
        assert stray.returncode == 2 and len(stray.stderr.strip().splitlines()) == 1, stray.stderr
        assert stray.stderr.startswith("callstream: error: no audit read API answers at http://127.0.0.1:")
        assert "the audit store cannot be opened here (the embedded store admits one process at a time): " \
               "ClickHouse at chdb://" in stray.stderr
        assert sent.returncode == 0 and sent.stdout == f"{PRACTICE} 2026-03-14: sent to 1 recipient(s)\n", sent.stderr
        listed = httpx.get(f"{url}/v1/calls", params={"practice": PRACTICE, "date": "2026-03-14"}).json()
        assert (listed["time_zone"], listed["total"]) == ("America/New_York", 5), "the practice's day"
        figures = httpx.get(f"{url}/v1/digests/figures", params={"practice": PRACTICE, "date": "2026-03-14"}).json()
        assert (figures["cs_requests"], figures["cs_not_escalated"], figures["write_success_rate"]) == (3, 1, 0.75)
        wait_until(lambda: len(receiver.messages) == 2, 30, "the scheduled digest of yesterday too")
        days = sorted(received.message[DIGEST_HEADER] for received in receiver.messages)
        yesterday = (datetime.now(ZoneInfo("America/New_York")).date() - timedelta(days=1)).isoformat()
        assert days == sorted([f"{PRACTICE}/2026-03-14", f"{PRACTICE}/{yesterday}"])
        sinks.send_signal(signal.SIGTERM)
        sinks.wait(30)
        assert not run_file.exists(), "the address is withdrawn when the process stops"
        direct = _cli("audit", "call", "call-cs-1", "--json", env=env)
        assert direct.returncode == 0 and json.loads(direct.stdout)["replies"][1]["text"] == OFFER_TEXT
    finally:
        if sinks.poll() is None:
            sinks.kill()
            sinks.wait(10)
        log.close()
        receiver.__exit__(None, None, None)
        discard_broker(broker)
