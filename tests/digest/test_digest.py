"""The daily digest against a real SMTP server (aiosmtpd on 127.0.0.1): the message as received and parsed,
STARTTLS and implicit TLS with a login, at most one digest per practice and day across restarts."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from digest.cli import main as digest_main
from digest.figures import day_figures
from digest.local import LocalSmtpReceiver
from digest.log import DayStatus, DigestLog
from digest.message import DIGEST_HEADER
from digest.service import DigestService
from digest.smtp import SmtpRelay
from review.reader import StoreReader
from review.store import ReviewStore
from sinks.clickhouse_store import AuditStore
from tests.digest.seed import CALLER, DAY, OTHER, PRACTICE, directory, seed_audit, seed_review

RECIPIENTS = ["qa-lead@northside.example", "medical.director@northside.example"]
CALL_URL = "https://qa.northside.example/calls/{call_id}"


@pytest.fixture
def stores(clickhouse_client, clickhouse_database: str) -> tuple[AuditStore, DigestLog, ReviewStore]:  # type: ignore[no-untyped-def]
    audit = AuditStore(clickhouse_client, clickhouse_database)
    seed_audit(audit)
    review = ReviewStore(clickhouse_client, clickhouse_database)
    seed_review(review)
    sends = DigestLog(clickhouse_client, clickhouse_database)
    sends.migrate()
    return audit, sends, review


def service(stores: tuple[AuditStore, DigestLog, ReviewStore], relay: SmtpRelay, **options: object) -> DigestService:
    audit, sends, review = stores
    return DigestService(audit, sends, directory({PRACTICE: RECIPIENTS}), relay, reviews=StoreReader(review),
                         sender="digest@callstream.example", call_url=CALL_URL, **options)  # type: ignore[arg-type]


def test_the_figures_count_the_practice_day_in_its_time_zone(stores: tuple[AuditStore, DigestLog, ReviewStore]) -> None:
    figures = day_figures(stores[0], PRACTICE, DAY, "America/New_York")
    assert (figures.calls, figures.cs_requests, figures.cs_escalated, figures.cs_not_escalated) == (5, 3, 2, 1)
    assert (figures.cs_queued_for_staff, figures.provider_tasks, figures.blocks, figures.bypass_attempts) == (1, 1, 2, 1)
    assert figures.blocks_by_guard == {"AGREEMENT_EXPIRED": 1, "SlotNotOffered": 1}
    assert (figures.writes_succeeded, figures.writes_failed, figures.write_success_rate) == (3, 1, 0.75)
    assert figures.cs_call_ids == ("call-cs-1", "call-cs-2", "call-cs-3")
    assert day_figures(stores[0], PRACTICE, DAY - dt.timedelta(days=1), "America/New_York").cs_call_ids == ("call-yesterday",)
    assert day_figures(stores[0], OTHER, DAY, "America/New_York").cs_requests == 1


def test_the_digest_arrives_as_text_and_html_with_the_day_figures_and_only_once(
        stores: tuple[AuditStore, DigestLog, ReviewStore]) -> None:
    with LocalSmtpReceiver() as receiver:
        digests = service(stores, SmtpRelay("127.0.0.1", receiver.port, "none"))
        [outcome] = digests.send(DAY)
        assert (outcome.status, outcome.recipients) == ("sent", 2)
        again = digests.send(DAY, PRACTICE)
        assert [o.status for o in again] == ["already_sent"]
        assert len(receiver.messages) == 1, "never two digests for the same practice and day"
    [received] = receiver.messages
    message = received.message
    assert received.recipients == tuple(RECIPIENTS) and received.sender == "digest@callstream.example"
    assert message["Subject"] == "callstream daily digest: Northside-Pain <Clinic> & Co, 2026-03-14"
    assert message["To"] == ", ".join(RECIPIENTS) and message[DIGEST_HEADER] == f"{PRACTICE}/2026-03-14"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    for line in ("Controlled-substance requests              3", "Escalated (provider task or staff review)  2",
                 "NOT escalated                              1", "Requests blocked by a guard                2",
                 "Guardrail-bypass attempts                  1", "ModMed write success                       75.0 % (3 of 4)",
                 "Open review-queue items now                2 (1 controlled-substance, oldest since 2026-03-14T16:00:00.000+00:00)",
                 "ATTENTION: 1 controlled-substance request(s)", "  AGREEMENT_EXPIRED: 1",
                 f"  call-cs-3  {CALL_URL.format(call_id='call-cs-3')}"):
        assert line in text, line
    assert "<th align=\"left\">NOT escalated</th><td>1</td>" in html
    assert "Northside-Pain &lt;Clinic&gt; &amp; Co" in html
    assert f'<a href="{CALL_URL.format(call_id="call-bypass")}"><code>call-bypass</code></a>' in html
    assert "call-yesterday" not in text and "call-other" not in text
    raw = message.as_string()
    assert CALLER not in raw and "task-1" not in raw and "appt-1" not in raw, "counts and call ids only"
    assert stores[1].sends(PRACTICE)[0][:3] == (PRACTICE, DAY, "daily")


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
                   .not_valid_after(now + timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "relay.pem", directory / "relay.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_the_relay_is_reached_over_tls_with_the_referenced_login(stores: tuple[AuditStore, DigestLog, ReviewStore],
                                                                  tmp_path: Path, security: str,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert_file, key_file)
    password = "s3cret-relay-Pass"
    monkeypatch.setenv("DIGEST_SMTP_LOGIN", json.dumps({"username": "digest", "password": password}))
    monkeypatch.setenv("WRONG_SMTP_LOGIN", json.dumps({"username": "digest", "password": "nope-nope"}))
    with LocalSmtpReceiver(tls=server_tls, implicit_tls=security == "tls", login=("digest", password)) as receiver:
        untrusted = SmtpRelay("127.0.0.1", receiver.port, security, "env:DIGEST_SMTP_LOGIN")
        wrong = SmtpRelay("127.0.0.1", receiver.port, security, "env:WRONG_SMTP_LOGIN", ca_file=cert_file)
        good = SmtpRelay("127.0.0.1", receiver.port, security, "env:DIGEST_SMTP_LOGIN", ca_file=cert_file)
        [failed] = service(stores, untrusted).send(DAY)
        assert failed.status == "failed" and "SSLCertVerificationError" in (failed.error or "")
        [refused] = service(stores, wrong).send(DAY)
        assert refused.status == "failed" and "SMTPAuthenticationError 535" in (refused.error or "")
        assert stores[1].status(PRACTICE, DAY) is DayStatus.FREE, "a failed send may be tried again"
        [sent] = service(stores, good).send(DAY)
        assert sent.status == "sent"
        assert [received.message[DIGEST_HEADER] for received in receiver.messages] == [f"{PRACTICE}/2026-03-14"]
    assert password not in caplog.text and "nope-nope" not in caplog.text


def test_the_schedule_sends_the_previous_day_once_across_restarts_and_races(
        stores: tuple[AuditStore, DigestLog, ReviewStore]) -> None:
    # 07:00 in New York on the day after DAY is 11:00Z (EDT)
    clock = [datetime(2026, 3, 15, 10, 59, tzinfo=UTC)]
    with LocalSmtpReceiver() as receiver:
        relay = SmtpRelay("127.0.0.1", receiver.port, "none")
        first = service(stores, relay, send_at="07:00", clock=lambda: clock[0])
        assert first.run_due() == [], "not before 07:00 local time"
        clock[0] = datetime(2026, 3, 15, 11, 1, tzinfo=UTC)
        assert [(o.practice_id, o.day, o.status) for o in first.run_due()] == [(PRACTICE, DAY, "sent")]
        assert first.run_due() == [], "settled in this process"
        restarted = service(stores, relay, send_at="07:00", clock=lambda: clock[0])
        assert [o.status for o in restarted.run_due()] == ["already_sent"], "the send log survives a restart"
        # a claim whose process died mid-send: its day is never sent again (at most once)
        sends = stores[1]
        crashed = sends.claim(PRACTICE, DAY + dt.timedelta(days=1))
        assert not isinstance(crashed, DayStatus)
        clock[0] += timedelta(days=1)
        assert [o.status for o in service(stores, relay, clock=lambda: clock[0]).run_due()] == ["unconfirmed"]
        # two claimers racing for one day: only the first claim's owner may send
        race_day = DAY + dt.timedelta(days=5)
        mine = sends.claim(PRACTICE, race_day, "race")
        assert not isinstance(mine, DayStatus)
        assert sends.claim(PRACTICE, race_day, "race") is DayStatus.UNCONFIRMED
        assert len(receiver.messages) == 1


def test_digest_send_from_the_command_line(stores: tuple[AuditStore, DigestLog, ReviewStore], clickhouse_dsn: str,
                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    tenants = tmp_path / "tenants.json"
    tenants.write_text(json.dumps({"practices": [dict(practice.model_dump(mode="json"), auth={
        "method": "password", "credentials_ref": "env:UNUSED"}) for practice in directory({PRACTICE: RECIPIENTS}).values()]}))
    with LocalSmtpReceiver() as receiver:
        for name, value in {"CLICKHOUSE_DSN": clickhouse_dsn, "CALLSTREAM_DATA_DIR": str(tmp_path),
                            "CALLSTREAM_TENANTS_FILE": str(tenants), "CALLSTREAM_SMTP_HOST": "127.0.0.1",
                            "CALLSTREAM_SMTP_PORT": str(receiver.port), "CALLSTREAM_SMTP_SECURITY": "none"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("CALLSTREAM_CONFIG", raising=False)
        arguments = ["send", "--date", "2026-03-14", "--database", stores[0].database]
        assert digest_main(arguments) == 0
        assert digest_main([*arguments, "--practice", PRACTICE]) == 0
        assert len(receiver.messages) == 1
    assert capsys.readouterr().out.splitlines() == [f"{PRACTICE} 2026-03-14: sent to 2 recipient(s)",
                                                    f"{PRACTICE} 2026-03-14: already sent"]
