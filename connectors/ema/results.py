"""What an EMA write hands back to the dispatcher: the same ids and chart link a FHIR write yields."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EmaWriteResult:
    """An EMA screen write, as visible over FHIR afterwards (docs/CONTRACTS.md, connectors/dispatch.py).

    ``resource_id`` is the id ModMed shows over FHIR for what the screen wrote, so replies and the audit
    treat EMA and FHIR writes alike; ``deep_link`` opens the patient's chart in EMA for reconciliation.
    """

    resource_type: str
    resource_id: str
    deep_link: str
