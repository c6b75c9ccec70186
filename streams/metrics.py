"""The one declared set of callstream metrics (served by callstream.metrics_server, like every process's).

Every worker records into a `Metrics` built on its own `CollectorRegistry` (never the
prometheus_client global one), so several workers or tests in one process never collide.
The PrometheusRule and the Grafana dashboard in helm/callstream/ query exactly these names.

Labels are bounded enumerations or identifiers. The practice id is the only tenant label;
every label value must be a short identifier (`[A-Za-z0-9][A-Za-z0-9_.:/-]*`), so a name,
a phone number with spaces or a transcript fragment is refused with `MetricLabelError`
rather than exported. Latency histograms carry no practice label: 2,400 practices times
16 buckets per series would cost more than per-practice latency is worth; per-practice
health lives in the counters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from enum import StrEnum
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# The endpoint is shared with the sinks process; re-exported for the worker.
from callstream.siem_delivery import SiemOutcome

EnumT = TypeVar("EnumT", bound=StrEnum)

METRIC_PREFIX = "callstream"
_LABEL_VALUE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}\Z")

# Sized around the 800 ms voice turn: fine steps below 100 ms (callstream's own budget),
# then around the turn budget, then the tail that needs cover speech.
VOICE_TURN_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.8,
    1.0,
    1.5,
    2.5,
    5.0,
    10.0,
)
# Browser steps on EMA screens take seconds; the 0.8 s bucket shows which ones fit a turn.
EMA_STEP_BUCKETS: tuple[float, ...] = (
    0.1,
    0.25,
    0.5,
    0.8,
    1.0,
    2.0,
    3.0,
    5.0,
    8.0,
    13.0,
    20.0,
    30.0,
    60.0,
)
SIEM_DELIVERY_BUCKETS: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class MetricLabelError(ValueError):
    """A label value that is not a short identifier (and might be PHI) or not in its enum."""


class Route(StrEnum):
    """Where a command was dispatched."""

    FHIR = "fhir"
    EMA = "ema"


class Outcome(StrEnum):
    """Result of a FHIR request or an EMA step."""

    SUCCESS = "success"
    FAILURE = "failure"


def _label(name: str, value: object) -> str:
    """Validate one label value without ever echoing it (it may be PHI)."""
    if isinstance(value, StrEnum):
        value = value.value
    if not isinstance(value, str) or not _LABEL_VALUE_PATTERN.match(value):
        raise MetricLabelError(f"label {name!r} must be a short identifier of [A-Za-z0-9_.:/-]")
    return value


def _member(enum: type[EnumT], name: str, value: str) -> EnumT:
    """Coerce a label into its closed enum, naming the allowed values on failure."""
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise MetricLabelError(f"label {name!r} must be one of: {allowed}") from None


def _seconds(value: float) -> float:
    """Durations must be finite and non-negative; anything else is a caller bug."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise MetricLabelError("durations must be finite, non-negative seconds")
    return float(value)


class Metrics:
    """Every metric a callstream worker exports, registered on one explicit registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.command_attempts = Counter(
            f"{METRIC_PREFIX}_command_attempts",
            "Commands dispatched to ModMed.",
            ("practice_id", "command", "route"),
            registry=r,
        )
        self.command_successes = Counter(
            f"{METRIC_PREFIX}_command_successes",
            "Commands ModMed accepted.",
            ("practice_id", "command", "route"),
            registry=r,
        )
        self.command_failures = Counter(
            f"{METRIC_PREFIX}_command_failures",
            "Commands that failed, by error class.",
            ("practice_id", "command", "route", "error_class"),
            registry=r,
        )
        self.fhir_request_seconds = Histogram(
            f"{METRIC_PREFIX}_fhir_request_seconds",
            "ModMed FHIR request latency.",
            ("resource", "interaction", "outcome"),
            buckets=VOICE_TURN_BUCKETS,
            registry=r,
        )
        self.ema_step_seconds = Histogram(
            f"{METRIC_PREFIX}_ema_step_seconds",
            "EMA web automation step latency.",
            ("step", "outcome"),
            buckets=EMA_STEP_BUCKETS,
            registry=r,
        )
        self.reply_latency_seconds = Histogram(
            f"{METRIC_PREFIX}_reply_latency_seconds",
            "Call event received to reply produced, callstream's share of the voice turn.",
            ("intent",),
            buckets=VOICE_TURN_BUCKETS,
            registry=r,
        )
        self.escalations = Counter(
            f"{METRIC_PREFIX}_escalations",
            "Escalations to a provider or team, by kind.",
            ("practice_id", "kind"),
            registry=r,
        )
        self.cs_requests = Counter(
            f"{METRIC_PREFIX}_cs_requests",
            "Controlled-substance requests seen.",
            ("practice_id",),
            registry=r,
        )
        self.cs_escalations = Counter(
            f"{METRIC_PREFIX}_cs_escalations",
            "Controlled-substance requests that reached ModMed as a provider Task (worker) or a stored, "
            "staff-visible review item (review queue); summed over both, must equal requests.",
            ("practice_id",),
            registry=r,
        )
        self.guard_hits = Counter(
            f"{METRIC_PREFIX}_guard_hits",
            "Compliance guards that fired.",
            ("practice_id", "guard"),
            registry=r,
        )
        self.bypass_attempts = Counter(
            f"{METRIC_PREFIX}_bypass_attempts",
            "Guardrail-bypass attempts detected, by signal.",
            ("practice_id", "signal"),
            registry=r,
        )
        self.dead_letters = Counter(
            f"{METRIC_PREFIX}_dead_letters",
            "Records sent to a dead-letter topic.",
            ("topic", "reason_class"),
            registry=r,
        )
        self.siem_deliveries = Counter(
            f"{METRIC_PREFIX}_siem_deliveries",
            "SIEM webhook deliveries by outcome.",
            ("practice_id", "outcome"),
            registry=r,
        )
        self.siem_delivery_seconds = Histogram(
            f"{METRIC_PREFIX}_siem_delivery_seconds",
            "SIEM webhook delivery latency.",
            (),
            buckets=SIEM_DELIVERY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            f"{METRIC_PREFIX}_consumer_lag",
            "Messages behind the log end, per partition.",
            ("topic", "partition", "group"),
            registry=r,
        )
        self.alarm_state = Gauge(
            f"{METRIC_PREFIX}_alarm_state",
            "Sentinel alarm state: 1 firing, 0 clear.",
            ("practice_id", "kind"),
            registry=r,
        )
        self.events_processed = Counter(
            f"{METRIC_PREFIX}_events_processed",
            "Events consumed and handled, by topic.",
            ("topic",),
            registry=r,
        )
        self.events_in_flight = Gauge(
            f"{METRIC_PREFIX}_events_in_flight",
            "Call events the worker holds, waiting behind their call's previous event or running "
            "(bounded by --max-in-flight).",
            registry=r,
        )

    def record_command(
        self, practice_id: str, command: str, route: Route | str, error_class: str | None = None
    ) -> None:
        """Count one finished command; `error_class` None means ModMed accepted it."""
        labels = (
            _label("practice_id", practice_id),
            _label("command", command),
            _member(Route, "route", route).value,
        )
        failure_class = None if error_class is None else _label("error_class", error_class)
        self.command_attempts.labels(*labels).inc()
        if failure_class is None:
            self.command_successes.labels(*labels).inc()
        else:
            self.command_failures.labels(*labels, failure_class).inc()

    def observe_fhir_request(
        self, resource: str, interaction: str, outcome: Outcome | str, seconds: float
    ) -> None:
        """Latency of one FHIR call (token, read, search, create, update)."""
        self.fhir_request_seconds.labels(
            _label("resource", resource),
            _label("interaction", interaction),
            _member(Outcome, "outcome", outcome).value,
        ).observe(_seconds(seconds))

    def observe_ema_step(self, step: str, outcome: Outcome | str, seconds: float) -> None:
        """Latency of one EMA screen step (login, open booking, submit, ...)."""
        self.ema_step_seconds.labels(
            _label("step", step), _member(Outcome, "outcome", outcome).value
        ).observe(_seconds(seconds))

    def observe_reply_latency(self, intent: str, seconds: float) -> None:
        """Callstream's share of a voice turn, from event in to reply out."""
        self.reply_latency_seconds.labels(_label("intent", intent)).observe(_seconds(seconds))

    def record_escalation(self, practice_id: str, kind: str) -> None:
        """One escalation (provider task, clinical team, coordinator)."""
        self.escalations.labels(_label("practice_id", practice_id), _label("kind", kind)).inc()

    def record_controlled_substance_request(self, practice_id: str, escalated: bool) -> None:
        """One controlled-substance request; the pair feeds the 100 % escalation panel."""
        practice = _label("practice_id", practice_id)
        self.cs_requests.labels(practice).inc()
        if escalated:
            self.cs_escalations.labels(practice).inc()

    def record_guard_hit(self, practice_id: str, guard: str) -> None:
        self.guard_hits.labels(_label("practice_id", practice_id), _label("guard", guard)).inc()

    def record_bypass_attempt(self, practice_id: str, signal: str) -> None:
        self.bypass_attempts.labels(
            _label("practice_id", practice_id), _label("signal", signal)
        ).inc()

    def record_dead_letter(self, topic: str, reason_class: str) -> None:
        self.dead_letters.labels(_label("topic", topic), _label("reason_class", reason_class)).inc()

    def record_siem_delivery(
        self, practice_id: str, outcome: SiemOutcome | str, seconds: float | None = None
    ) -> None:
        """One SIEM delivery outcome, with its latency when a request was made."""
        self.siem_deliveries.labels(
            _label("practice_id", practice_id), _member(SiemOutcome, "outcome", outcome).value
        ).inc()
        if seconds is not None:
            self.siem_delivery_seconds.observe(_seconds(seconds))

    def set_consumer_lag(self, topic: str, partition: int, group: str, lag: int) -> None:
        """Lag of one partition, as (log end offset - committed offset)."""
        if isinstance(partition, bool) or not isinstance(partition, int) or partition < 0:
            raise MetricLabelError("label 'partition' must be a non-negative integer")
        if isinstance(lag, bool) or not isinstance(lag, int) or lag < 0:
            raise MetricLabelError("consumer lag must be a non-negative integer")
        self.consumer_lag.labels(
            _label("topic", topic), str(partition), _label("group", group)
        ).set(lag)

    def set_alarm_state(self, practice_id: str, kind: str, firing: bool) -> None:
        """Mirror a drift alarm transition into the gauge the PrometheusRule watches."""
        self.alarm_state.labels(_label("practice_id", practice_id), _label("kind", kind)).set(
            1 if firing else 0
        )

    def forget_alarm_state(self, practice_id: str, kind: str) -> None:
        """Drop a practice's alarm series when its partition moves to another worker.

        Otherwise the old owner keeps exporting a stale 1 and `max by (practice_id)` in the
        PrometheusRule would keep the alert firing after the new owner cleared it.
        """
        labels = (_label("practice_id", practice_id), _label("kind", kind))
        try:
            self.alarm_state.remove(*labels)
        except KeyError:
            return

    def watch_events_in_flight(self, count: Callable[[], int]) -> None:
        """Export ``count()`` as the events in flight, read at each scrape (nothing to keep up to date)."""
        self.events_in_flight.set_function(count)

    def record_event_processed(self, topic: str) -> None:
        self.events_processed.labels(_label("topic", topic)).inc()
