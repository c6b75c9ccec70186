"""Scrubbing of outside references (transcript references, task references, EMA deep links).

One scrubber for every place a reference leaves callstream: the audit sinks (sinks/payload.py) and
the ModMed Tasks that carry the call's transcript reference (connectors). It lives here, below both,
because sinks may not be imported by connectors.

A reference loses URL credentials and its query string (where presigned signatures and session
tokens live, and where careless stores put patient names) and is refused when it holds spaces (free
text such as a transcript) or a secret marker. Every path or fragment segment (percent-decoded) that
holds a birth-date-like date, a phone number, an e-mail address or a capitalised name pair
("Romero-Gabriel") becomes `redacted`, keeping the rest: `s3://…/Romero-Gabriel-1947-07-17/call-9.json`
leaves as `s3://…/redacted/call-9.json`.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

_REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/#@\-]{0,511}\Z")
SECRET_MARKERS = re.compile(
    r"whsec_|bearer|eyJ[A-Za-z0-9_\-]{8,}|sk_live|-----begin"
    r"|(?:passw(?:or)?d|secret|token|api[_-]?key|credentials?|auth)[=:]",
    re.IGNORECASE,
)
"""Secret values, not words: "TokenExpired" is a fine error class, "token=abc" or "whsec_..." is not."""
_SEGMENT_DATE = re.compile(
    r"(?<!\d)(?:\d{4}[-_.]\d{1,2}[-_.]\d{1,2}|\d{1,2}[-_.]\d{1,2}[-_.]\d{2,4}"
    r"|(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]))(?!\d)"
)
"""Dates inside one segment (1947-07-17, 07.17.1947, 19470717); date-partitioned paths (2026/03/14) are
separate segments and stay."""
_SEGMENT_PHONE = re.compile(r"(?<!\d)\+?\d(?:[-. ()]?\d){9,}(?!\d)")
_SEGMENT_EMAIL = re.compile(r"[^@\s/]+@[^@\s/]+\.[A-Za-z]{2,}")
_SEGMENT_NAME = re.compile(r"[A-Z][a-z]+(?:[-_ .,+]+[A-Z][a-z]+)+")
REDACTED_SEGMENT = "redacted"


def clean_reference(value: str) -> str | None:
    """A reference without URL credentials or query; None when it is free text or carries a secret.

    The fragment is kept (EMA routes to a chart in it) unless it holds key=value pairs, which is
    where implicit-flow tokens travel.
    """
    if any(character.isspace() for character in value):
        return None
    parts = urlsplit(value)
    if parts.scheme and parts.netloc:
        try:
            port = parts.port
        except ValueError:  # a non-numeric or out-of-range port: not a usable link
            return None
        if not parts.hostname:
            return None
        netloc = parts.hostname if port is None else f"{parts.hostname}:{port}"
        fragment = "" if "=" in parts.fragment else parts.fragment
        value = urlunsplit((parts.scheme, netloc, _scrub_segments(parts.path), "", _scrub_segments(fragment)))
    elif not _REFERENCE.match(value):
        return None
    else:
        value = _scrub_segments(value)
    return None if SECRET_MARKERS.search(value) else value


def _scrub_segments(path: str) -> str:
    """Replace each `/`-separated segment that names or dates a person, or holds a phone number or an
    e-mail address, by `redacted`."""
    segments = path.split("/")
    return "/".join(
        REDACTED_SEGMENT if _segment_identifies(segment, chart_id=index > 0 and segments[index - 1] in CHART_ROUTES)
        else segment
        for index, segment in enumerate(segments)
    )


CHART_ROUTES = frozenset({"chart", "patients"})
"""EMA route segments followed by a chart id (`…/chart/{patient_id}`), which callstream builds from the id
ModMed assigned, never from anything a caller said."""
_CHART_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}\Z")
"""FHIR's id grammar. A chart id is a digit run of ten or more in many ModMed firms (`pt-1002-000001`,
`1000234567`): the phone pattern would take it for a phone number and break the chart link."""


def _segment_identifies(segment: str, *, chart_id: bool = False) -> bool:
    text = unquote(segment)
    patterns = (_SEGMENT_DATE, _SEGMENT_EMAIL, _SEGMENT_NAME) if chart_id and _CHART_ID.match(text) else (
        _SEGMENT_DATE, _SEGMENT_PHONE, _SEGMENT_EMAIL, _SEGMENT_NAME)
    return any(pattern.search(text) for pattern in patterns)
