"""The outcomes of one SIEM webhook delivery: the `outcome` label of `callstream_siem_deliveries_total`.

Lives below `streams` and `sinks` because both processes' registries export that counter under the
same name (so the PrometheusRule and the dashboard need not know which process a series came from);
the sinks' firehose is the one that records into it.
"""

from __future__ import annotations

from enum import StrEnum


class SiemOutcome(StrEnum):
    """What became of one audit record's delivery to a practice's SIEM endpoint."""

    DELIVERED = "delivered"
    RETRIED = "retried"
    FAILED = "failed"
    """Dead-lettered: the endpoint kept failing, or the signing secret could not be read."""
    DISABLED = "disabled"
    """Dead-lettered because the endpoint answered 410 Gone (now or earlier in this process)."""
