"""office_hours in the tenant directory: parsed into guards.hours, errors name practice and field."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from callstream.errors import TenantDirectoryError
from callstream.tenants import load_tenant_directory, unresolvable_credentials
from guards.hours import DEFAULT_OFFICE_HOURS
from tests.callstream.test_tenants import practice, write_yaml


def test_office_hours_from_yaml_and_the_default(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text("""\
practices:
  - practice_id: desert-spine
    name: Desert
    called_numbers: ['+16025550100']
    base_url: http://127.0.0.1:18080
    firm_url_prefix: desertspine
    timezone: America/Phoenix
    auth: {method: password, credentials_ref: 'env:X'}
    office_hours:
      weekly:
        mon: [{opens: '07:00', closes: '15:30'}]
        sat: [{opens: '09:00', closes: '12:00'}]
      holidays: [2026-12-25]
  - practice_id: valley-pain
    name: Valley
    called_numbers: ['+14805550111']
    base_url: http://127.0.0.1:18080
    firm_url_prefix: valleypain
    auth: {method: password, credentials_ref: 'env:Y'}
""")
    directory = load_tenant_directory(path)
    desert = directory["desert-spine"].office_hours
    assert set(desert.weekly) == {"mon", "sat"} and desert.holidays == (date(2026, 12, 25),)
    assert directory["valley-pain"].office_hours == DEFAULT_OFFICE_HOURS


def test_a_bad_office_hours_entry_names_practice_and_field(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, [practice(office_hours={"weekly": {"mon": [{"opens": "17:00", "closes": "08:00"}]}})])
    with pytest.raises(TenantDirectoryError, match=r"practice desert-spine: office_hours\.weekly\.mon\.0"):
        load_tenant_directory(path)


def test_intake_entry_validation(tmp_path: Path) -> None:
    good = {"forms": {"new-patient-consult": "https://forms.example/np"}, "link_secret_ref": "env:LINK",
            "sms": {"provider_url": "https://sms.example/v1/messages", "from_number": "+15125550100", "token_ref": "env:T"}}
    directory = load_tenant_directory(write_yaml(tmp_path, [practice(intake=good)]))
    assert directory["desert-spine"].intake is not None
    for bad, field in [({**good, "forms": {"consult": "https://x.example"}}, "intake.forms"),
                       ({**good, "forms": {"esi": "http://forms.example/esi"}}, "intake.forms"),
                       ({**good, "sms": None}, "intake"),
                       ({**good, "link_secret_ref": "hunter2"}, "intake.link_secret_ref"),
                       ({**good, "email": {"smtp_host": "smtp.example.org", "security": "none",
                                           "from_address": "desk@pain.example"}}, "intake.email")]:
        with pytest.raises(TenantDirectoryError, match=rf"practice desert-spine: {field}"):
            load_tenant_directory(write_yaml(tmp_path, [practice(intake=bad)]))


def test_unresolvable_intake_secrets_are_reported_by_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRED_DESERT", '{"username": "u", "password": "p"}')
    monkeypatch.setenv("LINK_OK", "secret")
    intake = {"forms": {"new-patient-consult": "https://forms.example/np"}, "link_secret_ref": "env:LINK_OK",
              "sms": {"provider_url": "https://sms.example/v1", "from_number": "+15125550100", "token_ref": "env:NO_TOKEN"},
              "email": {"smtp_host": "smtp.example.org", "from_address": "desk@pain.example",
                        "credentials_ref": "env:LINK_OK"}}
    directory = load_tenant_directory(write_yaml(tmp_path, [practice(intake=intake)]))
    problems = unresolvable_credentials(directory)
    assert len(problems) == 2 and all("practice desert-spine" in line for line in problems)
    assert "env:NO_TOKEN" in problems[0] and "SMTP credentials" in problems[1] and "secret" not in " ".join(problems)
