"""Digest addresses: one grammar for the tenant directory's recipients and the sender setting, narrow enough
that no address can add a header or a recipient to a message."""

from __future__ import annotations

import pytest

from callstream.errors import ConfigError, TenantDirectoryError
from callstream.settings import load_settings
from callstream.tenants import parse_tenant_directory

ENTRY = {"practice_id": "northside-pain", "name": "Northside", "called_numbers": ["+15550001111"],
         "base_url": "http://127.0.0.1:9", "firm_url_prefix": "firm", "auth": {"method": "password",
                                                                             "credentials_ref": "env:UNUSED"}}


def directory(recipients: object) -> object:
    return parse_tenant_directory({"practices": [{**ENTRY, "digest_recipients": recipients}]}, "tenants.yaml")


def test_recipients_are_plain_distinct_addresses() -> None:
    addresses = ["qa@northside.example", "o'brien+digest@mail.northside.example"]
    assert directory(addresses)["northside-pain"].digest_recipients == tuple(addresses)  # type: ignore[index]
    assert parse_tenant_directory({"practices": [ENTRY]}, "t")["northside-pain"].digest_recipients == ()
    for bad in (["qa@northside.example\r\nBcc: all@elsewhere.example"], ["Q A <qa@northside.example>"],
                ["qa@northside.example, x@y.example"], ["qa@-northside.example"], ["@northside.example"],
                ["qa@northside.example", "QA@northside.example"], "qa@northside.example"):
        with pytest.raises(TenantDirectoryError, match="practice northside-pain: digest_recipients"):
            directory(bad)


def test_digest_settings_are_checked_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLSTREAM_CONFIG", raising=False)
    for name, value, problem in (("CALLSTREAM_DIGEST_SENDER", "digest@x.example\nBcc: y@z.example", "digest_sender"),
                                 ("CALLSTREAM_DIGEST_SEND_AT", "7am", "digest_send_at"),
                                 ("CALLSTREAM_SMTP_SECURITY", "ssl", "smtp_security"),
                                 ("CALLSTREAM_SMTP_CREDENTIALS_REF", '{"password": "x"}', "smtp_credentials_ref"),
                                 ("CALLSTREAM_READ_API_TOKEN_REF", "hunter2", "read_api_token_ref"),
                                 ("CALLSTREAM_DIGEST_CALL_URL", "https://qa.example/calls", "digest_call_url")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError, match=problem) as caught:
            load_settings()
        assert "hunter2" not in str(caught.value)
        monkeypatch.delenv(name)
    assert load_settings().read_api_host == "127.0.0.1"
