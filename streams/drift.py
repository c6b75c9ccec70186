"""Sentinel drift detection: a pure, synchronous core fed by the pipeline's windowed tables.

The Faust pipeline aggregates each practice's traffic into tumbling windows and, when a
window closes, hands a `WindowStats` to `DriftMonitor.observe`. The monitor keeps one
small state per practice and returns `AlarmTransition`s only when an alarm changes state;
the pipeline publishes them to `callstream.alarms.v1`, sets the `callstream_alarm_state`
gauge and posts them to the alert webhook. Nothing here reads a clock or does I/O, so the
same inputs always give the same alarms and the state round-trips through a changelogged
table (`to_dict` / `from_dict`).

Alarms and thresholds (defaults of `DriftThresholds`):

WRITE_SUCCESS_DRIFT - write-success rate per practice against its own baseline. An attempt is
  one write request ModMed answered (or failed to answer), resends included: see
  callstream.work_scope.WriteRequests for why requests, not commands, are counted.
  * Baseline: an EWMA of the practice's window success rate, each window weighted by its
    attempts (memory about 5,000 attempts, so a window of n attempts moves it by about
    n / 5,000), seeded at the seeds' healthy level of 99.6 % and bounded to [95 %, 99.9 %]
    so a bad practice cannot normalise its failures and a perfect one cannot make one
    failure look infinitely unlikely. It learns only from conclusive windows while the
    alarm is clear, so a slow drift is caught by the CUSUM before the baseline absorbs it.
  * A window is conclusive with at least 20 write attempts; fewer can neither fire nor
    count towards clearing (low-volume practices need longer windows).
  * Burst limit (fires within the window): exact binomial test of the window's failures
    against the baseline failure rate, P(F >= failures) < 1e-5, and a shortfall of at least
    2 percentage points below baseline. The normal approximation is useless at 99.6 %
    (expected failures per window are well below one), hence the exact tail. With a 99.6 %
    baseline, 20 attempts with 4 failures (a 20 % burst) fire (P = 1.2e-6); healthy
    binomial noise fires with probability below 1e-5 per window.
  * Sustained drift: a Bernoulli CUSUM of failures, tuned to detect a failure rate one
    percentage point above baseline (99.6 % -> 98.6 %), fires at 10 (false-alarm chance per
    excursion about e^-10). Clamped to [0, 20] so recovery time stays bounded; reset when a
    burst fires, so a past burst does not delay the clearing.
  * Clears after 3 consecutive conclusive healthy windows: binomial P(F >= failures) >= 0.01
    against the baseline and the CUSUM below its limit.

CS_ESCALATION_RATE - fires when a window has controlled-substance requests and fewer than
  100 % of them escalated (threshold 1.0); clears on the next window without a violation
  (every request escalated, or no requests).

GUARDRAIL_BYPASS - fires on any bypass attempt in a window (threshold 0); clears after a
  window without any.

A transition's `value` is the window's figure (write success rate, escalation rate, bypass
count) and `threshold` the limit it is judged against (for write drift: the success rate at or
below which that window counts as a burst).

Windows of one practice must be fed in order of `window_end`; a window ending at or before
the last one evaluated is a redelivery and is ignored. Faust only closes windows of keys that
saw traffic, so the pipeline feeds empty windows for practices in `firing()` to let bypass and
escalation alarms clear; a write-drift alarm stays firing until conclusive healthy traffic.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from schemas.models import AlarmKind, AlarmState

HEALTHY_WRITE_SUCCESS_RATE = 0.996
STATE_FORMAT_VERSION = 1
_PRACTICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")


class DriftInputError(ValueError):
    """Raised for window aggregates, thresholds or stored state that cannot be trusted."""


DRIFT_ALARM_KINDS: frozenset[AlarmKind] = frozenset(
    {AlarmKind.WRITE_SUCCESS_DRIFT, AlarmKind.CS_ESCALATION_RATE, AlarmKind.GUARDRAIL_BYPASS}
)
"""The alarms this detector raises and clears; the other kinds belong to the sinks and the review queue."""


@dataclass(frozen=True)
class DriftThresholds:
    """Detector tuning; the defaults are the documented thresholds of the module docstring."""

    healthy_success_rate: float = HEALTHY_WRITE_SUCCESS_RATE
    baseline_memory_attempts: int = 5000
    baseline_floor: float = 0.95
    baseline_ceiling: float = 0.999
    min_window_attempts: int = 20
    burst_false_alarm_probability: float = 1e-5
    burst_min_shortfall: float = 0.02
    cusum_shift: float = 0.01
    cusum_limit: float = 10.0
    healthy_window_probability: float = 0.01
    clear_after_healthy_windows: int = 3

    def __post_init__(self) -> None:
        """Reject tunings that would make the detector silent or constantly firing."""
        checks = {
            "healthy_success_rate": 0.5 < self.healthy_success_rate < 1.0,
            "baseline_memory_attempts": self.baseline_memory_attempts >= 1,
            "baseline_floor": 0.5 < self.baseline_floor <= self.healthy_success_rate,
            "baseline_ceiling": self.healthy_success_rate <= self.baseline_ceiling < 1.0,
            "min_window_attempts": self.min_window_attempts >= 1,
            "burst_false_alarm_probability": 0.0 < self.burst_false_alarm_probability < 0.5,
            "burst_min_shortfall": 0.0 <= self.burst_min_shortfall < 1.0,
            "cusum_shift": 0.0 < self.cusum_shift < 0.5,
            "cusum_limit": self.cusum_limit > 0.0,
            "healthy_window_probability": (
                self.burst_false_alarm_probability < self.healthy_window_probability < 1.0
            ),
            "clear_after_healthy_windows": self.clear_after_healthy_windows >= 1,
        }
        invalid = [name for name, ok in checks.items() if not ok]
        if invalid:
            raise DriftInputError(f"invalid drift thresholds: {', '.join(invalid)}")


@dataclass(frozen=True)
class WindowStats:
    """One practice's aggregates for one closed window, as the pipeline's tables count them."""

    practice_id: str
    window_start: datetime
    window_end: datetime
    write_attempts: int
    write_successes: int
    cs_requests: int
    cs_escalations: int
    bypass_attempts: int

    def __post_init__(self) -> None:
        """Fail loudly on aggregates no correct pipeline can produce."""
        if not isinstance(self.practice_id, str) or not _PRACTICE_ID_PATTERN.match(
            self.practice_id
        ):
            raise DriftInputError("practice_id must be 1-64 characters of [A-Za-z0-9_.:-]")
        for name in ("window_start", "window_end"):
            moment = getattr(self, name)
            if not isinstance(moment, datetime) or moment.utcoffset() is None:
                raise DriftInputError(f"{name} must be a timezone-aware datetime")
        if self.window_end <= self.window_start:
            raise DriftInputError("window_end must be after window_start")
        counts = (
            "write_attempts",
            "write_successes",
            "cs_requests",
            "cs_escalations",
            "bypass_attempts",
        )
        for name in counts:
            count = getattr(self, name)
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise DriftInputError(f"{name} must be a non-negative integer")
        if self.write_successes > self.write_attempts:
            raise DriftInputError("write_successes exceeds write_attempts")
        if self.cs_escalations > self.cs_requests:
            raise DriftInputError("cs_escalations exceeds cs_requests")


@dataclass(frozen=True)
class AlarmTransition:
    """A change of one practice's alarm; field names match the `Alarm` Avro record."""

    practice_id: str
    kind: AlarmKind
    state: AlarmState
    value: float
    threshold: float
    window_start: datetime
    window_end: datetime
    detail: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PracticeDriftState:
    """Everything the monitor remembers about one practice between windows."""

    baseline_success_rate: float
    cusum: float
    last_window_end: datetime | None
    healthy_windows_while_firing: int
    firing: frozenset[AlarmKind]

    @classmethod
    def initial(cls, thresholds: DriftThresholds) -> PracticeDriftState:
        """A practice never seen before starts at the seeds' healthy level, all clear."""
        return cls(
            baseline_success_rate=thresholds.healthy_success_rate,
            cusum=0.0,
            last_window_end=None,
            healthy_windows_while_firing=0,
            firing=frozenset(),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for a Faust table value."""
        return {
            "baseline_success_rate": self.baseline_success_rate,
            "cusum": self.cusum,
            "last_window_end": (
                None if self.last_window_end is None else self.last_window_end.isoformat()
            ),
            "healthy_windows_while_firing": self.healthy_windows_while_firing,
            "firing": sorted(kind.value for kind in self.firing),
        }

    @classmethod
    def from_dict(cls, data: Any) -> PracticeDriftState:
        """Restore from `to_dict` output; a corrupt changelog entry raises `DriftInputError`."""
        if not isinstance(data, dict):
            raise DriftInputError("practice drift state must be an object")
        try:
            baseline = _finite_float(data["baseline_success_rate"], "baseline_success_rate")
            cusum = _finite_float(data["cusum"], "cusum")
            raw_end = data["last_window_end"]
            healthy = data["healthy_windows_while_firing"]
            raw_firing = data["firing"]
        except KeyError as missing:
            raise DriftInputError(f"practice drift state lacks {missing.args[0]}") from None
        if not 0.0 < baseline < 1.0 or cusum < 0.0:
            raise DriftInputError("practice drift state has out-of-range statistics")
        if isinstance(healthy, bool) or not isinstance(healthy, int) or healthy < 0:
            raise DriftInputError("healthy_windows_while_firing must be a non-negative integer")
        if not isinstance(raw_firing, list) or not all(isinstance(k, str) for k in raw_firing):
            raise DriftInputError("firing must be a list of alarm kinds")
        if not set(raw_firing) <= DRIFT_ALARM_KINDS:
            raise DriftInputError("firing holds an unknown alarm kind")
        firing = frozenset(AlarmKind(kind) for kind in raw_firing)
        return cls(
            baseline_success_rate=baseline,
            cusum=cusum,
            last_window_end=_parse_moment(raw_end),
            healthy_windows_while_firing=healthy,
            firing=firing,
        )


def _finite_float(raw: Any, name: str) -> float:
    """Numbers from stored state must be real, finite numbers."""
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise DriftInputError(f"{name} must be a finite number")
    return float(raw)


def _parse_moment(raw: Any) -> datetime | None:
    """Parse a stored ISO-8601 timestamp, insisting on a timezone."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise DriftInputError("last_window_end must be an ISO-8601 string or null")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise DriftInputError("last_window_end is not an ISO-8601 timestamp") from None
    if moment.utcoffset() is None:
        raise DriftInputError("last_window_end must carry a timezone")
    return moment


def binomial_upper_tail(failures: int, trials: int, failure_probability: float) -> float:
    """P(F >= failures) for F ~ Binomial(trials, failure_probability), summed in log space.

    Exact because the expected failures per window at 99.6 % are far below one, where the
    normal approximation would page on every second failure.
    """
    if not 0.0 < failure_probability < 1.0:
        raise DriftInputError("failure_probability must be strictly between 0 and 1")
    if failures <= 0:
        return 1.0
    if failures > trials:
        return 0.0
    q = failure_probability
    log_term = (
        math.lgamma(trials + 1)
        - math.lgamma(failures + 1)
        - math.lgamma(trials - failures + 1)
        + failures * math.log(q)
        + (trials - failures) * math.log1p(-q)
    )
    term = math.exp(log_term)
    total = term
    odds = q / (1.0 - q)
    for k in range(failures, trials):
        term *= (trials - k) / (k + 1) * odds
        total += term
        if term <= total * 1e-17:
            break
    return min(total, 1.0)


def burst_failure_limit(trials: int, baseline: float, thresholds: DriftThresholds) -> int:
    """The fewest failures among `trials` that make a window a significant burst.

    Both conditions must hold: the shortfall below baseline is material and the binomial
    tail is below the per-window false-alarm probability.
    """
    failure_probability = 1.0 - baseline
    material = (thresholds.burst_min_shortfall + failure_probability) * trials
    failures = max(1, math.ceil(material - 1e-9))
    while failures <= trials:
        tail = binomial_upper_tail(failures, trials, failure_probability)
        if tail < thresholds.burst_false_alarm_probability:
            return failures
        failures += 1
    return trials + 1


def _cusum_increment(failures: int, trials: int, baseline: float, shift: float) -> float:
    """Log-likelihood ratio of the window under the drifted rate versus the baseline."""
    in_control = 1.0 - baseline
    drifted = min(in_control + shift, 0.5)
    return failures * math.log(drifted / in_control) + (trials - failures) * math.log(
        (1.0 - drifted) / (1.0 - in_control)
    )


class DriftMonitor:
    """Per-practice alarm state machines behind one call, `observe(window)`."""

    def __init__(self, thresholds: DriftThresholds | None = None) -> None:
        self.thresholds = thresholds or DriftThresholds()
        self._practices: dict[str, PracticeDriftState] = {}

    def observe(self, window: WindowStats) -> list[AlarmTransition]:
        """Evaluate one closed window and return the alarms whose state it changed."""
        if not isinstance(window, WindowStats):
            raise DriftInputError("observe() takes a WindowStats")
        state = self._practices.get(window.practice_id) or PracticeDriftState.initial(
            self.thresholds
        )
        if state.last_window_end is not None and window.window_end <= state.last_window_end:
            return []
        state, transitions = self._evaluate(state, window)
        self._practices[window.practice_id] = state
        return transitions

    def firing(self) -> list[tuple[str, AlarmKind]]:
        """Alarms currently firing, for gauges after a restore and for empty-window timers."""
        return sorted(
            (practice_id, kind)
            for practice_id, state in self._practices.items()
            for kind in state.firing
        )

    def practice_state(self, practice_id: str) -> PracticeDriftState | None:
        """One practice's state, for a Faust table partitioned by practice id."""
        return self._practices.get(practice_id)

    def restore_practice(self, practice_id: str, state: PracticeDriftState) -> None:
        """Install a practice's state read back from a changelogged table."""
        if not isinstance(practice_id, str) or not _PRACTICE_ID_PATTERN.match(practice_id):
            raise DriftInputError("practice_id must be 1-64 characters of [A-Za-z0-9_.:-]")
        if not isinstance(state, PracticeDriftState):
            raise DriftInputError("restore_practice() takes a PracticeDriftState")
        self._practices[practice_id] = state

    def to_dict(self) -> dict[str, Any]:
        """The whole monitor as JSON-safe data."""
        return {
            "version": STATE_FORMAT_VERSION,
            "practices": {pid: state.to_dict() for pid, state in self._practices.items()},
        }

    @classmethod
    def from_dict(cls, data: Any, thresholds: DriftThresholds | None = None) -> DriftMonitor:
        """Rebuild a monitor from `to_dict` output, validating every field."""
        if not isinstance(data, dict) or data.get("version") != STATE_FORMAT_VERSION:
            raise DriftInputError(
                f"drift state must be an object with version {STATE_FORMAT_VERSION}"
            )
        practices = data.get("practices")
        if not isinstance(practices, dict):
            raise DriftInputError("drift state lacks a practices object")
        monitor = cls(thresholds)
        for practice_id, practice_data in practices.items():
            if not isinstance(practice_id, str):
                raise DriftInputError("practice ids in drift state must be strings")
            monitor.restore_practice(practice_id, PracticeDriftState.from_dict(practice_data))
        return monitor

    def _evaluate(
        self, state: PracticeDriftState, window: WindowStats
    ) -> tuple[PracticeDriftState, list[AlarmTransition]]:
        """Run the three detectors on one window; pure function of state and window."""
        transitions: list[AlarmTransition] = []
        firing = set(state.firing)
        state = replace(state, last_window_end=window.window_end)

        state, write_change = self._evaluate_write_success(state, window)

        cs_violation = window.cs_escalations < window.cs_requests
        cs_rate = window.cs_escalations / window.cs_requests if window.cs_requests else 1.0
        cs_change = self._flip(
            AlarmKind.CS_ESCALATION_RATE,
            now_firing=cs_violation,
            was_firing=AlarmKind.CS_ESCALATION_RATE in firing,
            window=window,
            value=cs_rate,
            threshold=1.0,
            detail={
                "cs_requests": str(window.cs_requests),
                "cs_escalations": str(window.cs_escalations),
            },
        )
        bypass_change = self._flip(
            AlarmKind.GUARDRAIL_BYPASS,
            now_firing=window.bypass_attempts > 0,
            was_firing=AlarmKind.GUARDRAIL_BYPASS in firing,
            window=window,
            value=float(window.bypass_attempts),
            threshold=0.0,
            detail={"bypass_attempts": str(window.bypass_attempts)},
        )
        for change in (write_change, cs_change, bypass_change):
            if change is None:
                continue
            transitions.append(change)
            if change.state is AlarmState.FIRING:
                firing.add(change.kind)
            else:
                firing.discard(change.kind)
        return replace(state, firing=frozenset(firing)), transitions

    def _evaluate_write_success(
        self, state: PracticeDriftState, window: WindowStats
    ) -> tuple[PracticeDriftState, AlarmTransition | None]:
        """Burst test plus CUSUM against the practice's own baseline, with hysteresis."""
        limits = self.thresholds
        attempts = window.write_attempts
        if attempts < limits.min_window_attempts:
            return state, None
        failures = attempts - window.write_successes
        baseline = state.baseline_success_rate
        rate = window.write_successes / attempts
        failure_limit = burst_failure_limit(attempts, baseline, limits)
        control_limit = (attempts - failure_limit) / attempts
        burst = failures >= failure_limit
        cusum_ceiling = 2.0 * limits.cusum_limit
        cusum = min(
            cusum_ceiling,
            max(
                0.0,
                state.cusum + _cusum_increment(failures, attempts, baseline, limits.cusum_shift),
            ),
        )
        tail = binomial_upper_tail(failures, attempts, 1.0 - baseline)
        detail = {
            "write_attempts": str(attempts),
            "write_successes": str(window.write_successes),
            "baseline_success_rate": f"{baseline:.6f}",
            "cusum": f"{cusum:.3f}",
            "tail_probability": f"{tail:.3e}",
        }
        was_firing = AlarmKind.WRITE_SUCCESS_DRIFT in state.firing

        if not was_firing:
            if burst or cusum >= limits.cusum_limit:
                detail["trigger"] = "burst" if burst else "cusum"
                transition = self._transition(
                    AlarmKind.WRITE_SUCCESS_DRIFT,
                    AlarmState.FIRING,
                    window,
                    rate,
                    control_limit,
                    detail,
                )
                return replace(
                    state, cusum=0.0 if burst else cusum, healthy_windows_while_firing=0
                ), transition
            weight = -math.expm1(
                attempts * math.log1p(-1.0 / (limits.baseline_memory_attempts + 1))
            )
            learned = baseline + weight * (rate - baseline)
            learned = min(limits.baseline_ceiling, max(limits.baseline_floor, learned))
            return replace(state, cusum=cusum, baseline_success_rate=learned), None

        healthy = tail >= limits.healthy_window_probability and cusum < limits.cusum_limit
        streak = state.healthy_windows_while_firing + 1 if healthy else 0
        if streak >= limits.clear_after_healthy_windows:
            transition = self._transition(
                AlarmKind.WRITE_SUCCESS_DRIFT,
                AlarmState.CLEARED,
                window,
                rate,
                control_limit,
                detail,
            )
            return replace(state, cusum=cusum, healthy_windows_while_firing=0), transition
        return replace(state, cusum=cusum, healthy_windows_while_firing=streak), None

    def _flip(
        self,
        kind: AlarmKind,
        *,
        now_firing: bool,
        was_firing: bool,
        window: WindowStats,
        value: float,
        threshold: float,
        detail: dict[str, str],
    ) -> AlarmTransition | None:
        """A window-by-window alarm: firing exactly while the window violates its rule."""
        if now_firing == was_firing:
            return None
        new_state = AlarmState.FIRING if now_firing else AlarmState.CLEARED
        return self._transition(kind, new_state, window, value, threshold, detail)

    @staticmethod
    def _transition(
        kind: AlarmKind,
        state: AlarmState,
        window: WindowStats,
        value: float,
        threshold: float,
        detail: dict[str, str],
    ) -> AlarmTransition:
        return AlarmTransition(
            practice_id=window.practice_id,
            kind=kind,
            state=state,
            value=value,
            threshold=threshold,
            window_start=window.window_start,
            window_end=window.window_end,
            detail=dict(detail),
        )
