"""The bypass scan's faster paths (issue 22 leftover) give the same results as the plain definitions they
replace: trie alternations, the ASCII fold, prefix-bounded segmentation, length-bounded correction."""

from __future__ import annotations

import re
import time
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from guards import bypass
from devkit.bench_guards import LIMIT_SNIPPETS
from guards.bypass import LEXICON, _alt, scan_snippet
from guards.text import _INVISIBLE, _LOOKALIKES, _deletions, fold

WORDS = tuple(sorted(LEXICON.words))


def naive_alt(words: tuple[str, ...]) -> str:
    return "(?:" + "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True)) + ")"


def naive_fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    visible = "".join(ch for ch in decomposed if not unicodedata.combining(ch) and unicodedata.category(ch) != "Cf")
    return unicodedata.normalize("NFKC", visible).translate(_INVISIBLE).casefold().translate(_LOOKALIKES)


def naive_segment(letters: str) -> list[str]:
    out, i = [], 0
    limit = min(max(len(w) for w in LEXICON.words), 20)
    while i < len(letters):
        for end in range(min(len(letters), i + limit), i, -1):
            if letters[i:end] in LEXICON.words:
                out.append(letters[i:end])
                i = end
                break
        else:
            out.append(letters[i])
            i += 1
    return out


def naive_correct(token: str) -> str:
    if token in LEXICON.words or len(token) < 6:
        return token
    near: dict[str, str] = {}
    for word in sorted(LEXICON.correctable):
        for variant in (word, *_deletions(word)):
            near.setdefault(variant, word)
    for variant in (token, *_deletions(token)):
        if variant in near:
            return near[variant]
    return token


near_words = st.sampled_from(WORDS).flatmap(
    lambda w: st.sampled_from([w, w[:-1], w[1:], w + "s", w + " " + w, w[: len(w) // 2], w + "x"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=30), near_words)
def test_a_trie_alternation_matches_exactly_what_the_word_list_did(words: list[str], probe: str) -> None:
    trie, naive = re.compile(rf"\b{_alt(tuple(words))}\b"), re.compile(rf"\b{naive_alt(tuple(words))}\b")
    assert bool(trie.fullmatch(probe)) == bool(naive.fullmatch(probe))
    assert bool(trie.search(probe)) == bool(naive.search(probe))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60) | st.text(alphabet=st.characters(max_codepoint=127), max_size=60))
def test_the_fold_is_unchanged(text: str) -> None:
    assert fold(text) == naive_fold(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(near_words | st.text(alphabet="abcdeiorstx", max_size=4), max_size=8).map("".join))
def test_segmentation_and_correction_are_unchanged(letters: str) -> None:
    letters = letters.replace(" ", "")
    assert LEXICON.segment(letters) == naive_segment(letters)
    assert LEXICON.correct(letters) == naive_correct(letters)


def test_work_per_token_is_bounded_at_the_limit() -> None:
    """A 4,000-character token used to cost a quadratic correction (tens of ms); now it is never corrected."""
    for text in ("x" * 4000, "1" * 4000, "oxycodone" * 444):
        assert LEXICON.correct(text) == text
    started = time.perf_counter()
    for text in LIMIT_SNIPPETS.values():
        scan_snippet(text)
    assert time.perf_counter() - started < 1.0, "generous: the bench measures the real figure"
    assert scan_snippet(LIMIT_SNIPPETS["hostile"]).prompt_injection
    assert scan_snippet(LIMIT_SNIPPETS["benign"]) == bypass.SnippetFindings()
