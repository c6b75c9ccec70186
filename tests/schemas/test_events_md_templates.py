"""docs/events.md names every reply template a voice agent can receive and every bypass signal an audit
record can carry, so a new one cannot ship undocumented."""

from __future__ import annotations

import re
from pathlib import Path

from guards.model import BypassSignal
from guards.replies import ReplyTemplate

EVENTS_MD = (Path(__file__).parents[2] / "docs" / "events.md").read_text()


def _expanded_names(text: str) -> set[str]:
    """Backticked names, with "`BASE` (and `_SUFFIX`, ...)" read as BASE and BASE_SUFFIX too."""
    names = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", text))
    for base, suffixes in re.findall(r"`([A-Z][A-Z0-9_]+)`\s+\(and\s+([^)]*)\)", text):
        names |= {base + suffix for suffix in re.findall(r"`(_[A-Z0-9_]+)`", suffixes)}
    return names


def test_every_reply_template_is_listed() -> None:
    section = EVENTS_MD.split("### `Reply`", 1)[1].split("### `OfferedSlot`", 1)[0]
    assert {t.value for t in ReplyTemplate} <= _expanded_names(section)


def test_every_bypass_signal_is_listed_with_the_bypass_attempt_record() -> None:
    section = EVENTS_MD.split("### `AuditEvent`", 1)[1].split("### `Alarm`", 1)[0]
    assert {s.value for s in BypassSignal} <= _expanded_names(section)
