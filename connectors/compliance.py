"""The chart's compliance context, reduced to routing flags at the connector boundary.

Only these facts ever enter callstream: agreement status and renewal date, the chronic-opioid flag
and last refill date, the aberrant-UDS flag, UDS due, the PDMP last-check time, phone-request
restrictions. PDMP content (the check's note) and UDS results are never requested or kept: the PDMP
Observation is read field by field from its JSON and everything but ``effectiveDateTime`` is dropped;
UDS Observations are never fetched at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict

from connectors.errors import InvalidResponseError
from connectors.vocabulary import COMPLIANCE_SYSTEM, EXT_AGREEMENT_STATUS, EXT_LAST_REFILL_DATE, EXT_RESTRICTION
from guards.model import AgreementStatus, ChartFlags, PhoneRestriction

_AGREEMENT_SEVERITY = {
    AgreementStatus.ACTIVE: 1,
    AgreementStatus.EXPIRED: 2,
    AgreementStatus.VIOLATED: 3,
}


class ComplianceFlags(BaseModel):
    """What the guards may know about one chart; no field can hold PDMP content or a UDS result."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    patient_id: str
    agreement_status: AgreementStatus = AgreementStatus.NONE
    agreement_renewal_due: date | None = None
    chronic_opioid: bool = False
    last_refill_date: date | None = None
    aberrant_uds: bool = False
    uds_due: bool = False
    pdmp_last_checked: AwareDatetime | None = None
    phone_restrictions: frozenset[PhoneRestriction] = frozenset()

    def to_chart_flags(self) -> ChartFlags:
        """The guards core's view of the same flags."""
        return ChartFlags(
            chronic_opioid=self.chronic_opioid,
            last_refill_date=self.last_refill_date,
            agreement_status=self.agreement_status,
            agreement_renewal_due=self.agreement_renewal_due,
            aberrant_uds=self.aberrant_uds,
            uds_due=self.uds_due,
            pdmp_last_checked=self.pdmp_last_checked,
            phone_restrictions=self.phone_restrictions,
        )


def compliance_flags(
    practice_id: str,
    patient_id: str,
    flag_resources: Iterable[Mapping[str, Any]],
    pdmp_observations: Iterable[Mapping[str, Any]],
) -> ComplianceFlags:
    """Reduce the chart's Flag resources and PDMP-check Observations to ComplianceFlags.

    Unknown flag codes are ignored (ModMed may add some); a known flag with an unreadable value
    raises InvalidResponseError, so a chart is never read as "no restrictions" by mistake.
    """
    agreement = AgreementStatus.NONE
    renewal: date | None = None
    chronic = aberrant = uds_due = False
    last_refill: date | None = None
    restrictions: set[PhoneRestriction] = set()
    for flag in flag_resources:
        if not isinstance(flag, Mapping) or flag.get("status") != "active" or not _about(flag, "subject", patient_id):
            continue
        code = _compliance_code(flag.get("code"))
        if code == "chronic-opioid":
            chronic = True
            refill = _extension_value(flag, EXT_LAST_REFILL_DATE, "valueDate")
            candidate = _date(refill, practice_id, "last-refill-date") if refill is not None else None
            if candidate and (last_refill is None or candidate > last_refill):
                last_refill = candidate
        elif code == "opioid-agreement":
            status = _agreement_status(_extension_value(flag, EXT_AGREEMENT_STATUS, "valueCode"), practice_id)
            if _AGREEMENT_SEVERITY[status] > _AGREEMENT_SEVERITY.get(agreement, 0):
                agreement = status
            period = flag.get("period")
            end = period.get("end") if isinstance(period, Mapping) else None
            due = _date(end, practice_id, "agreement period end") if end is not None else None
            if due and (renewal is None or due > renewal):
                renewal = due
        elif code == "aberrant-uds":
            aberrant = True
        elif code == "uds-due":
            uds_due = True
        elif code == "phone-request-restriction":
            value = _extension_value(flag, EXT_RESTRICTION, "valueCode")
            try:
                restrictions.add(PhoneRestriction(value))
            except ValueError:
                raise InvalidResponseError(
                    "phone-request-restriction Flag has an unknown restriction code", practice_id=practice_id,
                    resource_type="Flag",
                ) from None
    return ComplianceFlags(
        patient_id=patient_id,
        agreement_status=agreement,
        agreement_renewal_due=renewal,
        chronic_opioid=chronic,
        last_refill_date=last_refill,
        aberrant_uds=aberrant,
        uds_due=uds_due,
        pdmp_last_checked=_latest_check(practice_id, patient_id, pdmp_observations),
        phone_restrictions=frozenset(restrictions),
    )


def _latest_check(practice_id: str, patient_id: str, observations: Iterable[Mapping[str, Any]]) -> datetime | None:
    """The newest PDMP check time; the only field of these Observations that is ever looked at."""
    latest: datetime | None = None
    for observation in observations:
        if not isinstance(observation, Mapping) or observation.get("status") not in ("final", "amended", "corrected"):
            continue
        if not _about(observation, "subject", patient_id):
            continue
        raw = observation.get("effectiveDateTime")
        if not isinstance(raw, str):
            continue
        try:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidResponseError(
                "PDMP check has an unreadable effectiveDateTime", practice_id=practice_id, resource_type="Observation"
            ) from None
        if moment.tzinfo is None:
            raise InvalidResponseError(
                "PDMP check time lacks a time zone", practice_id=practice_id, resource_type="Observation"
            )
        if latest is None or moment > latest:
            latest = moment
    return latest


def _about(resource: Mapping[str, Any], field: str, patient_id: str) -> bool:
    reference = resource.get(field)
    value = reference.get("reference") if isinstance(reference, Mapping) else None
    return isinstance(value, str) and value.rstrip("/").split("/")[-2:] == ["Patient", patient_id]


def _compliance_code(concept: Any) -> str | None:
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    for coding in codings if isinstance(codings, list) else ():
        if isinstance(coding, Mapping) and coding.get("system") == COMPLIANCE_SYSTEM:
            code = coding.get("code")
            return code if isinstance(code, str) else None
    return None


def _extension_value(resource: Mapping[str, Any], url: str, value_field: str) -> Any:
    extensions = resource.get("extension")
    for extension in extensions if isinstance(extensions, list) else ():
        if isinstance(extension, Mapping) and extension.get("url") == url:
            return extension.get(value_field)
    return None


def _agreement_status(value: Any, practice_id: str) -> AgreementStatus:
    if value in ("active", "expired", "violated"):
        return AgreementStatus(value)
    raise InvalidResponseError(
        "opioid-agreement Flag has no readable agreement-status", practice_id=practice_id, resource_type="Flag"
    )


def _date(value: Any, practice_id: str, what: str) -> date:
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            pass
    raise InvalidResponseError(f"Flag has an unreadable {what}", practice_id=practice_id, resource_type="Flag")
