"""Which digests went out: ``digest_sends`` in the audit database, so a digest is sent at most once per
practice and day, across restarts and between processes sharing a ClickHouse server.

Each send is a claim: a ``claimed`` row, then ``sent`` or ``failed`` (``yielded`` for a claim that lost a
race). Before claiming, a practice-day with a ``sent`` claim, or a claim with no outcome yet (being sent, or
its process died mid-send: whether the mail left is unknown), is not sent again; a failed one may be. Claims
that race are ordered by the server's insert time (``at DEFAULT now64``): every claimer reads after its own
insert, so all of them see the earliest claim and only its owner sends.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import ClassVar

from sinks.clickhouse_schema import Migration
from sinks.clickhouse_store import AuditStore

SENDS_TABLE = "digest_sends"
DEFAULT_SERIES = "daily"
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="digest_sends: claims and outcomes of digest e-mails",
        statements=(
            """
            CREATE TABLE IF NOT EXISTS {database}.digest_sends
            (
                practice_id LowCardinality(String),
                digest_date Date,
                series LowCardinality(String) COMMENT 'daily; the demo uses a series of its own per run',
                claim_id UUID,
                state LowCardinality(String) COMMENT 'claimed, sent, failed, yielded',
                at DateTime64(3, 'UTC') DEFAULT now64(3),
                message_id String,
                recipients UInt16,
                error String COMMENT 'exception class and SMTP code only'
            )
            ENGINE = MergeTree
            ORDER BY (practice_id, digest_date, series, at, claim_id)
            """,
        ),
    ),
)


class SendState(StrEnum):
    CLAIMED = "claimed"
    SENT = "sent"
    FAILED = "failed"
    YIELDED = "yielded"


class DayStatus(StrEnum):
    """Where one practice's digest of one day stands."""

    FREE = "free"
    """Never claimed, or every claim failed: may be (re)sent."""
    SENT = "sent"
    UNCONFIRMED = "unconfirmed"
    """A claim without an outcome: being sent now, or its process stopped while sending."""


@dataclass(frozen=True, slots=True)
class Claim:
    practice_id: str
    day: date
    series: str
    claim_id: str


class DigestLog(AuditStore):
    """Claims and outcomes in ``digest_sends`` (the audit store's connection, DDL and error handling)."""

    migrations_table = "digest_migrations"
    sharding_keys: ClassVar[dict[str, str]] = {SENDS_TABLE: "cityHash64(practice_id)"}
    """A practice's claims share a shard, so every claimer reads them all."""

    def migrate(self, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
        return super().migrate(migrations)

    def status(self, practice_id: str, day: date, series: str = DEFAULT_SERIES) -> DayStatus:
        """Raises StoreUnavailableError when ClickHouse does not answer."""
        outcomes = self._claims(practice_id, day, series)
        if any(SendState.SENT in states for states in outcomes.values()):
            return DayStatus.SENT
        if any(states == {SendState.CLAIMED} for states in outcomes.values()):
            return DayStatus.UNCONFIRMED
        return DayStatus.FREE

    def claim(self, practice_id: str, day: date, series: str = DEFAULT_SERIES) -> Claim | DayStatus:
        """The claim to send this practice's digest of ``day``, or why there is none (SENT or UNCONFIRMED: the
        day is sent or being sent; a lost race reads as UNCONFIRMED)."""
        status = self.status(practice_id, day, series)
        if status is not DayStatus.FREE:
            return status
        claim = Claim(practice_id, day, series, str(uuid.uuid4()))
        self._record(claim, SendState.CLAIMED)
        live = [claim_id for claim_id, states in self._claims(practice_id, day, series).items()
                if states == {SendState.CLAIMED}]
        if live and live[0] == claim.claim_id:
            return claim
        self._record(claim, SendState.YIELDED)
        return DayStatus.UNCONFIRMED

    def sent(self, claim: Claim, message_id: str, recipients: int) -> None:
        self._record(claim, SendState.SENT, message_id=message_id, recipients=recipients)

    def failed(self, claim: Claim, error: str) -> None:
        self._record(claim, SendState.FAILED, error=error[:200])

    def sends(self, practice_id: str | None = None) -> list[tuple[str, date, str, str, int]]:
        """(practice, day, series, message id, recipients) of every sent digest, oldest first."""
        where = "AND practice_id = {practice_id:String}" if practice_id else ""
        rows = self._query(
            f"SELECT practice_id, digest_date, series, message_id, recipients FROM {self.database}.{SENDS_TABLE} "
            f"WHERE state = 'sent' {where} ORDER BY at, claim_id", {"practice_id": practice_id or ""})
        return [(row[0], row[1], row[2], row[3], int(row[4])) for row in rows]

    def _claims(self, practice_id: str, day: date, series: str) -> dict[str, set[SendState]]:
        """Each claim's states, claims in the order they were made."""
        rows = self._query(
            f"SELECT toString(claim_id), groupArray(state), min(at) AS first FROM {self.database}.{SENDS_TABLE} "
            "WHERE practice_id = {practice_id:String} AND digest_date = {day:Date} AND series = {series:String} "
            "GROUP BY claim_id ORDER BY first, claim_id",
            {"practice_id": practice_id, "day": day, "series": series})
        return {row[0]: {SendState(state) for state in row[1]} for row in rows}

    def _record(self, claim: Claim, state: SendState, *, message_id: str = "", recipients: int = 0,
                error: str = "") -> None:
        self._insert(SENDS_TABLE, [(claim.practice_id, claim.day, claim.series, uuid.UUID(claim.claim_id), state.value,
                                    message_id, recipients, error)],
                     ("practice_id", "digest_date", "series", "claim_id", "state", "message_id", "recipients", "error"))
