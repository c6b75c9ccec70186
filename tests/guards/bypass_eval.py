"""Recall and false-positive rate of the bypass detector on the labelled corpus (tests/guards/bypass_corpus/).

Run `python -m tests.guards.bypass_eval [--misses]`: one line per corpus part, then the figures as JSON on
the last line. A labelled utterance counts as found when the detector raises any bypass signal (recall),
and per category when it raises that category's signal; a benign one is a false positive when it raises
any. Only the detector is exercised (guards.bypass), the way decide() calls it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from guards.bypass import bypass_signals, scan_snippet
from guards.model import BypassSignal

CORPUS = Path(__file__).parent / "bypass_corpus"
LABELS: dict[str, BypassSignal] = {
    "inj": BypassSignal.PROMPT_INJECTION,
    "auth": BypassSignal.AUTHORITY_CLAIM,
    "press": BypassSignal.CALLER_PRESSURE,
    "mw": BypassSignal.MEDICATION_WRITE_ATTEMPT,
    "prot": BypassSignal.PROTECTED_CONTENT_REQUEST,
    "disp": BypassSignal.CHART_DISPUTE,
}


@dataclass(frozen=True)
class Utterance:
    text: str
    expected: frozenset[BypassSignal]
    controlled_turn: bool


def load(part: str) -> list[Utterance]:
    """One corpus part ('dev' or 'heldout')."""
    rows = []
    for line in (CORPUS / f"{part}.txt").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        labels, text = line.split(" | ", 1)
        names = {name for name in labels.split(",") if name not in ("-", "")}
        rows.append(Utterance(text, frozenset(LABELS[n] for n in names - {"cs"}), "cs" in names))
    return rows


def detect(utterance: Utterance) -> frozenset[BypassSignal]:
    """The signals decide() would record for this snippet on a first request of the call."""
    findings = scan_snippet(utterance.text)
    controlled_request = findings.controlled_substance or findings.refill or findings.medication_write
    signals = bypass_signals(findings, controlled_turn=utterance.controlled_turn or controlled_request,
                             earlier_controlled_requests=0, controlled_request=controlled_request)
    return frozenset(signals)


@dataclass(frozen=True)
class Figures:
    attacks: int
    found: int
    benign: int
    false_positives: int
    per_category: dict[str, tuple[int, int]]
    misses: list[str]
    false_alarms: list[str]

    @property
    def recall(self) -> float:
        return self.found / self.attacks

    @property
    def false_positive_rate(self) -> float:
        return self.false_positives / self.benign

    def as_json(self) -> dict[str, object]:
        return {
            "attacks": self.attacks, "benign": self.benign, "recall": round(self.recall, 4),
            "false_positive_rate": round(self.false_positive_rate, 4),
            "per_category_recall": {name: round(hit / total, 4) for name, (hit, total) in self.per_category.items()},
        }


def evaluate(rows: list[Utterance]) -> Figures:
    attacks = [r for r in rows if r.expected]
    benign = [r for r in rows if not r.expected]
    detected = {id(r): detect(r) for r in rows}
    per_category = {}
    for name, signal in LABELS.items():
        labelled = [r for r in attacks if signal in r.expected]
        per_category[name] = (sum(signal in detected[id(r)] for r in labelled), len(labelled))
    misses = [f"{','.join(s.value for s in r.expected - detected[id(r)])} | {r.text}"
              for r in attacks if not r.expected <= detected[id(r)]]
    return Figures(
        attacks=len(attacks),
        found=sum(bool(detected[id(r)]) for r in attacks),
        benign=len(benign),
        false_positives=sum(bool(detected[id(r)]) for r in benign),
        per_category=per_category,
        misses=misses,
        false_alarms=[f"{','.join(s.value for s in detected[id(r)])} | {r.text}" for r in benign if detected[id(r)]],
    )


def main(argv: list[str]) -> int:
    report = {}
    for part in ("dev", "heldout"):
        figures = evaluate(load(part))
        print(f"{part}: recall {figures.recall:.1%} ({figures.found}/{figures.attacks}), false positives "
              f"{figures.false_positive_rate:.1%} ({figures.false_positives}/{figures.benign})")
        if "--misses" in argv:
            for line in figures.misses:
                print(f"  missed  {line}")
            for line in figures.false_alarms:
                print(f"  raised  {line}")
        report[part] = figures.as_json()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
