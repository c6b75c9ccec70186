"""Standard Webhooks signing: the spec's own test vector, and every way a delivery must fail."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from callstream.webhooks import (
    WebhookHeaderError,
    WebhookSecret,
    WebhookSecretError,
    WebhookVerificationError,
    resolve_secret,
    sign,
    signature_headers,
    verify,
)

SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_matches_the_standard_webhooks_reference_vector() -> None:
    assert sign(WebhookSecret.parse(SPEC_SECRET), SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_signed_headers_verify_and_return_the_stable_id() -> None:
    secret = WebhookSecret.parse(SPEC_SECRET)
    headers = signature_headers(secret, "evt-1", b"{}", timestamp=1_700_000_000)
    assert headers["webhook-id"] == "evt-1" and headers["webhook-timestamp"] == "1700000000"
    upper = {name.upper(): value for name, value in headers.items()}
    assert verify(secret, upper, b"{}", now=1_700_000_010) == "evt-1"
    rotated = {**headers, "webhook-signature": f"v1,AAAA {headers['webhook-signature']}"}
    assert verify(secret, rotated, b"{}", now=1_700_000_000) == "evt-1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h, b: (h, b + b" "), "no webhook-signature matches"),
        (lambda h, b: ({**h, "webhook-id": "evt-2"}, b), "no webhook-signature matches"),
        (lambda h, b: ({**h, "webhook-timestamp": "1700000001"}, b), "no webhook-signature matches"),
        (lambda h, b: ({**h, "webhook-timestamp": "1699999000"}, b), "outside the tolerance"),
        (lambda h, b: ({**h, "webhook-timestamp": "17e8"}, b), "whole number"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b), "missing"),
        (lambda h, b: ({**h, "webhook-signature": h["webhook-signature"].replace("v1,", "v2,")}, b), "no webhook"),
    ],
)
def test_tampered_or_malformed_deliveries_are_rejected(change, message: str) -> None:  # type: ignore[no-untyped-def]
    secret = WebhookSecret.parse(SPEC_SECRET)
    headers, body = change(signature_headers(secret, "evt-1", b"{}", timestamp=1_700_000_000), b"{}")
    with pytest.raises(WebhookVerificationError, match=message):
        verify(secret, headers, body, now=1_700_000_000)


@pytest.mark.parametrize(
    "change",
    [
        lambda h: {k: v for k, v in h.items() if k != "webhook-id"},
        lambda h: {**h, "webhook-id": "x" * 257},
        lambda h: {**h, "webhook-id": "evt\n1"},
        lambda h: {**h, "webhook-timestamp": "1" * 13},
        lambda h: {**h, "webhook-timestamp": "１７００００００００"},  # full-width digits are not ASCII seconds
    ],
)
def test_malformed_headers_are_header_errors_a_receiver_answers_400(change) -> None:  # type: ignore[no-untyped-def]
    secret = WebhookSecret.parse(SPEC_SECRET)
    with pytest.raises(WebhookHeaderError):
        verify(secret, change(signature_headers(secret, "evt-1", b"{}", timestamp=1_700_000_000)), b"{}", now=1_700_000_000)


def test_only_the_first_sixteen_signatures_are_tried() -> None:
    secret = WebhookSecret.parse(SPEC_SECRET)
    headers = signature_headers(secret, "evt-1", b"{}", timestamp=1_700_000_000)
    padded = {**headers, "webhook-signature": " ".join(["v1,AAAA"] * 16 + [headers["webhook-signature"]])}
    with pytest.raises(WebhookVerificationError, match="no webhook-signature matches") as refused:
        verify(secret, padded, b"{}", now=1_700_000_000)
    assert not isinstance(refused.value, WebhookHeaderError)


def test_another_practices_secret_does_not_verify() -> None:
    mine = WebhookSecret.parse(SPEC_SECRET)
    theirs = WebhookSecret.parse("whsec_" + base64.b64encode(b"x" * 32).decode())
    headers = signature_headers(theirs, "evt-1", b"{}")
    with pytest.raises(WebhookVerificationError):
        verify(mine, headers, b"{}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with whsec_"),
        ("whsec_not*base64!", "not valid base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "24-64 bytes"),
        ("whsec_" + base64.b64encode(b"y" * 65).decode(), "24-64 bytes"),
    ],
)
def test_malformed_secrets_are_refused_without_echoing_them(text: str, message: str) -> None:
    with pytest.raises(WebhookSecretError, match=message) as caught:
        WebhookSecret.parse(text)
    assert text not in str(caught.value)


def test_secret_references_resolve_from_env_and_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRACTICE_SIEM_SECRET", SPEC_SECRET)
    assert resolve_secret("env:PRACTICE_SIEM_SECRET").key == WebhookSecret.parse(SPEC_SECRET).key
    secret_file = tmp_path / "siem.secret"
    secret_file.write_text(SPEC_SECRET + "\n")
    assert resolve_secret(f"file:{secret_file}").key == WebhookSecret.parse(SPEC_SECRET).key
    assert SPEC_SECRET not in repr(resolve_secret(f"file:{secret_file}"))


def test_bad_secret_references_name_the_reference_not_the_content(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MISSING_SIEM_SECRET", raising=False)
    with pytest.raises(WebhookSecretError, match="env:MISSING_SIEM_SECRET: variable is not set"):
        resolve_secret("env:MISSING_SIEM_SECRET")
    with pytest.raises(WebhookSecretError, match="No such file"):
        resolve_secret(f"file:{tmp_path / 'absent'}")
    monkeypatch.setenv("WRONG_SIEM_SECRET", "hunter2-not-a-whsec")
    with pytest.raises(WebhookSecretError, match="env:WRONG_SIEM_SECRET: signing secret must start") as caught:
        resolve_secret("env:WRONG_SIEM_SECRET")
    assert "hunter2" not in str(caught.value)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(WebhookSecretError, match="not UTF-8"):
        resolve_secret(f"file:{binary}")
    with pytest.raises(WebhookSecretError, match="must be env:VARIABLE or file:/path"):
        resolve_secret("vault:kv/siem")
