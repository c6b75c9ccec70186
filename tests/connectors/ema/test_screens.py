"""Screen URLs and the strict readers of screen values (hostile text from a page)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callstream.tenants import Practice
from connectors.ema.commands import TASK_KIND_CODES, task_kind_code
from connectors.ema.screens import (
    Screen,
    ScreenValueError,
    is_inside,
    read_agreement_status,
    read_id,
    read_optional_date,
    read_optional_instant,
    read_phone_restrictions,
    read_yes_no,
    screen_url,
)
from guards.model import AgreementStatus, PhoneRestriction, TaskAudience, TaskKind, TaskReason, TaskSpec

READERS = [read_yes_no, read_optional_date, read_agreement_status, read_phone_restrictions, read_optional_instant, read_id]


@pytest.fixture
def practice(tmp_path: Path) -> Practice:
    secret = tmp_path / "c.json"
    secret.write_text(json.dumps({"username": "u", "password": "p"}))
    return Practice.model_validate({
        "practice_id": "pain-1001", "name": "P", "called_numbers": ["+14805550169"], "base_url": "https://ema.example",
        "firm_url_prefix": "desert", "auth": {"method": "password", "credentials_ref": f"file:{secret}"},
    })


def test_screen_urls_stay_under_the_practice_ema(practice: Practice) -> None:
    assert screen_url(practice, Screen.CHART, patient_id="pt-1") == "https://ema.example/ema/desert/chart/pt-1"
    assert screen_url(practice, Screen.TASK_QUEUE) == "https://ema.example/ema/desert/pm/tasks"
    for bad in ("../pm/tasks", "pt 1", "", "..", "pt/1", None):
        with pytest.raises(ValueError):
            screen_url(practice, Screen.PDMP, patient_id=bad)
    assert is_inside(practice, "https://ema.example/ema/desert/chart/pt-1?x=1")
    for outside in ("https://ema.example/ema/desertx/home", "http://ema.example/ema/desert/home",
                    "https://evil.example/ema/desert/home", "https://ema.example/other", "about:blank"):
        assert not is_inside(practice, outside)


def test_readers_accept_exactly_the_documented_vocabulary() -> None:
    assert (read_yes_no("t", " yes "), read_yes_no("t", "no")) == (True, False)
    assert read_optional_date("t", "2026-02-28") == dt.date(2026, 2, 28) and read_optional_date("t", "-") is None
    assert read_agreement_status("t", "violated") is AgreementStatus.VIOLATED
    assert read_agreement_status("t", "none") is AgreementStatus.NONE
    assert read_phone_restrictions("t", "none") == frozenset()
    assert read_phone_restrictions("t", "no-scheduling") == {PhoneRestriction.NO_SCHEDULING}
    assert read_phone_restrictions("t", "no-refill-requests, no-scheduling") == {
        PhoneRestriction.NO_REFILL_REQUESTS, PhoneRestriction.NO_SCHEDULING}
    assert read_optional_instant("t", "2026-10-13T12:15:18.517Z") == dt.datetime(2026, 10, 13, 12, 15, 18, 517000, dt.UTC)
    assert read_optional_instant("t", "never") is None
    assert read_id("t", "appt-1001-000001") == "appt-1001-000001"
    for reader, bad in [
        (read_yes_no, "Yes"), (read_optional_date, "2026-02-30"), (read_optional_date, "20260228"),
        (read_agreement_status, "pending"), (read_phone_restrictions, "no-refills"),
        (read_optional_instant, "2026-10-13T12:15:18"), (read_optional_instant, "yesterday"), (read_id, "a b"),
        (read_id, "x" * 65),
    ]:
        with pytest.raises(ScreenValueError, match="unreadable value in t"):
            reader("t", bad)


@given(st.text(max_size=300))
def test_readers_never_echo_what_they_refuse(text: str) -> None:
    for reader in READERS:
        try:
            reader("element", text)
        except ScreenValueError as error:
            assert str(error) == "unreadable value in element"


def test_every_guard_task_kind_has_a_queue_kind() -> None:
    assert set(TASK_KIND_CODES) == set(TaskKind)
    renewal = TaskSpec(kind=TaskKind.CLINICAL_TEAM_REVIEW, audience=TaskAudience.CLINICAL_TEAM,
                       reason=TaskReason.AGREEMENT_NOT_ON_FILE, call_id="c", practice_id="p")
    violated = renewal.model_copy(update={"reason": TaskReason.AGREEMENT_VIOLATED})
    assert (task_kind_code(renewal), task_kind_code(violated)) == ("agreement-renewal", "clinical-review")
    provider = TaskSpec(kind=TaskKind.PROVIDER_CONTROLLED_SUBSTANCE_REVIEW, audience=TaskAudience.PROVIDER,
                        reason=TaskReason.CONTROLLED_SUBSTANCE_VISIT, call_id="c", practice_id="p")
    assert task_kind_code(provider) == "provider-review"  # never the clinical team's queue kind
