"""Canonical forms of hostile caller text, so a marker cannot hide behind case, width, lookalikes or invisible characters."""

from __future__ import annotations

import re
import unicodedata

_INVISIBLE = dict.fromkeys(
    map(
        ord,
        "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b\u200c\u200d\u200e\u200f"
        "\u202a\u202b\u202c\u202d\u202e\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069\ufeff",
    ),
    None,
)
"""Invisible characters that split words without showing (most are format characters, dropped by category too)."""

_LOOKALIKES = str.maketrans(
    {
        "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i", "ј": "j",
        "ѕ": "s", "ԁ": "d", "ӏ": "l", "к": "k", "м": "m", "т": "t", "н": "h", "в": "b",
        "α": "a", "ε": "e", "ο": "o", "ι": "i", "κ": "k", "ν": "v", "ρ": "p", "τ": "t", "υ": "u", "χ": "x",
    }
)
"""Cyrillic and Greek letters that read as Latin ones (lower case: applied after casefold)."""

_DIGIT_SUBSTITUTES = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
"""Leetspeak: 'ign0re prev1ous' is read as 'ignore previous' in the second form."""

_APOSTROPHES = re.compile(r"['\u2018\u2019\u02bc`]")
_SEPARATORS = re.compile(r"[\W_]+")


def _fold(text: str) -> str:
    """Accents, stray combining marks and invisible characters dropped; NFKC; casefolded; lookalikes mapped."""
    decomposed = unicodedata.normalize("NFKD", text)
    visible = "".join(ch for ch in decomposed if not unicodedata.combining(ch) and unicodedata.category(ch) != "Cf")
    return unicodedata.normalize("NFKC", visible).translate(_INVISIBLE).casefold().translate(_LOOKALIKES)


def _words(folded: str) -> str:
    """Apostrophes dropped, every other run of punctuation or whitespace turned into one space."""
    return _SEPARATORS.sub(" ", _APOSTROPHES.sub("", folded)).strip()


def canonical_forms(text: str) -> tuple[str, ...]:
    """Lower-case words separated by single spaces ("I'm" -> "im", "IGNORE.previous" -> "ignore previous"),
    plus, when it differs, the leetspeak-decoded form: a marker counts if either form matches."""
    folded = _fold(text)
    plain = _words(folded)
    decoded = _words(folded.translate(_DIGIT_SUBSTITUTES))
    return (plain,) if decoded == plain else (plain, decoded)
