"""Slack-compatible alert webhook for sentinel alarms and the EMA lockout.

An alert carries only the practice id, the alarm kind and state, numbers and window bounds:
`Alert` has no free-text field, and `Alert.from_alarm` forwards only allow-listed counter
figures from an alarm's detail, so neither PHI nor secrets can ride along into a chat
channel. The webhook URL is itself a secret (Slack puts its token in the path): it never
appears in logs, reprs or error messages. Lives in callstream/ because the sentinel alarms (streams/)
and the EMA lockout (connectors/ema/keeper.py) both raise alerts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import httpx

from callstream.retry import Backoff, retry_after_seconds

logger = logging.getLogger(__name__)

_PRACTICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
_KIND_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]{1,63}\Z")
_FIGURE_VALUE_PATTERN = re.compile(r"^[A-Za-z0-9_.+-]{1,32}\Z")
ALERT_STATES = ("FIRING", "CLEARED")

# Detail keys an alarm may forward to chat: counters and statistics, never free text.
ALERT_FIGURE_KEYS: frozenset[str] = frozenset(
    {
        "write_attempts",
        "write_successes",
        "baseline_success_rate",
        "cusum",
        "tail_probability",
        "trigger",
        "cs_requests",
        "cs_escalations",
        "bypass_attempts",
        "failed_logins",
        "consumer_lag",
        "failed_deliveries",
    }
)
_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class AlertContentError(ValueError):
    """An alert field that is not an identifier or number (it could carry PHI)."""


class AlertDeliveryError(RuntimeError):
    """The webhook did not accept the alert; the message never contains the URL."""

    def __init__(self, message: str, *, attempts: int, status_code: int | None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status_code = status_code


class AlarmLike(Protocol):
    """What `Alert.from_alarm` reads: a drift `AlarmTransition` or an `Alarm` record."""

    @property
    def practice_id(self) -> str: ...
    @property
    def kind(self) -> Any: ...
    @property
    def state(self) -> Any: ...
    @property
    def value(self) -> float: ...
    @property
    def threshold(self) -> float: ...
    @property
    def window_start(self) -> datetime: ...
    @property
    def window_end(self) -> datetime: ...
    @property
    def detail(self) -> Mapping[str, str]: ...


def _symbol(raw: Any) -> str:
    """Enum members and plain strings alike become their symbol."""
    return str(getattr(raw, "value", raw))


def _finite(raw: float | None, name: str) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise AlertContentError(f"{name} must be a finite number")
    return float(raw)


@dataclass(frozen=True)
class Alert:
    """One alert message: identifiers and numbers only."""

    practice_id: str | None
    kind: str
    state: str
    value: float | None = None
    threshold: float | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None
    figures: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse anything that is not an identifier, enum symbol or number."""
        if self.practice_id is not None and (
            not isinstance(self.practice_id, str)
            or not _PRACTICE_ID_PATTERN.match(self.practice_id)
        ):
            raise AlertContentError("practice_id must be 1-64 characters of [A-Za-z0-9_.:-]")
        if not isinstance(self.kind, str) or not _KIND_PATTERN.match(self.kind):
            raise AlertContentError("kind must be an UPPER_SNAKE_CASE symbol")
        if self.state not in ALERT_STATES:
            raise AlertContentError(f"state must be one of {', '.join(ALERT_STATES)}")
        _finite(self.value, "value")
        _finite(self.threshold, "threshold")
        for name in ("window_start", "window_end"):
            moment = getattr(self, name)
            if moment is not None and (
                not isinstance(moment, datetime) or moment.utcoffset() is None
            ):
                raise AlertContentError(f"{name} must be a timezone-aware datetime")
        if not isinstance(self.figures, Mapping):
            raise AlertContentError("figures must be a mapping of counter names to values")
        for key, figure in self.figures.items():
            if key not in ALERT_FIGURE_KEYS:
                raise AlertContentError("figures may only use the allow-listed counter names")
            if not isinstance(figure, str) or not _FIGURE_VALUE_PATTERN.match(figure):
                raise AlertContentError(f"figure {key!r} must be a number or short symbol")

    @classmethod
    def from_alarm(cls, alarm: AlarmLike) -> Alert:
        """Build an alert from an alarm, keeping only allow-listed, well-formed detail figures."""
        figures = {
            key: value
            for key, value in alarm.detail.items()
            if key in ALERT_FIGURE_KEYS
            and isinstance(value, str)
            and _FIGURE_VALUE_PATTERN.match(value)
        }
        return cls(
            practice_id=alarm.practice_id,
            kind=_symbol(alarm.kind),
            state=_symbol(alarm.state),
            value=alarm.value,
            threshold=alarm.threshold,
            window_start=alarm.window_start,
            window_end=alarm.window_end,
            figures=figures,
        )

    def to_slack(self) -> dict[str, Any]:
        """Slack-compatible body: `text` for every receiver, `blocks` for Slack's layout."""
        icon = ":rotating_light:" if self.state == "FIRING" else ":white_check_mark:"
        scope = f"practice {self.practice_id}" if self.practice_id else "all practices"
        headline = f"{icon} {self.state} {self.kind} ({scope})"
        facts: list[tuple[str, str]] = []
        if self.value is not None:
            facts.append(("value", f"{self.value:.4g}"))
        if self.threshold is not None:
            facts.append(("threshold", f"{self.threshold:.4g}"))
        if self.window_start is not None and self.window_end is not None:
            facts.append(
                ("window", f"{self.window_start.isoformat()} to {self.window_end.isoformat()}")
            )
        facts.extend(sorted(self.figures.items()))
        lines = [headline, *(f"{name}: {fact}" for name, fact in facts)]
        return {
            "text": "\n".join(lines),
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": headline[:150]}},
                {
                    "type": "section",
                    "fields": [
                        {"type": "mrkdwn", "text": f"*{name}*\n{fact}"} for name, fact in facts[:10]
                    ],
                }
                if facts
                else {"type": "section", "text": {"type": "mrkdwn", "text": headline}},
            ],
        }


@dataclass(frozen=True)
class AlertDelivery:
    """How a successful send went, for metrics and tests."""

    attempts: int
    status_code: int


class AlertWebhook:
    """Posts alerts to one Slack-compatible URL with a timeout and bounded, jittered retries."""

    def __init__(
        self,
        url: str,
        *,
        timeout_seconds: float = 5.0,
        max_attempts: int = 4,
        backoff_base_seconds: float = 0.5,
        backoff_max_seconds: float = 8.0,
        rng: random.Random | None = None,
    ) -> None:
        try:
            parsed = httpx.URL(url) if isinstance(url, str) else None
        except httpx.InvalidURL:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise AlertContentError("alert webhook URL must be an absolute http(s) URL")
        if not (0 < timeout_seconds <= 60):
            raise AlertContentError("timeout_seconds must be in (0, 60]")
        if not (1 <= max_attempts <= 10):
            raise AlertContentError("max_attempts must be in [1, 10]")
        if not (0 <= backoff_base_seconds <= backoff_max_seconds <= 300):
            raise AlertContentError("backoff must satisfy 0 <= base <= max <= 300 seconds")
        self._url = parsed
        self._max_attempts = max_attempts
        self._backoff = Backoff(base_s=backoff_base_seconds, cap_s=backoff_max_seconds, jitter="equal")
        self._rng = rng or random.Random()
        self._timeout = httpx.Timeout(timeout_seconds).as_dict()
        # The transport, not an AsyncClient: the client logs every request URL at INFO,
        # and this URL carries the webhook's secret token.
        self._transport = httpx.AsyncHTTPTransport()

    def __repr__(self) -> str:
        return f"<AlertWebhook host={self._url.host!r}>"

    async def __aenter__(self) -> AlertWebhook:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def _post(self, body: dict[str, Any]) -> httpx.Response:
        """One POST without redirects, cookies or URL logging; the body is read and closed."""
        request = httpx.Request("POST", self._url, json=body, extensions={"timeout": self._timeout})
        response = await self._transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    def _retry_delay(self, attempt: int, retry_after: float | None) -> float:
        """Backoff before the next try after attempt `attempt` (1-based); a server's Retry-After wins up to the cap."""
        delay = self._backoff.delay(attempt - 1, self._rng)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self._backoff.cap_s)

    async def send(self, alert: Alert) -> AlertDelivery:
        """Deliver one alert; raises `AlertDeliveryError` when the retry budget is spent."""
        if not isinstance(alert, Alert):
            raise AlertContentError("send() takes an Alert")
        body = alert.to_slack()
        last_status: int | None = None
        last_problem = "no attempt made"
        for attempt in range(1, self._max_attempts + 1):
            retry_after: float | None = None
            try:
                response = await self._post(body)
            except httpx.HTTPError as error:
                last_status = None
                last_problem = f"transport error {type(error).__name__}"
            else:
                last_status = response.status_code
                if 200 <= response.status_code < 300:
                    return AlertDelivery(attempts=attempt, status_code=response.status_code)
                last_problem = f"HTTP {response.status_code}"
                if response.status_code not in _RETRYABLE_STATUS:
                    raise AlertDeliveryError(
                        f"alert webhook rejected {alert.kind} with {last_problem}; not retrying",
                        attempts=attempt,
                        status_code=last_status,
                    )
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            if attempt < self._max_attempts:
                delay = self._retry_delay(attempt, retry_after)
                logger.warning(
                    "alert webhook attempt %d/%d for %s failed (%s); retrying in %.2fs",
                    attempt,
                    self._max_attempts,
                    alert.kind,
                    last_problem,
                    delay,
                )
                await asyncio.sleep(delay)
        raise AlertDeliveryError(
            f"alert webhook gave up on {alert.kind} after {self._max_attempts} attempts: {last_problem}",
            attempts=self._max_attempts,
            status_code=last_status,
        )
