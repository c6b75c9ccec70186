"""FHIR search parameters of the sandbox, strict like ModMed's published ones.

Unknown parameters are refused with 400 rather than ignored: a lenient server that
ignores a misspelt `famly=` returns every patient, and code that passes against it would
misidentify callers against the real tenant.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sandbox.errors import FhirError
from sandbox.store import parse_instant, patient_ids_of, reference_id

Predicate = Callable[[dict], bool]
DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}\Z")
DATE_PREFIXES = ("eq", "ge", "gt", "le", "lt")
MAX_COUNT = 50
PAGING_PARAMS = frozenset({"_count", "_offset"})
IGNORED_PARAMS = frozenset({"_format"})


@dataclass(frozen=True)
class SearchContext:
    zone: ZoneInfo


def _values(raw: list[str]) -> list[list[str]]:
    """Each occurrence of a parameter ANDs; commas inside one occurrence OR."""
    result = []
    for occurrence in raw:
        options = [part.strip() for part in occurrence.split(",")]
        if not occurrence.strip() or any(not part for part in options):
            raise FhirError(400, "empty search parameter value")
        result.append(options)
    return result


def _all_of(predicates: Iterable[Predicate]) -> Predicate:
    checks = list(predicates)
    return lambda resource: all(check(resource) for check in checks)


def date_bounds(value: str, zone: ZoneInfo, day_granularity: bool = False) -> tuple[str, dt.datetime, dt.datetime]:
    """A FHIR date search value ('ge2026-11-23', '2026-11-23T08:00:00-05:00') as (prefix, low, high).

    Date-only values cover the whole day in the practice's time zone. With
    `day_granularity` (ModMed's `_lastUpdated`) a date-time is truncated to its UTC day, so
    successive polls overlap and the client must de-duplicate.
    """
    if value[:2].isalpha() and value[:2] not in DATE_PREFIXES:
        raise FhirError(400, "unsupported date prefix; use eq, ge, gt, le or lt")
    prefix = value[:2] if value[:2] in DATE_PREFIXES else "eq"
    text = value[2:] if value[:2] in DATE_PREFIXES else value
    if day_granularity:
        zone = ZoneInfo("UTC")
    try:
        if DATE_ONLY.match(text):
            low = dt.datetime.combine(dt.date.fromisoformat(text), dt.time(), tzinfo=zone)
            return prefix, low, low + dt.timedelta(days=1)
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise FhirError(400, "malformed date search value; use yyyy-MM-dd or an ISO-8601 date-time") from error
    if moment.tzinfo is None:
        raise FhirError(400, "date-time search values need a time zone offset")
    if day_granularity:
        low = dt.datetime.combine(moment.astimezone(zone).date(), dt.time(), tzinfo=zone)
        return prefix, low, low + dt.timedelta(days=1)
    return prefix, moment, moment + dt.timedelta(microseconds=1)


def date_range(value: str, zone: ZoneInfo, day_granularity: bool = False) -> Callable[[dt.datetime], bool]:
    """The test a date search value applies to an instant."""
    prefix, low, high = date_bounds(value, zone, day_granularity)
    tests: dict[str, Callable[[dt.datetime], bool]] = {
        "eq": lambda m: low <= m < high,
        "ge": lambda m: m >= low,
        "gt": lambda m: m >= high,
        "le": lambda m: m < high,
        "lt": lambda m: m < low,
    }
    return tests[prefix]


def _codings(element: object) -> list[dict]:
    if isinstance(element, list):
        return [coding for item in element for coding in _codings(item)]
    if isinstance(element, dict):
        return list(element.get("coding") or [])
    return []


def token_matches(codings: list[dict], token: str) -> bool:
    if "|" in token:
        system, code = token.split("|", 1)
        return any(c.get("code") == code and (not system or c.get("system") == system) for c in codings)
    return any(c.get("code") == token for c in codings)


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


# --- parameter builders: (values, context) -> predicate -------------------------------------

def by_id(values: list[list[str]], _: SearchContext) -> Predicate:
    return _all_of((lambda r, opts=opts: r.get("id") in opts) for opts in values)


def by_reference(field: str, *target_types: str) -> Callable[[list[list[str]], SearchContext], Predicate]:
    """Reference parameters accept 'Type/id' or a bare id (matched against every allowed type)."""
    def build(values: list[list[str]], _: SearchContext) -> Predicate:
        def refs_of(resource: dict) -> set[str]:
            if field == "participant":
                nodes = [p.get("actor") for p in resource.get("participant") or []]
            else:
                node = resource.get(field)
                nodes = node if isinstance(node, list) else [node]
            found = set()
            for node in nodes:
                reference = node.get("reference") if isinstance(node, dict) else None
                for target in target_types:
                    if rid := reference_id(reference, target):
                        found.add(f"{target}/{rid}")
            return found

        def wanted(options: list[str]) -> set[str]:
            result: set[str] = set()
            for option in options:
                typed = [f"{t}/{rid}" for t in target_types if (rid := reference_id(option, t))]
                result.update(typed or [f"{t}/{option}" for t in target_types])
            return result

        return _all_of((lambda r, w=wanted(opts): bool(refs_of(r) & w)) for opts in values)

    return build


def by_patient(values: list[list[str]], _: SearchContext) -> Predicate:
    wanted_sets = [{reference_id(o, "Patient") or o for o in opts} for opts in values]
    return lambda r: all(set(patient_ids_of(r)) & wanted for wanted in wanted_sets)


def by_token(path: str) -> Callable[[list[list[str]], SearchContext], Predicate]:
    def build(values: list[list[str]], _: SearchContext) -> Predicate:
        return _all_of(
            (lambda r, opts=opts: any(token_matches(_codings(r.get(path)), o) for o in opts)) for opts in values
        )

    return build


def by_plain(path: str) -> Callable[[list[list[str]], SearchContext], Predicate]:
    """A code-valued element (status, gender, intent): exact match on any option."""
    def build(values: list[list[str]], _: SearchContext) -> Predicate:
        return _all_of((lambda r, opts=opts: str(r.get(path)) in opts) for opts in values)

    return build


def by_boolean(path: str) -> Callable[[list[list[str]], SearchContext], Predicate]:
    def build(values: list[list[str]], _: SearchContext) -> Predicate:
        for opts in values:
            if any(o not in ("true", "false") for o in opts):
                raise FhirError(400, f"{path} takes true or false")
        return _all_of((lambda r, opts=opts: str(r.get(path, True)).lower() in opts) for opts in values)

    return build


def by_date(path: str, day_granularity: bool = False) -> Callable[[list[list[str]], SearchContext], Predicate]:
    def build(values: list[list[str]], context: SearchContext) -> Predicate:
        tests = [date_range(opts[0], context.zone, day_granularity) for opts in values]

        def moment_of(resource: dict) -> dt.datetime | None:
            node: object = resource
            for key in path.split("."):
                node = node.get(key) if isinstance(node, dict) else None
            if not isinstance(node, str):
                return None
            if DATE_ONLY.match(node):
                return dt.datetime.combine(dt.date.fromisoformat(node), dt.time(), tzinfo=context.zone)
            return parse_instant(node)

        def check(resource: dict) -> bool:
            moment = moment_of(resource)
            return moment is not None and all(test(moment) for test in tests)

        return check

    return build


def by_identifier(values: list[list[str]], _: SearchContext) -> Predicate:
    def matches(resource: dict, option: str) -> bool:
        system, _, value = option.rpartition("|") if "|" in option else ("", "", option)
        return any(
            i.get("value") == value and (not system or i.get("system") == system) for i in resource.get("identifier") or []
        )

    return _all_of((lambda r, opts=opts: any(matches(r, o) for o in opts)) for opts in values)


def _names(resource: dict) -> list[dict]:
    return list(resource.get("name") or [])


def by_family(exact: bool) -> Callable[[list[list[str]], SearchContext], Predicate]:
    """ModMed proprietary: family is an exact (case-insensitive) match; certified: a prefix."""
    def build(values: list[list[str]], _: SearchContext) -> Predicate:
        def matches(resource: dict, option: str) -> bool:
            wanted = option.casefold()
            for name in _names(resource):
                family = str(name.get("family", "")).casefold()
                if family == wanted or (not exact and family.startswith(wanted)):
                    return True
            return False

        return _all_of((lambda r, opts=opts: any(matches(r, o) for o in opts)) for opts in values)

    return build


def by_given(values: list[list[str]], _: SearchContext) -> Predicate:
    """Partial given-name match: any given name (first or middle) starting with the value."""
    def matches(resource: dict, option: str) -> bool:
        wanted = option.casefold()
        return any(str(g).casefold().startswith(wanted) for n in _names(resource) for g in n.get("given") or [])

    return _all_of((lambda r, opts=opts: any(matches(r, o) for o in opts)) for opts in values)


def by_name(values: list[list[str]], _: SearchContext) -> Predicate:
    def matches(resource: dict, option: str) -> bool:
        wanted = option.casefold()
        for name in _names(resource):
            parts = [name.get("family", ""), *(name.get("given") or []), name.get("text", "")]
            if any(str(p).casefold().startswith(wanted) for p in parts if p):
                return True
        return False

    return _all_of((lambda r, opts=opts: any(matches(r, o) for o in opts)) for opts in values)


def by_birthdate(values: list[list[str]], _: SearchContext) -> Predicate:
    for opts in values:
        for option in opts:
            if not DATE_ONLY.match(option):
                raise FhirError(400, "birthdate must be yyyy-MM-dd")
            try:
                dt.date.fromisoformat(option)
            except ValueError as error:
                raise FhirError(400, "birthdate is not a calendar date") from error
    return _all_of((lambda r, opts=opts: r.get("birthDate") in opts) for opts in values)


def by_phone(values: list[list[str]], _: SearchContext) -> Predicate:
    """Phone numbers compare on their last ten digits, so '+13125550142' finds '(312) 555-0142'."""
    def key(text: str) -> str:
        return _digits(text)[-10:]

    for opts in values:
        if any(len(_digits(o)) < 7 for o in opts):
            raise FhirError(400, "phone needs at least seven digits")

    def matches(resource: dict, option: str) -> bool:
        wanted = key(option)
        return any(
            t.get("system") == "phone" and key(str(t.get("value", ""))) == wanted for t in resource.get("telecom") or []
        )

    return _all_of((lambda r, opts=opts: any(matches(r, o) for o in opts)) for opts in values)


def by_text_contains(path: str) -> Callable[[list[list[str]], SearchContext], Predicate]:
    def build(values: list[list[str]], _: SearchContext) -> Predicate:
        return _all_of(
            (lambda r, opts=opts: any(o.casefold() in str(r.get(path, "")).casefold() for o in opts)) for opts in values
        )

    return build


Builder = Callable[[list[list[str]], SearchContext], Predicate]
LAST_UPDATED: Builder = by_date("meta.lastUpdated", day_granularity=True)

PROPRIETARY_SEARCH: dict[str, dict[str, Builder]] = {
    "Patient": {
        "_id": by_id, "_lastUpdated": LAST_UPDATED, "family": by_family(exact=True), "given": by_given,
        "birthdate": by_birthdate, "phone": by_phone, "identifier": by_identifier,
    },
    "Practitioner": {
        "_id": by_id, "_lastUpdated": LAST_UPDATED, "identifier": by_identifier, "family": by_family(exact=True),
        "given": by_given, "name": by_name, "active": by_boolean("active"),
    },
    "Location": {
        "_id": by_id, "_lastUpdated": LAST_UPDATED, "name": by_text_contains("name"), "type": by_token("type"),
        "partof": by_reference("partOf", "Location"), "status": by_plain("status"), "identifier": by_identifier,
    },
    "Organization": {"_id": by_id, "name": by_text_contains("name"), "identifier": by_identifier},
    "Schedule": {
        "_id": by_id, "_lastUpdated": LAST_UPDATED, "actor": by_reference("actor", "Practitioner", "Location"),
        "service-type": by_token("serviceType"), "active": by_boolean("active"),
    },
    "Appointment": {
        "_id": by_id, "_lastUpdated": LAST_UPDATED, "patient": by_patient,
        "practitioner": by_reference("participant", "Practitioner"), "location": by_reference("participant", "Location"),
        "date": by_date("start"), "status": by_plain("status"), "appointment-type": by_token("appointmentType"),
    },
    "DocumentReference": {
        "_id": by_id, "_lastUpdated": LAST_UPDATED, "patient": by_patient, "status": by_plain("status"),
        "type": by_token("type"), "category": by_token("category"),
    },
    "Flag": {"_id": by_id, "_lastUpdated": LAST_UPDATED, "patient": by_patient, "code": by_token("code"), "status": by_plain("status")},
    "Observation": {
        "_id": by_id, "_lastUpdated": LAST_UPDATED, "patient": by_patient, "code": by_token("code"),
        "category": by_token("category"), "date": by_date("effectiveDateTime"), "status": by_plain("status"),
    },
    "Task": {
        "_id": by_id, "_lastUpdated": LAST_UPDATED, "patient": by_patient, "status": by_plain("status"),
        "code": by_token("code"), "owner": by_reference("owner", "Practitioner"), "identifier": by_identifier,
    },
    "Coverage": {"_id": by_id, "patient": by_patient, "beneficiary": by_patient, "status": by_plain("status"),
                 "identifier": by_identifier},
    "ChargeItem": {"_id": by_id, "patient": by_patient, "identifier": by_identifier},
    "MedicationRequest": {
        "_id": by_id, "_lastUpdated": LAST_UPDATED, "patient": by_patient, "status": by_plain("status"),
        "intent": by_plain("intent"), "authoredon": by_date("authoredOn"),
    },
    "MedicationStatement": {"_id": by_id, "patient": by_patient, "status": by_plain("status")},
}

CERTIFIED_SEARCH: dict[str, dict[str, Builder]] = {
    "Patient": {
        "_id": by_id, "family": by_family(exact=False), "given": by_given, "name": by_name, "birthdate": by_birthdate,
        "identifier": by_identifier, "phone": by_phone, "gender": by_plain("gender"), "active": by_boolean("active"),
    },
    "Practitioner": PROPRIETARY_SEARCH["Practitioner"] | {"family": by_family(exact=False)},
    "Location": PROPRIETARY_SEARCH["Location"],
    "Organization": PROPRIETARY_SEARCH["Organization"],
    "Observation": PROPRIETARY_SEARCH["Observation"],
    "DocumentReference": PROPRIETARY_SEARCH["DocumentReference"],
    "MedicationRequest": PROPRIETARY_SEARCH["MedicationRequest"],
}


def parse_paging(params: dict[str, list[str]]) -> tuple[int, int]:
    """`_count` (1..50, ModMed's Patient maximum, applied to every paged search) and `_offset`."""
    count, offset = MAX_COUNT, 0
    if "_count" in params:
        raw = params["_count"]
        if len(raw) != 1 or not raw[0].isdigit() or not 1 <= int(raw[0]) <= MAX_COUNT:
            raise FhirError(400, f"_count must be an integer from 1 to {MAX_COUNT}")
        count = int(raw[0])
    if "_offset" in params:
        raw = params["_offset"]
        if len(raw) != 1 or not raw[0].isdigit() or int(raw[0]) > 10_000_000:
            raise FhirError(400, "_offset must be a non-negative integer")
        offset = int(raw[0])
    return count, offset


def compile_search(
    spec: dict[str, Builder], resource_type: str, params: dict[str, list[str]], context: SearchContext
) -> Predicate:
    """Turn the query into one predicate, refusing parameters the tenant does not support."""
    checks = []
    for name, raw in params.items():
        if name in PAGING_PARAMS or name in IGNORED_PARAMS:
            continue
        base = name.split(":", 1)[0]
        if ":" in name or base not in spec:
            supported = ", ".join(sorted(spec))
            raise FhirError(400, f"unsupported search parameter for {resource_type}; supported: {supported}")
        checks.append(spec[base](_values(raw), context))
    return _all_of(checks)
