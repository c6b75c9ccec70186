"""Making and sending the digests: on demand (`callstream digest send`, the read API) and on a schedule in
the process that owns the audit store (`callstream sinks run`).

The schedule: once a practice's local clock passes ``digest_send_at`` (07:00), its digest of the previous
local day is due. Every tick the due practice-days not yet settled are claimed in `DigestLog` and sent, so a
restart sends what is still due and never what already went; a failed send is tried again after
``RETRY_AFTER``. A process down for longer than a day sends only the latest day's digest.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from zoneinfo import ZoneInfo

from callstream.errors import CallstreamError, ConfigError, ServiceUnavailableError
from callstream.tenants import Practice, TenantDirectory
from digest.figures import DayFigures, day_figures, open_review_items
from digest.log import DEFAULT_SERIES, Claim, DayStatus, DigestLog
from digest.message import digest_message
from digest.smtp import SmtpRelay
from review.reader import ReviewReader
from sinks.clickhouse_store import AuditStore

log = logging.getLogger(__name__)

RETRY_AFTER = timedelta(minutes=10)
TICK_S = 30.0


@dataclass(frozen=True, slots=True)
class DigestOutcome:
    """What became of one practice's digest of one day (``status``: sent, already_sent, unconfirmed,
    no_recipients, failed)."""

    practice_id: str
    day: date
    status: str
    recipients: int = 0
    message_id: str | None = None
    error: str | None = None

    def to_json_dict(self) -> dict[str, object]:
        return {"practice_id": self.practice_id, "date": self.day.isoformat(), "status": self.status,
                "recipients": self.recipients, "message_id": self.message_id, "error": self.error}


def parse_send_at(value: str) -> clock_time:
    hours, _, minutes = value.partition(":")
    return clock_time(int(hours), int(minutes))


def previous_local_day(now: datetime, zone: str) -> date:
    return now.astimezone(ZoneInfo(zone)).date() - timedelta(days=1)


class DigestService:
    """Figures from the audit store and the review queue, one message per practice-day, sent at most once."""

    def __init__(self, store: AuditStore, sends: DigestLog, tenants: TenantDirectory, relay: SmtpRelay | None, *,
                 reviews: ReviewReader | None = None, sender: str = "callstream@localhost",
                 call_url: str | None = None, send_at: str = "07:00", series: str = DEFAULT_SERIES,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.sends = sends
        self.tenants = tenants
        self.relay = relay
        self.reviews = reviews
        self.sender = sender
        self.call_url = call_url
        self.send_at = parse_send_at(send_at)
        self.series = series
        self.clock = clock
        self._lock = threading.Lock()  # one send at a time in this process (API request vs schedule)
        self._settled: set[tuple[str, date]] = set()
        self._failed_at: dict[tuple[str, date], datetime] = {}

    def figures(self, practice_id: str, day: date) -> DayFigures:
        """The practice's figures of ``day`` in its zone, with its open review items when the queue answers.

        Raises:
            ConfigError: the practice is not in the tenant directory.
            StoreUnavailableError: the audit store did not answer.
        """
        practice = self._practice(practice_id)
        figures = day_figures(self.store, practice_id, day, practice.timezone)
        if self.reviews is None:
            return replace(figures, review_error="no review queue in this process's configuration")
        try:
            review = open_review_items(self.reviews.items(practice_id, open_only=True))
        except ServiceUnavailableError as exc:
            return replace(figures, review_error=str(exc))
        return replace(figures, review=review)

    def send_one(self, practice_id: str, day: date) -> DigestOutcome:
        """Send the practice's digest of ``day`` unless it went (or is going) already.

        Raises:
            ConfigError: unknown practice or no relay configured.
        """
        practice = self._practice(practice_id)
        if not practice.digest_recipients:
            return DigestOutcome(practice_id, day, "no_recipients")
        if self.relay is None:
            raise ConfigError("no SMTP relay configured (CALLSTREAM_SMTP_HOST)")
        with self._lock:
            claim = self.sends.claim(practice_id, day, self.series)
            if isinstance(claim, DayStatus):
                return DigestOutcome(practice_id, day, "already_sent" if claim is DayStatus.SENT else "unconfirmed")
            return self._deliver(practice, claim)

    def send(self, day: date | None = None, practice_id: str | None = None) -> list[DigestOutcome]:
        """`send_one` for one practice or every practice with recipients; ``day`` None: each practice's previous
        local day."""
        practices = [self._practice(practice_id)] if practice_id else [
            practice for practice in self.tenants.values() if practice.digest_recipients]
        now = self.clock()
        return [self.send_one(practice.practice_id, day or previous_local_day(now, practice.timezone))
                for practice in practices]

    def due(self, now: datetime) -> list[tuple[str, date]]:
        """Practice-days whose send time has passed and that this process has not settled yet."""
        due = []
        for practice in self.tenants.values():
            if not practice.digest_recipients:
                continue
            local = now.astimezone(ZoneInfo(practice.timezone))
            key = (practice.practice_id, local.date() - timedelta(days=1))
            if local.time() < self.send_at or key in self._settled:
                continue
            failed_at = self._failed_at.get(key)
            if failed_at is None or now - failed_at >= RETRY_AFTER:
                due.append(key)
        return due

    def run_due(self) -> list[DigestOutcome]:
        """One round of the schedule; store or relay failures leave the day due for a later round."""
        now = self.clock()
        outcomes = []
        for practice_id, day in self.due(now):
            try:
                outcome = self.send_one(practice_id, day)
            except CallstreamError as exc:
                outcome = DigestOutcome(practice_id, day, "failed", error=str(exc))
            if outcome.status == "failed":
                self._failed_at[(practice_id, day)] = now
                log.warning("digest of %s for %s not sent: %s", practice_id, day, outcome.error)
            else:
                self._settled.add((practice_id, day))
                self._failed_at.pop((practice_id, day), None)
                if outcome.status == "unconfirmed":
                    log.warning("digest of %s for %s has a claim without an outcome (a process stopped while sending "
                                "it?); not sent again", practice_id, day)
            outcomes.append(outcome)
        return outcomes

    def run(self, stop: threading.Event, tick_s: float = TICK_S) -> None:
        """The schedule until ``stop`` (a sinks thread)."""
        log.info("digest schedule: %d practices with recipients, sent at %s local time",
                 sum(1 for practice in self.tenants.values() if practice.digest_recipients), self.send_at)
        while not stop.is_set():
            try:
                self.run_due()
            except Exception as exc:  # noqa: BLE001 - the audit sink beside it must keep running
                log.error("digest round failed with %s; tried again next round", type(exc).__name__)
            stop.wait(tick_s)

    def _deliver(self, practice: Practice, claim: Claim) -> DigestOutcome:
        started = time.perf_counter()
        try:
            figures = self.figures(practice.practice_id, claim.day)
            message = digest_message(practice.practice_id, practice.name, figures, sender=self.sender,
                                     recipients=practice.digest_recipients, call_url=self.call_url, now=self.clock())
            assert self.relay is not None
            refused = self.relay.send(message)
        except CallstreamError as exc:
            self.sends.failed(claim, str(exc))
            return DigestOutcome(practice.practice_id, claim.day, "failed", error=str(exc))
        delivered = len(practice.digest_recipients) - refused
        self.sends.sent(claim, str(message["Message-ID"]), delivered)
        if refused:
            log.warning("digest of %s for %s: the relay refused %d of %d recipients", practice.practice_id, claim.day,
                        refused, len(practice.digest_recipients))
        log.info("digest of %s for %s sent to %d recipients in %.0f ms", practice.practice_id, claim.day, delivered,
                 (time.perf_counter() - started) * 1000)
        return DigestOutcome(practice.practice_id, claim.day, "sent", delivered, str(message["Message-ID"]))

    def _practice(self, practice_id: str) -> Practice:
        practice = self.tenants.get(practice_id)
        if practice is None:
            raise ConfigError(f"practice {practice_id[:64]} is not in the tenant directory")
        return practice
