"""What a transcript snippet tries to do: bypass markers and medication words in hostile caller text.

The snippet is matched in canonical form (guards/text.py), so case, full-width letters, Cyrillic
lookalikes, leetspeak and zero-width characters do not hide a marker. Findings only ever make a
decision stricter: a bypass attempt is recorded (Decision.bypass_signals) and never obeyed, and a
controlled substance or refill named in the text escalates even when the voice agent missed it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from guards.model import BypassSignal
from guards.text import canonical_forms


def _any_of(*patterns: str) -> re.Pattern[str]:
    """One alternation of word patterns, matched against canonical text."""
    return re.compile("|".join(f"(?:{pattern})" for pattern in patterns))


_CLINICIAN = r"(?:doctor|dr|physician|provider|nurse|np|pa|pharmacist|surgeon)"

PROMPT_INJECTION = _any_of(
    r"\b(?:ignore|disregard|forget|bypass|override)(?: (?:all|any|the|your|my|these|those|of|every))*"
    r"(?: (?:previous|prior|above|earlier|preceding|existing|original|system|safety|current))?"
    r" (?:instructions?|rules?|prompts?|guidelines?|guardrails?|polic(?:y|ies)|programming|restrictions?|constraints?)\b",
    r"\byou are now (?:a|an|the|my|in|acting|free|unrestricted|allowed|able)\b",
    r"\byou are no longer (?:a|an|bound|restricted|limited)\b",
    r"\bfrom now on you\b",
    r"\bsystem (?:prompt|message|override)\b",
    r"\b(?:developer|admin|god|debug) mode\b",
    r"\bjailbr[eo]a?k",
    r"\bdo anything now\b",
    r"\bact as (?:a |an |the |my )?(?:" + _CLINICIAN + r"|admin|administrator|system|developer)\b",
    r"\bpretend (?:to be|you are|that you are|youre)\b",
    r"\bnew instructions?\b",
    r"\bim start\b",
    r"\b(?:reveal|print|repeat|show) (?:your|the) (?:instructions|prompt|rules)\b",
)
"""Instructions aimed at the AI rather than the practice."""

AUTHORITY_CLAIM = _any_of(
    r"\bas (?:the|a|your) " + _CLINICIAN + r"\b",
    r"\bi (?:am|m) (?:the|a|his|her|their|your) " + _CLINICIAN + r"\b",
    r"\bim (?:the|a|his|her|their|your) " + _CLINICIAN + r"\b",
    r"\bi (?:hereby )?authori[sz]e\b",
    r"\b" + _CLINICIAN + r" (?:\w+ )?(?:already )?(?:approved|authori[sz]ed|okayed|ok d|cleared it|signed off)\b",
    r"\b" + _CLINICIAN + r" (?:\w+ )?(?:already )?said"
    r" (?:(?:its|it is|thats|that is) (?:ok|okay|fine|alright)|(?:i|you) (?:can|could))\b",
)
"""The caller claims a clinician's authority or approval."""

CALLER_PRESSURE = _any_of(
    r"\bjust (?:approve|authori[sz]e|refill|send it|call it in|give me|put it through|do it)\b",
    r"\boverride\b",
    r"\bmake an exception\b",
    r"\bearly refill\b",
    r"\brefill (?:it |them |my \w+ )?early\b",
    r"\b(?:ill|i will|im going to|gonna) (?:sue|report you|report this|call my lawyer)\b",
    r"\bor else\b",
    r"\bno one (?:will|has to) know\b",
    r"\bdont tell (?:anyone|the doctor|my doctor)\b",
    r"\bextra (?:pills|tablets|meds|medication|doses)\b",
)
"""Pressure that is a bypass attempt on its own."""

URGENCY = _any_of(
    r"\b(?:right now|immediately|asap|urgent|urgently|emergency)\b",
    r"\bi (?:need|want) (?:it|them|this|my \w+) (?:today|tonight|now)\b",
    r"\b(?:run|running|ran) out\b",
    r"\bout of (?:my )?(?:meds|medication|medicine|pills)\b",
    r"\bwithdrawals?\b",
)
"""Urgency: counted as pressure only when the turn asks for a controlled substance."""

MEDICATION_WRITE = _any_of(
    r"\b(?:approve|authori[sz]e|process|submit|place|put in|renew|fill) (?:my|the|a|this|that|his|her|their)"
    r" (?:refill|prescription|script|rx|order|medication|meds)\b",
    r"\b(?:send|fax|call|phone|transmit|submit|e ?prescribe|put)\b(?: \w+){0,6} (?:to|into) (?:\w+ ){0,3}pharmacy\b",
    r"\bcall (?:it|them|this|that) in\b",
    r"\bcall in (?:my|the|a|his|her|some|more)\b",
    r"\b(?:e ?prescribe|re ?prescribe|prescribe me|prescribe (?:it|them|more|some))\b",
    r"\bwrite (?:me |him |her )?(?:a |the |my |another |up a )?(?:new )?(?:script|prescription|rx)\b",
    r"\b(?:increase|raise|up|double|bump|change|adjust|switch) (?:my|the|his|her)"
    r" (?:dose|dosage|medication|meds|prescription|pills)\b",
    r"\b(?:add|update|change|remove|edit)\b(?: \w+){0,4} (?:medication|med|meds) list\b",
)
"""Requests only a prescription or medication-list write could fulfil: there is no such command."""

PROTECTED_CONTENT = _any_of(
    r"\bpdmp\b",
    r"\bpmp\b",
    r"\bprescription (?:drug )?monitoring\b",
    r"\bcontrolled substance (?:database|report|registry|history)\b",
    r"\b(?:uds|urine|drug|tox|toxicology)(?: drug)? (?:screen|test|panel|screening)s?\b(?: \w+){0,6}"
    r" (?:results?|show|showed|shows|came back|say|said|says|find|found|positive|negative|levels?|report)\b",
    r"\b(?:results?|report)\b(?: \w+){0,4} (?:uds|urine|drug screen|drug test|tox screen|toxicology)\b",
    r"\bwhat (?:did|does|do) (?:my|the) (?:uds|urine|drug|tox)\b",
    r"\bdid i (?:pass|fail) (?:my|the) (?:\w+ )?(?:uds|urine|drug|tox|screen|test)\b",
    r"\b(?:what|which) (?:other )?(?:doctors|providers|prescribers|pharmacies)\b(?: \w+){0,6}"
    r" (?:prescribed|filled|prescribing|filling)\b",
)
"""Asks for PDMP content or UDS results: these never leave ModMed and are never read by callstream."""

CONTROLLED_SUBSTANCE = _any_of(
    r"\b(?:oxycodone|oxycontin|oxy|oxys|percocet|percs?|roxicodone|roxys?|endocet|xtampza)\b",
    r"\b(?:hydrocodone|norco|vicodin|lortab|lorcet|zohydro|hysingla)\b",
    r"\b(?:hydromorphone|dilaudid|exalgo|morphine|ms contin|kadian|fentanyl|duragesic|methadone|dolophine)\b",
    r"\b(?:buprenorphine|suboxone|subutex|zubsolv|butrans|belbuca|sublocade)\b",
    r"\b(?:tramadol|ultram|tapentadol|nucynta|oxymorphone|opana|codeine|meperidine|demerol|levorphanol)\b",
    r"\b(?:carisoprodol|soma|alprazolam|xanax|clonazepam|klonopin|diazepam|valium|lorazepam|ativan)\b",
    r"\b(?:pregabalin|lyrica|gabapentin|neurontin|zolpidem|ambien|adderall|amphetamine|methylphenidate|ritalin|ketamine)\b",
    r"\b(?:opioids?|opiates?|narcotics?|controlled substances?|controlled medications?)\b",
    r"\bpain (?:pills?|meds|medications?|medicine|killers?)\b",
)
"""Controlled substances and the words callers use for them; matching one makes the turn a controlled-substance request."""

REFILL = _any_of(
    r"\bre ?fill",
    r"\b(?:more|new) (?:pills|meds|medication|medicine|script|prescription)\b",
    r"\brenew (?:my|the) (?:prescription|script|rx|medication|meds)\b",
)
"""A refill asked for in words, whatever intent the voice agent recognised."""


@dataclass(frozen=True, slots=True)
class SnippetFindings:
    """What one transcript snippet contains, as booleans only: the text itself is never kept."""

    prompt_injection: bool = False
    authority_claim: bool = False
    pressure: bool = False
    urgency: bool = False
    medication_write: bool = False
    protected_content: bool = False
    controlled_substance: bool = False
    refill: bool = False


def scan_snippet(snippet: str | None) -> SnippetFindings:
    """Match every marker family against the snippet's canonical forms."""
    if not snippet:
        return SnippetFindings()
    forms = canonical_forms(snippet)

    def found(pattern: re.Pattern[str]) -> bool:
        return any(pattern.search(form) for form in forms)

    return SnippetFindings(
        prompt_injection=found(PROMPT_INJECTION),
        authority_claim=found(AUTHORITY_CLAIM),
        pressure=found(CALLER_PRESSURE),
        urgency=found(URGENCY),
        medication_write=found(MEDICATION_WRITE),
        protected_content=found(PROTECTED_CONTENT),
        controlled_substance=found(CONTROLLED_SUBSTANCE),
        refill=found(REFILL),
    )


def bypass_signals(
    findings: SnippetFindings, *, controlled_request: bool, earlier_controlled_requests: int
) -> tuple[BypassSignal, ...]:
    """The bypass attempts of one turn, in BypassSignal order.

    Urgency alone ("I ran out", "it's urgent") is a signal only on a controlled-substance turn,
    where it is pressure; elsewhere it is an ordinary caller. A controlled-substance request after
    an earlier one in the same call is repeated pressure.
    """
    present = {
        BypassSignal.PROMPT_INJECTION: findings.prompt_injection,
        BypassSignal.AUTHORITY_CLAIM: findings.authority_claim,
        BypassSignal.CALLER_PRESSURE: findings.pressure or (findings.urgency and controlled_request),
        BypassSignal.MEDICATION_WRITE_ATTEMPT: findings.medication_write,
        BypassSignal.PROTECTED_CONTENT_REQUEST: findings.protected_content,
        BypassSignal.REPEATED_REFILL_PRESSURE: controlled_request and earlier_controlled_requests > 0,
    }
    return tuple(signal for signal in BypassSignal if present[signal])
