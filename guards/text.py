"""Canonical tokens of hostile caller text, so a marker cannot hide behind case, width, lookalikes,
invisible characters, leetspeak, spacing or split words.

`canonical_forms` gives two forms of a snippet: the plain one (folded words, leetspeak decoded per
token) and, when it differs, the repaired one (letter runs like "o x y" segmented into words, split
words like "dis regard" joined, near-misses of the lexicon's long words corrected). A marker counts
if either form matches, so repairing can only add findings.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

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
        "ѕ": "s", "ԁ": "d", "ӏ": "l", "к": "k", "м": "m", "т": "t", "н": "h", "в": "b", "ь": "b",
        "ԛ": "q", "ԝ": "w", "һ": "h", "ɡ": "g", "ɑ": "a", "ı": "i", "ȷ": "j", "ℓ": "l",
        "α": "a", "ε": "e", "ο": "o", "ι": "i", "κ": "k", "ν": "v", "ρ": "p", "τ": "t", "υ": "u", "χ": "x",
        "β": "b", "η": "n", "μ": "u", "ω": "w", "γ": "y", "σ": "o", "ς": "c",
    }
)
"""Cyrillic, Greek and Latin-extension letters that read as ASCII ones (lower case: applied after casefold)."""

_LEET = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"}
"""Leetspeak: 'ign0re prev1ous' reads as 'ignore previous'; '1' may also stand for 'l' (tried second)."""

_APOSTROPHES = re.compile(r"['\u2018\u2019\u02bc`]")
_SPLIT = re.compile(r"(?:[^\w@$]|_)+")
_MAX_RUN_WORD = 20


class _Hidden(dict[int, int | None]):
    """str.translate table dropping combining marks and format characters, filled as characters are met
    (one unicodedata look-up per distinct character rather than per character; at most _HIDDEN_CACHE kept)."""

    def __missing__(self, code: int) -> int | None:
        ch = chr(code)
        value = None if unicodedata.combining(ch) or unicodedata.category(ch) == "Cf" else code
        if len(self) < _HIDDEN_CACHE:
            self[code] = value
        return value


_HIDDEN_CACHE = 8192
_HIDDEN = _Hidden()


def fold(text: str) -> str:
    """Accents, stray combining marks and invisible characters dropped; NFKC; casefolded; lookalikes mapped."""
    if text.isascii():  # nothing to decompose, drop or map: the same result, without the per-character work
        return text.lower()
    visible = unicodedata.normalize("NFKD", text).translate(_HIDDEN)
    return unicodedata.normalize("NFKC", visible).translate(_INVISIBLE).casefold().translate(_LOOKALIKES)


@dataclass(frozen=True)
class Lexicon:
    """The words the markers are made of: what repairs (segmentation, joins, corrections) may produce."""

    words: frozenset[str]
    correctable: frozenset[str]
    """Long words a one-letter slip is corrected to (drug names, 'instructions', ...)."""

    @cached_property
    def _near(self) -> dict[str, str]:
        """Each correctable word under itself and each one-letter deletion (a symmetric-deletion index)."""
        index: dict[str, str] = {}
        for word in sorted(self.correctable):
            for variant in (word, *_deletions(word)):
                index.setdefault(variant, word)
        return index

    @cached_property
    def _longest(self) -> int:
        return max((len(word) for word in self.words), default=1)

    @cached_property
    def _prefixes(self) -> frozenset[str]:
        return frozenset(word[:end] for word in self.words for end in range(1, len(word) + 1))

    @cached_property
    def _correctable_lengths(self) -> range:
        """Lengths a token one edit away from a correctable word can have (longer ones are never corrected)."""
        lengths = [len(word) for word in self.correctable] or [0]
        return range(min(lengths) - 1, max(lengths) + 2)

    def correct(self, token: str) -> str:
        """The lexicon word one edit away from a long unknown token, else the token."""
        if token in self.words or len(token) < 6 or len(token) not in self._correctable_lengths:
            return token
        for variant in (token, *_deletions(token)):
            word = self._near.get(variant)
            if word is not None:
                return word
        return token

    def segment(self, letters: str) -> list[str]:
        """A run of spaced-out letters ('ignoreyourrules') as words, longest lexicon match first."""
        out: list[str] = []
        i = 0
        limit = min(self._longest, _MAX_RUN_WORD)
        words, prefixes = self.words, self._prefixes
        while i < len(letters):
            # the longest lexicon word starting here: extend only while the letters still begin some word
            found = 0
            end = i + 1
            stop = min(len(letters), i + limit)
            while end <= stop and letters[i:end] in prefixes:
                if letters[i:end] in words:
                    found = end
                end += 1
            if found:
                out.append(letters[i:found])
                i = found
            else:
                out.append(letters[i])
                i += 1
        return out


def _deletions(word: str) -> Iterable[str]:
    return (word[:i] + word[i + 1:] for i in range(len(word)))


_LEET_CHAR = re.compile("[" + re.escape("".join(_LEET)) + "]")


def _decode(token: str, lexicon: Lexicon) -> str:
    """Leetspeak decoded in a token that mixes letters with digits or @/$; plain numbers stay numbers."""
    if token.isalpha():
        return token
    if not _LEET_CHAR.search(token) or not any(ch.isalpha() for ch in token):
        return token.replace("@", "").replace("$", "")
    as_i = "".join(_LEET.get(ch, ch) for ch in token)
    if as_i in lexicon.words or "1" not in token:
        return as_i
    as_l = "".join("l" if ch == "1" else _LEET.get(ch, ch) for ch in token)
    return as_l if as_l in lexicon.words else as_i


def _tokens(folded: str, lexicon: Lexicon) -> list[str]:
    """Apostrophes dropped ("I'm" -> "im"), split on anything not a letter or digit, leetspeak decoded."""
    raw = _SPLIT.split(_APOSTROPHES.sub("", folded))
    return [token for token in (_decode(t, lexicon) for t in raw) if token]


def _repair(tokens: list[str], lexicon: Lexicon) -> list[str]:
    """Runs of single letters segmented, split words joined, one-letter slips of long words corrected."""
    despaced: list[str] = []
    i = 0
    while i < len(tokens):
        j = i
        while j < len(tokens) and len(tokens[j]) == 1 and tokens[j].isalpha():
            j += 1
        if j - i >= 2:
            despaced.extend(lexicon.segment("".join(tokens[i:j])))
            i = j
        else:
            despaced.append(tokens[i])
            i += 1
    joined: list[str] = []
    words = lexicon.words
    i = 0
    while i < len(despaced):
        for width in (3, 2):
            parts = despaced[i:i + width]
            if len(parts) < width:
                continue
            word = "".join(parts)
            if len(word) < 5 or word not in words or not all(p.isalpha() for p in parts):  # cheapest test first
                continue
            unknown = [p for p in parts if p not in words]
            if unknown if width == 2 else len(word) >= 8:
                joined.append(word)
                i += width
                break
        else:
            joined.append(lexicon.correct(despaced[i]))
            i += 1
    return joined


def canonical_forms(text: str, lexicon: Lexicon) -> tuple[str, ...]:
    """Lower-case words separated by single spaces ("I'm" -> "im", "IGNORE.previous" -> "ignore previous"),
    plus, when it differs, the repaired form: a marker counts if either form matches."""
    return canonical_forms_of_folded(fold(text), lexicon)


def canonical_forms_of_folded(folded: str, lexicon: Lexicon) -> tuple[str, ...]:
    """canonical_forms of text already folded (a caller that needs the folded text too folds it once)."""
    tokens = _tokens(folded, lexicon)
    plain = " ".join(tokens)
    repaired = " ".join(_repair(tokens, lexicon))
    return (plain,) if repaired == plain else (plain, repaired)
