"""Tenant directory validation and called-number routing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from callstream.errors import TenantDirectoryError
from callstream.tenants import (
    CREDENTIAL_FIELDS,
    ApiTrack,
    AuthMethod,
    Credentials,
    GoLivePhase,
    Practice,
    load_tenant_directory,
    parse_tenant_directory,
    unresolvable_credentials,
)


def practice(practice_id: str = "desert-spine", **changes: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "practice_id": practice_id,
        "name": "Desert Spine & Pain",
        "called_numbers": ["+16025550100"],
        "base_url": "http://127.0.0.1:18080/",
        "firm_url_prefix": "desertspine",
        "auth": {"method": "password", "credentials_ref": "env:CRED_DESERT"},
        "phase": "write",
    }
    entry.update(changes)
    return entry


def write_yaml(tmp_path: Path, practices: list[dict[str, object]]) -> Path:
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump({"practices": practices}))
    return path


def test_valid_directory_routes_called_numbers(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, [practice(), practice("valley-pain", called_numbers=["+14805550111", "+14805550112"],
                                                       firm_url_prefix="valleypain")])
    directory = load_tenant_directory(path)
    assert len(directory) == 2
    routed = directory.resolve_called_number("+14805550112")
    assert routed is not None and routed.practice_id == "valley-pain"
    assert directory.resolve_called_number("+19999999999") is None
    desert = directory["desert-spine"]
    assert desert.fhir_base == "http://127.0.0.1:18080/firm/desertspine/ema/fhir/v2"
    assert desert.token_url == "http://127.0.0.1:18080/firm/desertspine/ema/ws/oauth2/grant"
    assert desert.chart_deep_link("pat-1") == "http://127.0.0.1:18080/ema/desertspine/chart/pat-1"
    assert desert.phase is GoLivePhase.WRITE and desert.track is ApiTrack.PROPRIETARY
    assert desert.rate_limit_per_min == 1000


def test_json_directory_and_certified_track(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps({"practices": [practice(
        track="certified", firm_url_prefix=None, fhir_base_url="http://127.0.0.1:1/certified/x/fhir/r4",
        auth={"method": "private_key_jwt", "credentials_ref": "file:/run/secrets/x"})]}))
    entry = load_tenant_directory(path)["desert-spine"]
    assert entry.auth.method is AuthMethod.PRIVATE_KEY_JWT
    assert entry.fhir_base == "http://127.0.0.1:1/certified/x/fhir/r4"


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"called_numbers": ["602-555-0100"]}, "called_numbers", "E.164"),
        ({"called_numbers": ["+16025550100\n"]}, "called_numbers", "E.164"),
        ({"auth": {"method": "password", "credentials_ref": "env:MODMED\n"}}, "auth.credentials_ref", "env:VARIABLE"),
        ({"phase": "live"}, "phase", "sandbox"),
        ({"auth": {"method": "password", "credentials_ref": "hunter2"}}, "auth.credentials_ref", "env:VARIABLE"),
        ({"firm_url_prefix": None}, "(entry)", "firm_url_prefix is required"),
        ({"rate_limit_per_min": 0}, "rate_limit_per_min", "greater than or equal"),
        ({"base_url": "ftp://x"}, "base_url", "https URL"),
        ({"base_url": "http://mmi.example.com"}, "base_url", "plain http only on 127.0.0.1"),
        ({"timezone": "Mars/Olympus"}, "timezone", "IANA time zone"),
        ({"capabilities": {"ema_booking_templates": ["kyphoplsty"]}}, "capabilities.ema_booking_templates", "unknown visit-reason"),
        ({"capabilities": {"fhir_task_create": False, "ema_task_queue": False}}, "capabilities", "escalations become tasks"),
        ({"siem": {"url": "http://siem.example.com/hook", "secret_ref": "env:S"}}, "siem.url", "https URL"),
    ],
)
def test_bad_entry_names_file_practice_and_field(tmp_path: Path, changes: dict[str, object], field: str, message: str) -> None:
    broken = practice("broken-clinic", firm_url_prefix="broken", called_numbers=["+15555550123"])
    broken.update(changes)
    path = write_yaml(tmp_path, [practice(), broken])
    with pytest.raises(TenantDirectoryError) as caught:
        load_tenant_directory(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: practice broken-clinic: {field}:"), text
    assert message in text
    assert "\n" not in text


def test_duplicate_numbers_and_ids_are_rejected() -> None:
    with pytest.raises(TenantDirectoryError, match="already belongs to practice desert-spine"):
        parse_tenant_directory({"practices": [practice(), practice("other", firm_url_prefix="o")]}, "t.yaml")
    with pytest.raises(TenantDirectoryError, match="duplicate practice_id"):
        parse_tenant_directory({"practices": [practice(), practice(called_numbers=["+15555550199"])]}, "t.yaml")


def test_unparseable_and_wrongly_shaped_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("practices: [\n  - {practice_id: x\n")
    with pytest.raises(TenantDirectoryError, match=r"broken.yaml: not valid YAML at line"):
        load_tenant_directory(broken)
    shaped = tmp_path / "shaped.json"
    shaped.write_text("[1, 2]")
    with pytest.raises(TenantDirectoryError, match="expected a mapping with a 'practices' list"):
        load_tenant_directory(shaped)


def test_credentials_resolve_from_env_and_file_without_leaking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRED_DESERT", json.dumps({"username": "svc", "password": "s3cret-pw", "api_key": "k-123"}))
    entry = parse_tenant_directory({"practices": [practice()]}, "t.yaml")["desert-spine"]
    credentials = entry.auth.resolve()
    assert credentials.password is not None and credentials.password.get_secret_value() == "s3cret-pw"
    assert "s3cret-pw" not in repr(credentials) and "k-123" not in str(credentials)
    monkeypatch.setenv("CRED_DESERT", "not json s3cret-pw")
    with pytest.raises(TenantDirectoryError) as caught:
        entry.auth.resolve()
    assert "s3cret-pw" not in str(caught.value)
    monkeypatch.delenv("CRED_DESERT")
    with pytest.raises(TenantDirectoryError, match="variable is not set"):
        entry.auth.resolve()


def test_cli_reports_a_bad_tenant_file_in_one_line(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, [practice(called_numbers=["bogus"])])
    result = subprocess.run([sys.executable, "-m", "callstream.cli", "tenants", "check", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith(f"callstream: error: {path}: practice desert-spine: called_numbers:")
    assert "Traceback" not in result.stderr


def test_siem_url_and_credentials_stay_out_of_reprs() -> None:
    entry = parse_tenant_directory({"practices": [practice(
        siem={"url": "https://siem.example.com/hook?token=abc123", "secret_ref": "env:SIEM"})]}, "t.yaml")["desert-spine"]
    assert entry.siem is not None and entry.siem.url.endswith("abc123")
    assert "abc123" not in repr(entry) and "abc123" not in str(entry)


# ------------------------------------------------------------------------ credential references resolve

SECRET = "s3cret-never-shown"


def credentials_file(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return f"file:{path}"


def unresolvable_cases(tmp_path: Path) -> list[tuple[str, str, str]]:
    """(method, credentials_ref, what the line says) of references a worker could not use."""
    return [
        ("password", "env:CALLSTREAM_TEST_NEVER_SET", "variable is not set"),
        ("password", f"file:{tmp_path / 'absent.json'}", "No such file or directory"),
        ("password", f"file:{tmp_path}", "Is a directory"),
        ("password", credentials_file(tmp_path, "latin1.json", b"\xff\xfe" + SECRET.encode()), "not UTF-8 text"),
        ("password", credentials_file(tmp_path, "text.json", f"password={SECRET}"), "not a JSON object"),
        ("password", credentials_file(tmp_path, "extra.json", json.dumps({"token": SECRET})), "not a JSON object"),
        ("password", credentials_file(tmp_path, "nopw.json", json.dumps({"username": "svc", "password": ""})),
         "lacks password (needed by the password method)"),
        ("client_credentials", credentials_file(tmp_path, "pw.json", json.dumps({"username": "svc", "password": SECRET})),
         "lacks client_id, client_secret (needed by the client_credentials method)"),
        ("private_key_jwt", credentials_file(tmp_path, "cc.json", json.dumps({"client_id": "c", "client_secret": SECRET})),
         "lacks private_key_pem (needed by the private_key_jwt method)"),
    ]


def test_every_unresolvable_credential_reference_is_one_line_naming_practice_and_reference(tmp_path: Path) -> None:
    cases = unresolvable_cases(tmp_path)
    good = credentials_file(tmp_path, "good.json", json.dumps({"username": "svc", "password": SECRET}))
    entries = [practice("good-clinic", firm_url_prefix="good", auth={"method": "password", "credentials_ref": good})]
    for index, (method, ref, _) in enumerate(cases):
        entries.append(practice(f"clinic-{index}", firm_url_prefix=f"c{index}", called_numbers=[f"+1555555{index:04d}"],
                                auth={"method": method, "credentials_ref": ref}))
    directory = parse_tenant_directory({"practices": entries}, "t.yaml")
    problems = unresolvable_credentials(directory)
    assert len(problems) == len(cases)
    for index, (line, (_, ref, says)) in enumerate(zip(problems, cases, strict=True)):
        assert line.startswith(f"t.yaml: practice clinic-{index}: credential reference {ref}: "), line
        assert says in line and "\n" not in line and SECRET not in line


def test_a_resolvable_reference_passes_and_yields_the_methods_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRED_DESERT", json.dumps({"username": "svc", "password": SECRET, "api_key": "k"}))
    directory = parse_tenant_directory({"practices": [practice()]}, "t.yaml")
    assert unresolvable_credentials(directory) == []
    password = directory["desert-spine"].auth.usable_credentials().password
    assert password is not None and password.get_secret_value() == SECRET


@pytest.mark.parametrize("method", list(AuthMethod))
def test_the_fields_the_check_asks_for_are_those_the_token_grant_needs(method: AuthMethod) -> None:
    """The check runs where the grant does not (CLI, worker start); both must want the same fields."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from connectors.auth import grant_for
    from connectors.errors import AuthError

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    values = {"username": "svc", "password": SECRET, "client_id": "cid", "client_secret": SECRET,
              "private_key_pem": pem}
    entry = Practice.model_validate(practice(auth={"method": method.value, "credentials_ref": "env:X"}))
    needed = CREDENTIAL_FIELDS[method]
    assert grant_for(entry, Credentials.model_validate({k: values[k] for k in needed})).grant_form("https://t.example")
    for left_out in needed:
        partial = Credentials.model_validate({k: values[k] for k in needed if k != left_out})
        with pytest.raises(AuthError):
            grant_for(entry, partial).grant_form("https://t.example")


def test_cli_check_fails_on_unresolvable_references_one_line_each(tmp_path: Path) -> None:
    good = credentials_file(tmp_path, "good.json", json.dumps({"username": "svc", "password": SECRET}))
    bad = credentials_file(tmp_path, "bad.json", f"not json {SECRET}")
    path = write_yaml(tmp_path, [
        practice(auth={"method": "password", "credentials_ref": good}),
        practice("broken-clinic", firm_url_prefix="b", called_numbers=["+15555550123"],
                 auth={"method": "password", "credentials_ref": bad}),
        practice("unset-clinic", firm_url_prefix="u", called_numbers=["+15555550124"],
                 auth={"method": "client_credentials", "credentials_ref": "env:CALLSTREAM_TEST_NEVER_SET"}),
    ])

    def check(*extra: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "CALLSTREAM_TEST_NEVER_SET"}
        return subprocess.run([sys.executable, "-m", "callstream.cli", "tenants", "check", str(path), *extra],
                              capture_output=True, text=True, timeout=60, env=env)

    failed = check()
    assert failed.returncode == 2 and failed.stdout == ""
    assert failed.stderr.splitlines() == [
        f"callstream: error: {path}: practice broken-clinic: credential reference {bad}: not a JSON object of "
        "username/password/api_key/client_id/client_secret/private_key_pem/key_id",
        f"callstream: error: {path}: practice unset-clinic: credential reference env:CALLSTREAM_TEST_NEVER_SET: "
        "variable is not set",
    ]
    assert SECRET not in failed.stderr
    skipped = check("--skip-credentials")
    assert skipped.returncode == 0 and skipped.stdout.strip() == f"{path}: 3 practices valid"
