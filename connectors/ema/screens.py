"""The closed set of EMA screens the automation may open, and strict readers for the values they show.

The browser is only ever sent to a URL built here, so the EMA layer structurally cannot reach a
prescription or medication screen: none is in ``Screen``. Values read from screens are hostile input:
each reader accepts exactly the vocabulary the screen is documented to show (docs/sandbox.md, "EMA web
screens") and raises ``ScreenValueError`` otherwise, naming the element, never the value (PHI).
"""

from __future__ import annotations

import re
from datetime import date, datetime
from enum import StrEnum
from urllib.parse import quote, urlencode, urlsplit

from callstream.tenants import Practice
from guards.model import AgreementStatus, PhoneRestriction

FHIR_ID = re.compile(r"^(?!\.+\Z)[A-Za-z0-9\-.]{1,64}\Z")
"""A ModMed id as it may appear in a screen path (same rule as connectors.allow_lists.FHIR_ID)."""
MAX_VALUE_CHARS = 200


class Screen(StrEnum):
    """Every screen the automation opens (path templates under the practice's EMA root)."""

    HOME = "home"
    CHART = "chart/{patient_id}"
    OPIOID_AGREEMENT = "chart/{patient_id}/opioid-agreement"
    PDMP = "chart/{patient_id}/pdmp"
    """Read for the last-check timestamp only; the automation never submits the attestation form."""
    BOOKING = "scheduling/book"
    TASK_QUEUE = "pm/tasks"


LOGIN_PATH = "login"


class ScreenValueError(ValueError):
    """A screen value outside its documented vocabulary; the message names the element only."""

    def __init__(self, testid: str) -> None:
        self.testid = testid
        super().__init__(f"unreadable value in {testid}")


def screen_url(practice: Practice, screen: Screen, *, patient_id: str | None = None) -> str:
    """Absolute URL of a screen of this practice's EMA; ids are validated before they reach a path."""
    path = screen.value
    if "{patient_id}" in path:
        if patient_id is None or not FHIR_ID.match(patient_id):
            raise ValueError("screen needs a valid patient id")
        path = path.replace("{patient_id}", quote(patient_id, safe=""))
    return f"{practice.ema_url}/{path}"


def with_query(url: str, query: dict[str, str]) -> str:
    return f"{url}?{urlencode(query)}"


def login_path(practice: Practice) -> str:
    return f"{urlsplit(practice.ema_url).path}/{LOGIN_PATH}"


def is_inside(practice: Practice, url: str) -> bool:
    """Whether a URL is a screen of this practice's EMA (same origin, under its EMA root)."""
    root, target = urlsplit(practice.ema_url), urlsplit(url)
    return (
        (target.scheme, target.netloc) == (root.scheme, root.netloc)
        and (target.path + "/").startswith(root.path.rstrip("/") + "/")
    )


def _bounded(testid: str, raw: str) -> str:
    text = " ".join(raw.split())
    if len(text) > MAX_VALUE_CHARS:
        raise ScreenValueError(testid)
    return text


def read_yes_no(testid: str, raw: str) -> bool:
    text = _bounded(testid, raw)
    if text == "yes":
        return True
    if text == "no":
        return False
    raise ScreenValueError(testid)


def read_optional_date(testid: str, raw: str) -> date | None:
    """A yyyy-mm-dd date, or "-" for none."""
    text = _bounded(testid, raw)
    if text == "-":
        return None
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise ScreenValueError(testid)
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ScreenValueError(testid) from None


def read_agreement_status(testid: str, raw: str) -> AgreementStatus:
    text = _bounded(testid, raw)
    try:
        return AgreementStatus(text)
    except ValueError:
        raise ScreenValueError(testid) from None


def read_phone_restrictions(testid: str, raw: str) -> frozenset[PhoneRestriction]:
    """Every restriction the chart shows, comma-separated, or "none": a chart may carry several."""
    text = _bounded(testid, raw)
    if text == "none":
        return frozenset()
    try:
        return frozenset(PhoneRestriction(part.strip()) for part in text.split(","))
    except ValueError:
        raise ScreenValueError(testid) from None


def read_optional_instant(testid: str, raw: str) -> datetime | None:
    """An ISO 8601 date-time with a zone, or "never"."""
    text = _bounded(testid, raw)
    if text == "never":
        return None
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T[0-9:.]+(Z|[+-]\d{2}:\d{2})", text):
        raise ScreenValueError(testid)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ScreenValueError(testid) from None
    if moment.utcoffset() is None:
        raise ScreenValueError(testid)
    return moment


def read_id(testid: str, raw: str) -> str:
    """A ModMed id shown on a screen (appointment, task)."""
    text = _bounded(testid, raw)
    if not FHIR_ID.match(text):
        raise ScreenValueError(testid)
    return text
