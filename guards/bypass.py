"""What a transcript snippet tries to do: bypass markers and medication words in hostile caller text.

Matching runs on canonical tokens (guards/text.py: NFKC, lookalikes, leetspeak, de-spacing, split
words and one-letter slips repaired), and the markers are concepts near each other within a window of
words ("send" ... "CVS", "doctor" ... "already" ... "approved"), not fixed phrases. Findings only ever
make a decision stricter: a bypass attempt is recorded (Decision.bypass_signals) and never obeyed, and
a controlled substance or refill named in the text escalates even when the voice agent missed it.
How well this finds attempts, and leaves ordinary callers alone, is measured on the labelled corpus in
tests/guards/bypass_corpus/ (`python -m tests.guards.bypass_eval`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from guards.model import BypassSignal
from guards.text import Lexicon, canonical_forms_of_folded, fold


def _words(*groups: str) -> tuple[str, ...]:
    return tuple(word for group in groups for word in group.split())


def _alt(words: tuple[str, ...]) -> str:
    """One alternation of words or phrases, for use inside a pattern, compiled as a trie ("oxy(?:codone|contin)?"
    rather than "oxycodone|oxycontin|oxy"): it matches exactly the same strings (longer ones tried first), but
    the regex engine leaves a position at its first mismatched letter instead of trying every word in turn."""
    trie: dict[str, dict] = {}
    for word in set(words):
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}
    return _trie_pattern(trie)


def _trie_pattern(node: dict[str, dict]) -> str:
    ends = "" in node
    branches = [re.escape(ch) + _trie_pattern(child) for ch, child in sorted(node.items()) if ch]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    return f"(?:{body})?" if ends else body


def _near(first: str, second: str, within: int) -> str:
    """`first`, then `second` at most `within` words later."""
    return rf"\b{first}(?: \S+){{0,{within}}} {second}\b"


def _any_of(*patterns: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{pattern})" for pattern in patterns))


# --- Concepts: the words callers use, as canonical tokens. ---

CONTROLLED_NAMES = _words(
    "oxycodone oxycontin oxy oxys percocet percocets perc percs roxicodone roxy roxys endocet xtampza",
    "hydrocodone norco vicodin lortab lorcet zohydro hysingla hydromorphone dilaudid exalgo morphine kadian",
    "fentanyl duragesic methadone dolophine buprenorphine suboxone subutex zubsolv butrans belbuca sublocade",
    "tramadol ultram tapentadol nucynta oxymorphone opana codeine meperidine demerol levorphanol",
    "carisoprodol soma alprazolam xanax clonazepam klonopin diazepam valium lorazepam ativan",
    "pregabalin lyrica gabapentin neurontin zolpidem ambien adderall amphetamine methylphenidate ritalin ketamine",
)
"""Controlled substances (and what gabapentinoids and muscle relaxants are called) by name."""
CONTROLLED_CLASSES = _words("opioid opioids opiate opiates narcotic narcotics")
CLINICIAN = _words("doctor dr doc physician provider nurse np pa pharmacist surgeon md rn prescriber practitioner")
ROLE = CLINICIAN + _words("staff receptionist manager administrator admin supervisor coordinator assistant")
RX_OBJECT = CONTROLLED_NAMES + _words(
    "refill refills prescription prescriptions script scripts rx medication medications meds med",
    "dose dosage doses tablets tablet pills pill capsules mg milligrams supply",
)
UNITS = _words("tablets tablet pills pill capsules caps mg milligrams tabs doses")
PHARMACY = _words(
    "pharmacy pharmacies cvs walgreens walgreen riteaid walmart kroger costco publix heb safeway wegmans",
    "meijer albertsons optum",
) + ("rite aid", "duane reade", "express scripts", "mail order")
OVERRIDE_VERB = _words(
    "ignore ignoring disregard disregarding forget bypass override overriding skip circumvent suspend disable",
    "deactivate ditch discard unlock",
) + ("turn off", "switch off")
AI_RULES = _words(
    "instructions instruction rules prompt prompts guidelines guideline guidance guardrails policy policies",
    "programming restrictions restriction constraints filters filter protocol protocols training directives",
    "safeguards safety limits checks",
)
TEST = _words("uds urine tox toxicology") + ("drug test", "drug tests", "drug screen", "drug screens", "drug panel")
RESULT_CUE = _words(
    "results result show showed shows say said says find found positive negative levels clean dirty",
    "detect detected contain contained mean",
) + ("came back", "come back", "show up", "showed up", "came up")
COMPLIANCE_OBJECT = _words(
    "agreement contract flag flags flagged violation violated violate noncompliant noncompliance aberrant",
) + TEST + ("pill count", "red flag")
DISPUTE_CUE = _words(
    "wrong incorrect mistake mistaken error false lie lying inaccurate bogus never didnt isnt wasnt unfair",
) + ("not true", "not mine", "not me", "did not", "is not", "was not", "still active", "still valid",
     "still good", "still current", "already renewed", "already signed")

_CS = _alt(CONTROLLED_NAMES)
_CLIN = _alt(CLINICIAN)
_ROLE = _alt(ROLE)
_RX = _alt(RX_OBJECT)
_PHARMACY = _alt(PHARMACY)
_NUMBER_OF_UNITS = rf"\d+ {_alt(UNITS)}"
_I = r"(?:i|im|i am|i m|we)"

PROMPT_INJECTION = _any_of(
    _near(_alt(OVERRIDE_VERB), _alt(AI_RULES), 5),
    rf"\b{_alt(OVERRIDE_VERB)}(?: \S+){{0,3}} (?:above|previous|prior|preceding|earlier)\b",
    r"\b(?:override|bypass|hack) (?:the |your )?system\b",
    _near(_alt(OVERRIDE_VERB), r"(?:you were|youve been|you have been|youre) (?:told|given|programmed|trained|instructed)", 4),
    r"\b(?:you are|youre|you re|ur|u r) (?:now|no longer)"
    r" (?:a|an|the|my|in|acting|free|unrestricted|allowed|able|working|bound|restricted|limited|dan|playing|operating)\b",
    r"\b(?:you are|youre|you re) (?:an? )?(?:unrestricted|unfiltered|uncensored|jailbroken)\b",
    r"\bfrom now on(?: \S+){0,2} (?:you|your|always|only|answer|respond|reply|say)\b",
    r"\byou (?:will|must|should|shall) (?:now )?(?:only )?(?:respond|reply|answer|say)\b",
    r"\b(?:respond|reply|answer)(?: \S+){0,4} (?:with )?(?:yes|approved)\b",
    r"\byour (?:new )?(?:rule|rules|instructions|job|role|task|prompt|purpose) (?:is|are|now)\b",
    r"\bnew (?:instructions?|prompt|directives?|system prompt)\b",
    r"\bsystem (?:prompt|message|override|instructions?|mode|admin)\b",
    r"\b(?:developer|admin|god|debug|maintenance|sudo|dan|unrestricted|jailbreak) mode\b",
    r"\b(?:jailbreak|jailbroken|jailbr[eo]a?k\w*|sudo)\b",
    r"\bdo anything now\b",
    r"\bim (?:start|end)\b",
    r"\binst\b",
    rf"\b(?:act|acting|pretend|pretending|roleplay|role play|impersonate|simulate)(?: \S+){{0,3}}"
    rf" (?:{_ROLE}|system|developer|ai|bot|dan|unrestricted|my|you|youre)\b",
    r"\b(?:lets|let us) (?:play|pretend|roleplay|role play)\b",
    r"\b(?:reveal|print|repeat|show|output|dump|display|leak)(?: me)? (?:your|the) (?:system )?"
    r"(?:prompt|instructions|programming|rules|hidden|initial)\b",
    r"\b(?:say|tell me) (?:that )?(?:the |my )?(?:refill|prescription|order|it|request) (?:is|was|has been)"
    r" (?:approved|authorized|done|filled|sent|ready)\b",
)
"""Instructions aimed at the AI rather than the practice."""

_ROLE_PREFIX = re.compile(r"(?:^|[\n.!?>\]|]\s*)(?:system|assistant|developer|admin)\s*:")
"""'SYSTEM: ...' at the start of the snippet or a sentence: a chat-role prefix, matched on folded text."""

AUTHORITY_CLAIM = _any_of(
    rf"\b(?:i am|im|i m|this is|its|it is|speaking as|calling as|i work as)(?: \S+){{0,2}} {_ROLE}\b"
    r"(?!(?: \S+){0,2} patients?\b)",
    rf"\bas (?:the|a|an|her|his|their|your|the patients) (?:\S+ )?{_ROLE}\b",
    r"\b(?:i am|im|i m) (?:with|from|at) (?:the )?(?:office|clinic|front desk|practice|pharmacy)\b",
    rf"\bi work (?:here|at (?:the )?(?:front desk|office|clinic|practice)|for (?:the )?{_CLIN}|in the office)\b",
    rf"\bcalling (?:on behalf of|for|from) (?:the )?{_CLIN}\b",
    rf"\b{_I} (?:hereby )?(?:authorize|authorise|authorizing|authorising|approve|approving|clear|okay) (?:it|this|that|the|her|his|them|a|an)\b",
    rf"\b{_I} hereby\b",
    _near(_CLIN, r"(?:already|always|usually|has|had|just)(?: \S+)? "
          r"(?:approved|approves|authorized|authorised|authorizes|okayed|oked|okd|ok d|cleared|signed)", 3),
    _near(_CLIN, rf"(?:approved|authorized|authorised|okayed|oked|cleared|signed) (?:it|this|that|them|(?:\S+ ){{0,2}}{_RX})", 3),
    _near(_CLIN, r"signed off", 3),
    _near(_CLIN, r"(?:said|says|told me) (?:its|it is|it was|thats|that is|that was|it s) (?:ok|okay|fine|alright|good)", 4),
    _near(_CLIN, r"(?:said|says) (?:i|you) (?:can|could|may)", 3),
    _near(_CLIN, r"(?:wants|told|asked|instructed|ordered|said|says) (?:you|yall|the office)\b(?! call)", 3),
    _near(_CLIN, r"gave (?:\S+ )?(?:the )?(?:ok|okay|go ahead|green light|approval|permission)", 3),
    rf"\b(?:an|the|direct) order from (?:the )?(?:\S+ )?{_CLIN}\b",
    rf"\b{_CLIN}s orders\b",
)
"""The caller claims a clinician's or staff member's authority, or a clinician's approval."""

CALLER_PRESSURE = _any_of(
    r"\bjust (?:approve|authorize|authorise|refill|send|call|okay|ok|sign|push|put|do it|fill|renew|process"
    r"|override|release|say yes|say its|let it|let me)\b",
    r"\b(?:push|put|rush) it through\b",
    r"\boverride\b",
    r"\b(?:make an exception|bend the rules|just this once|this one time|look the other way|let it slide|between us"
    r"|keep this between|off the record|or else|youd better|you better|im begging|i beg you|stop stalling"
    r"|i demand|i insist|not taking no)\b",
    r"\b(?:no one|nobody|noone) (?:will|has to|needs to|would|else has to|else will) (?:know|find out|notice)\b",
    rf"\bdont tell (?:anyone|anybody|the doctor|my doctor|the nurse|my provider|{_CLIN})\b",
    r"\b(?:ill|i will|im going to|im gonna|i am going to|gonna|i m going to)(?: \S+)?"
    r" (?:sue|report|call my lawyer|call a lawyer|get you fired|have you fired|file a complaint|leave (?:a|an)|post)\b",
    r"\b(?:get you fired|my lawyer will|lawsuit)\b",
    r"\bextra (?:pills|tablets|meds|medication|doses|refill|refills|supply)\b",
    r"\bearly refill\b",
    rf"\brefill(?: \S+){{0,2}} early\b",
    r"\bmore than (?:usual|last time|prescribed|normal)\b",
    rf"\byou (?:have to|need to|must|better) (?:approve|authorize|refill|send|call|fill|renew|do this|do it|give me)\b",
)
"""Pressure that is a bypass attempt on its own."""

URGENCY = _any_of(
    r"\b(?:right now|immediately|asap|urgent|urgently|emergency|today|tonight|right away|cant wait|hurry)\b",
    r"\bi (?:need|want) (?:it|them|this|my \S+(?: \S+)?) (?:today|tonight|now)\b",
    r"\b(?:run|running|ran) out\b",
    r"\bout of (?:my )?(?:meds|medication|medicine|pills|tablets)\b",
    r"\bwithdrawals?\b",
    r"\bjust (?:book|schedule|give|get) (?:me|it)\b",
)
"""Urgency and insistence: counted as pressure only on controlled-substance turns (a controlled request
or the medication-management visit), where they push for what only a provider decides."""

MEDICATION_WRITE = _any_of(
    _near(r"(?<!i )(?<!ill )(?:send|fax|call|phone|transmit|submit|eprescribe|escribe|forward|put|transfer|route|move)",
          _PHARMACY, 8),
    rf"\b(?:get|have) (?:\S+ ){{0,3}}(?:sent|called in|faxed|transferred)(?: \S+){{0,3}} {_PHARMACY}\b",
    rf"\b{_CS}(?: \S+){{0,2}} (?:to|at|into) (?:the )?{_PHARMACY}\b",
    _near(r"(?:approve|authorize|authorise|process|submit|place|renew|fill(?! out)|reorder|issue|release"
          r"|dispense|write|prescribe|increase|raise|bump|double|triple|adjust|change|switch|add|remove|update|edit"
          r"|delete|lower|reduce|put in|(?:okay|ok)(?! (?:to|if|for (?:me|him|her|them) to)\b))",
          rf"(?:{_RX}|{_NUMBER_OF_UNITS})", 4),
    rf"\b{_RX} (?:\S+ )?(?:approved|authorized|authorised|processed|renewed|filled|sent|called in|faxed)\b",
    r"\bcall (?:it|them|this|that) in\b",
    r"\bcall in (?:my|the|a|his|her|some|more)\b",
    r"\b(?:eprescribe|escribe|represcribe|prescribe (?:me|it|them|more|some|something))\b",
    r"\bwrite (?:me |him |her )?(?:a |the |my |another |up a )?(?:new )?(?:script|prescription|rx)\b",
    rf"\b(?:i want|i need|give me|get me|can i get|can i have|send me)(?: \S+){{0,2}} {_NUMBER_OF_UNITS}\b",
    r"\b(?:add|update|change|remove|edit|delete|take)\b(?: \S+){0,4} (?:medication|med|meds) list\b",
)
"""Requests only a prescription or medication-list write could fulfil: there is no such command."""

PROTECTED_CONTENT = _any_of(
    r"\b(?:my|me|about me|on me|mine)(?: \S+){0,2} (?:pdmp|pmp|narxcare|narx|prescription monitoring"
    r"|prescription drug monitoring|state database|risk score)\b",
    r"\b(?:pdmp|pmp|narxcare|narx|monitoring program|monitoring report|state database)(?: \S+){0,3}"
    r" (?:say|says|said|show|shows|showed|have|has|list|lists|report|score|history)\b",
    r"\bcontrolled substance (?:database|report|registry|history)\b",
    _near(_alt(TEST), _alt(RESULT_CUE), 6),
    _near(r"(?:results?|report|showed up|show up|came up|found|find|detected)", _alt(TEST), 4),
    rf"\b(?:did|have|do) i (?:pass|fail|passed|failed)(?: \S+){{0,3}} {_alt(TEST)}\b",
    rf"\bwhat (?:did|does|do|was in|is in) (?:my|the) {_alt(TEST)}\b",
    r"\b(?:which|what|who) (?:other )?(?:doctors|providers|prescribers|pharmacies|pharmacy|doctor)\b(?: \S+){0,6}"
    r" (?:prescribed|filled|prescribing|filling|prescribes|fills)\b",
)
"""Asks for PDMP content or UDS results: these never leave ModMed and are never read by callstream."""

CHART_DISPUTE = _any_of(
    _near(_alt(DISPUTE_CUE), _alt(COMPLIANCE_OBJECT), 6),
    _near(_alt(COMPLIANCE_OBJECT), _alt(DISPUTE_CUE), 6),
    _near(r"(?:remove|delete|erase|clear|fix|correct|take off|get rid of|undo)", _alt(COMPLIANCE_OBJECT), 5),
    r"\btake (?:that|the|this|my) (?:\S+ )?(?:flag|violation|note) off\b",
    r"\bfalse positive\b",
    r"\bmy chart is (?:wrong|incorrect|outdated|a mistake)\b",
)
"""The caller disputes a compliance flag (agreement, UDS, violation) to get around it: flags still route."""

CONTROLLED_SUBSTANCE = _any_of(
    rf"\b{_CS}\b",
    rf"\b{_alt(CONTROLLED_CLASSES)}\b",
    r"\bcontrolled (?:substances?|medications?)\b",
    r"\bpain (?:pills?|meds|medications?|medicine|killers?)\b",
    r"\bpainkillers?\b",
)
"""Controlled substances and the words callers use for them; matching one makes the turn a controlled-substance request."""

REFILL = _any_of(
    r"\bre ?fill",
    r"\b(?:more|new) (?:pills|meds|medication|medicine|script|prescription)\b",
    r"\brenew (?:my|the) (?:prescription|script|rx|medication|meds)\b",
)
"""A refill asked for in words, whatever intent the voice agent recognised."""

_EXTRA_WORDS = _words(
    "i a an the my me your you it is are am im was to of in on at for and or with this that these those",
    "all any every previous prior above earlier before now no longer from just say yes please can could",
    "would will do did not dont tell anyone anybody nobody know early extra more new renew order orders",
    "approve approved approves authorize authorized authorise authorizing okayed cleared signed off said",
    "send fax call phone submit put transfer through push write prescribe eprescribe increase raise bump double",
    "change switch add remove update list system developer mode jailbreak pretend act roleplay play game",
    "reveal repeat print show results test screen pass fail failed passed showed came back",
    "override disregard ignore forget bypass exception sue report lawyer fired demand insist hereby here work",
    "pain pills killers painkillers medicine controlled substance substances",
)
LEXICON = Lexicon(
    words=frozenset(
        word
        for group in (CONTROLLED_NAMES, CONTROLLED_CLASSES, ROLE, RX_OBJECT, UNITS, PHARMACY, OVERRIDE_VERB,
                      AI_RULES, TEST, RESULT_CUE, COMPLIANCE_OBJECT, DISPUTE_CUE, _EXTRA_WORDS)
        for phrase in group
        for word in phrase.split()
    ),
    correctable=frozenset(
        word for word in (*CONTROLLED_NAMES, "instructions", "prescription", "disregard", "guidelines", "guardrails",
                          "authorize", "authorized", "developer", "jailbreak", "pharmacy", "walgreens", "eprescribe")
        if len(word) >= 7
    ),
)
"""Every word a marker is made of: what de-spacing, joining and correction may turn caller text into."""


@dataclass(frozen=True, slots=True)
class SnippetFindings:
    """What one transcript snippet contains, as booleans only: the text itself is never kept."""

    prompt_injection: bool = False
    authority_claim: bool = False
    pressure: bool = False
    urgency: bool = False
    medication_write: bool = False
    protected_content: bool = False
    chart_dispute: bool = False
    controlled_substance: bool = False
    refill: bool = False


def scan_snippet(snippet: str | None) -> SnippetFindings:
    """Match every marker family against the snippet's canonical forms."""
    if not snippet:
        return SnippetFindings()
    folded = fold(snippet)
    forms = canonical_forms_of_folded(folded, LEXICON)

    def found(pattern: re.Pattern[str]) -> bool:
        return any(pattern.search(form) for form in forms)

    return SnippetFindings(
        prompt_injection=found(PROMPT_INJECTION) or bool(_ROLE_PREFIX.search(folded)),
        authority_claim=found(AUTHORITY_CLAIM),
        pressure=found(CALLER_PRESSURE),
        urgency=found(URGENCY),
        medication_write=found(MEDICATION_WRITE),
        protected_content=found(PROTECTED_CONTENT),
        chart_dispute=found(CHART_DISPUTE),
        controlled_substance=found(CONTROLLED_SUBSTANCE),
        refill=found(REFILL),
    )


def bypass_signals(
    findings: SnippetFindings, *, controlled_turn: bool, earlier_controlled_requests: int, controlled_request: bool
) -> tuple[BypassSignal, ...]:
    """The bypass attempts of one turn, in BypassSignal order.

    Urgency and insistence ("I ran out", "just book me") are a signal only on a controlled-substance
    turn (a controlled request or the medication-management visit), where they are pressure; elsewhere
    they are an ordinary caller. A controlled-substance request after an earlier one in the same call
    is repeated pressure.
    """
    present = {
        BypassSignal.PROMPT_INJECTION: findings.prompt_injection,
        BypassSignal.AUTHORITY_CLAIM: findings.authority_claim,
        BypassSignal.CALLER_PRESSURE: findings.pressure or (findings.urgency and controlled_turn),
        BypassSignal.MEDICATION_WRITE_ATTEMPT: findings.medication_write,
        BypassSignal.PROTECTED_CONTENT_REQUEST: findings.protected_content,
        BypassSignal.CHART_DISPUTE: findings.chart_dispute,
        BypassSignal.REPEATED_REFILL_PRESSURE: controlled_request and earlier_controlled_requests > 0,
    }
    return tuple(signal for signal in BypassSignal if present[signal])
