"""What a reply to a caller must never say, written independently of guards/replies.py.

Used by test_replies.py (every template, rendered with generated values) and test_properties.py
(every reply a decision chooses).
"""

from __future__ import annotations

import re

_DAYS = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
_NUMBER_WORDS = r"(?:a|an|one|two|three|four|five|six|seven|ten|a few|several|couple of|\d+)"

PROMISE_PATTERNS: dict[str, re.Pattern[str]] = {
    name: re.compile(pattern, re.IGNORECASE)
    for name, pattern in {
        "refill outcome": r"\brefill(?:s|ed)?\b.{0,40}\b(?:is|are|has been|have been|will be|was|were|gets?)\b.{0,20}"
        r"\b(?:approved|ready|sent|done|processed|called in|filled|on (?:its|the) way|authori[sz]ed|renewed)\b",
        "will refill": r"\bwill (?:be )?"
        r"(?:refill(?:ed)?|fill(?:ed)?|approve[d]?|renew(?:ed)?|call(?:ed)? (?:it )?in|prescribe[d]?)\b",
        "approval": r"\bapprov(?:e|ed|al|ing)\b",
        "guarantee": r"\bguarantee",
        "pharmacy": r"\bpharmac(?:y|ies|ist)\b",
        "called in": r"\bcall(?:ed)? (?:it |them )?in\b",
        "prescription": r"\b(?:prescription|prescribe|script|rx)\b",
        "today/tonight/tomorrow": r"\b(?:today|tonight|tomorrow|this (?:afternoon|evening|morning|week))\b",
        "within": r"\bwithin\b",
        "relative time": r"\bin " + _NUMBER_WORDS + r" (?:minute|hour|day|week|business day)s?\b",
        "number of units of time": r"\b\d+\s*(?:-\s*)?(?:minutes?|hours?|hrs?|days?|weeks?)\b",
        "by a deadline": r"\bby (?:" + _DAYS + r"|end of|close of|noon|tonight|tomorrow|the weekend|\d)",
        "immediacy": r"\b(?:asap|right away|immediately|shortly|soon|same[- ]day|end of (?:the )?day)\b",
        "quantity": r"\b\d+\s*(?:mg|mcg|milligrams?|pills?|tablets?|tabs|capsules?|doses?|refills?)\b",
        "pill words": r"\b(?:pills?|tablets?|capsules?|mg|milligrams?|dose|dosage|supply)\b",
    }.items()
}
"""A reply that matches any of these promises a refill, a timeline or a quantity."""

FLAG_PATTERNS: dict[str, re.Pattern[str]] = {
    name: re.compile(pattern, re.IGNORECASE)
    for name, pattern in {
        "agreement state": r"\b(?:expired|expire|violat\w*|status|lapsed|overdue)\b",
        "uds": r"\b(?:uds|urine|drug (?:screen|test)|toxicology|tox|aberrant)\b",
        "pdmp": r"\b(?:pdmp|pmp|monitoring)\b",
        "flag": r"\bflag",
        "opioid words": r"\b(?:opioid|opiate|narcotic|chronic|controlled|restrict\w*)\b",
    }.items()
}
"""A reply that matches any of these reads a chart flag aloud."""


def broken_promises(text: str) -> list[str]:
    """Names of the promise and flag patterns `text` matches (empty: the text is safe to speak)."""
    patterns = {**PROMISE_PATTERNS, **FLAG_PATTERNS}
    return [name for name, pattern in patterns.items() if pattern.search(text)]
