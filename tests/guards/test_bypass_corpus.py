"""The bypass detector as a measured component: thresholds on the held-out corpus part it is not tuned on."""

from __future__ import annotations

from tests.guards.bypass_eval import LABELS, evaluate, load


def test_the_corpus_has_at_least_300_utterances_of_every_category_and_benign_look_alikes() -> None:
    rows = load("dev") + load("heldout")
    assert len(rows) >= 300
    assert len({row.text for row in rows}) == len(rows), "an utterance appears twice"
    for signal in LABELS.values():
        assert sum(signal in row.expected for row in rows) >= 10, signal
    assert sum(not row.expected for row in rows) >= 100


def test_held_out_recall_is_at_least_95_percent_and_false_positives_at_most_2_percent() -> None:
    figures = evaluate(load("heldout"))
    assert figures.recall >= 0.95, figures.misses
    assert figures.false_positive_rate <= 0.02, figures.false_alarms


def test_held_out_recall_per_category_is_at_least_90_percent() -> None:
    figures = evaluate(load("heldout"))
    for name, (found, labelled) in figures.per_category.items():
        assert found >= 0.9 * labelled, (name, figures.misses)
