"""Adapters from the connectors' hooks to the worker's metrics."""

from __future__ import annotations

import logging

from streams.metrics import MetricLabelError, Metrics, Outcome

log = logging.getLogger(__name__)

_INTERACTIONS = {"GET": "read", "POST": "create", "PUT": "update", "DELETE": "delete"}


class FhirRequestMetrics:
    """connectors.fhir.RequestObserver → callstream_fhir_request_seconds (no practice label: see metrics).
    Each event's write requests are tallied by the FHIR client itself, into the event's ``WorkScope``."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def on_request(self, practice_id: str, resource: str, method: str, status: int | None, seconds: float) -> None:
        outcome = Outcome.SUCCESS if status is not None and status < 400 else Outcome.FAILURE
        try:
            self._metrics.observe_fhir_request(resource, _INTERACTIONS.get(method, "other"), outcome, max(0.0, seconds))
        except MetricLabelError:
            log.debug("FHIR request metric skipped: unusable resource label")
