"""`callstream siem redeliver --practice P [--since T] [--until T]`: re-send dead-lettered audit events.

Reads `callstream.siem-dead-letter.v1` and keeps the practice's letters that hold an audit event
(undecodable or mislabelled messages have nothing to send) whose `occurred_at` is in
[since, until), once per event id, in the audit topic's order. Each is posted to the practice's
current endpoint signed again with the same webhook-id (the audit event id), so a receiver that
already has it de-duplicates. Events are re-sent after newer ones the practice already received:
receivers order by the event's `time`, not by arrival.

Tansu reports stale high watermarks, so the dead-letter topic counts as read once nothing new
arrived for `--idle` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import httpx
from confluent_kafka import Consumer, TopicPartition

from callstream.cli_options import (
    add_logging_options,
    add_service_options,
    configure_logging_from,
    iso_time,
    require_tenants_file,
    settings_from,
)
from callstream.backends import wait_for_broker
from callstream.errors import ConfigError
from callstream.retry import Backoff
from callstream.tenants import TenantDirectory, load_tenant_directory
from schemas.errors import SchemaError
from schemas.models import AuditEvent, DeadLetter
from schemas.serde import AvroSerde
from schemas.topics import AUDIT, SIEM_DEAD_LETTER
from sinks.formats import render_body
from sinks.kafka_io import AuditDecoder
from sinks.payload import audit_record
from sinks.siem.endpoints import Endpoint, EndpointDirectory, Undeliverable, post_signed

logger = logging.getLogger(__name__)

REDELIVERY_BACKOFF = Backoff(base_s=1.0, cap_s=8.0)
FIRST_FETCH_S = 5.0


@dataclass(frozen=True, slots=True)
class RedeliveryReport:
    """What a redelivery did; `failed_event_ids` stay in the dead-letter topic for the next run."""

    practice_id: str
    matched: int
    delivered: int
    failed_event_ids: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps({"practice_id": self.practice_id, "matched": self.matched, "delivered": self.delivered,
                           "failed": len(self.failed_event_ids), "failed_event_ids": list(self.failed_event_ids)})


def select_events(letters: Iterable[DeadLetter], practice_id: str, since: datetime | None, until: datetime | None,
                  decoder: AuditDecoder, audit_topic: str = AUDIT) -> list[AuditEvent]:
    """The practice's dead-lettered audit events in [since, until), once each, in audit-topic order."""
    chosen: dict[str, tuple[tuple[int, int], AuditEvent]] = {}
    for letter in letters:
        if letter.practice_id != practice_id or letter.source_topic != audit_topic:
            continue
        try:
            event = decoder.decode(letter.value)
        except SchemaError:
            continue
        if event.practice_id != practice_id:
            continue
        if (since is not None and event.occurred_at < since) or (until is not None and event.occurred_at >= until):
            continue
        chosen.setdefault(str(event.event_id), ((letter.source_partition, letter.source_offset), event))
    return [event for _, event in sorted(chosen.values(), key=lambda item: item[0])]


def read_siem_dead_letters(bootstrap: str, topic: str = SIEM_DEAD_LETTER, idle_s: float = 3.0,
                           timeout_s: float = 300.0) -> list[DeadLetter]:
    """Every record of the dead-letter topic (read without a group, nothing committed)."""
    serde = AvroSerde("DeadLetter")
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"siem-redeliver-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "log.connection.close": False,
                         "logger": logging.getLogger("sinks.kafka")})
    letters: list[DeadLetter] = []
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise ConfigError(f"dead-letter topic {topic} not found")
        consumer.assign([TopicPartition(topic, partition, 0) for partition in metadata.partitions])
        deadline = time.monotonic() + timeout_s
        last_arrival = time.monotonic() + FIRST_FETCH_S  # the first fetch also pays for connecting
        while time.monotonic() < deadline and time.monotonic() - last_arrival < idle_s:
            message = consumer.poll(0.2)
            if message is None or message.error() is not None:
                continue
            last_arrival = time.monotonic()
            try:
                letters.append(DeadLetter.from_avro(serde.decode(message.value())))
            except SchemaError as exc:
                logger.warning("unreadable record in %s skipped (%s)", topic, type(exc).__name__)
    finally:
        consumer.close()
    return letters


async def redeliver(events: list[AuditEvent], endpoint: Endpoint, *, attempts: int = 5,
                    backoff: Backoff = REDELIVERY_BACKOFF, rng: random.Random | None = None,
                    request_timeout_s: float = 10.0) -> RedeliveryReport:
    """Post each event in order, a few attempts each; a 410 stops the run (the endpoint is gone)."""
    rng = rng or random.Random()
    timeout = httpx.Timeout(request_timeout_s, pool=None).as_dict()
    delivered = 0
    failed: list[str] = []
    gone = False
    async with httpx.AsyncHTTPTransport() as transport:
        for event in events:
            event_id = str(event.event_id)
            body = render_body(audit_record(event), endpoint.body_format)
            sent = False
            for attempt in range(0 if gone else attempts):
                status, retry_after_s, _, _ = await post_signed(transport, endpoint, event_id, body, timeout)
                sent = status is not None and 200 <= status < 300
                gone = status == 410
                if sent or gone:
                    break
                if attempt + 1 < attempts:
                    await asyncio.sleep(min(max(backoff.delay(attempt, rng), retry_after_s or 0.0), backoff.cap_s))
            if sent:
                delivered += 1
            else:
                failed.append(event_id)
    return RedeliveryReport(endpoint.practice_id, len(events), delivered, tuple(failed))


def redeliver_practice(bootstrap: str, tenants: TenantDirectory, practice_id: str, *, since: datetime | None = None,
                       until: datetime | None = None, topic: str = SIEM_DEAD_LETTER, audit_topic: str = AUDIT,
                       idle_s: float = 3.0, decoder: AuditDecoder | None = None) -> RedeliveryReport:
    """Read, select and re-send one practice's dead-lettered events.

    Raises:
        ConfigError: the practice has no usable endpoint (unknown, no SIEM, unreadable secret).
    """
    target = EndpointDirectory(tenants).endpoint_for(practice_id)
    if isinstance(target, Undeliverable):
        raise ConfigError(f"practice {practice_id}: {target.reason}")
    events = select_events(read_siem_dead_letters(bootstrap, topic, idle_s), practice_id, since, until,
                           decoder or AuditDecoder(), audit_topic)
    return asyncio.run(redeliver(events, target))


def main(argv: list[str]) -> int:
    """`callstream siem redeliver --practice P [--since T] [--until T] [--tenants FILE] [--idle S]`."""
    parser = argparse.ArgumentParser(prog="callstream siem", description="SIEM firehose operations.")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("redeliver", help="re-send a practice's dead-lettered audit events")
    command.add_argument("--practice", required=True, help="practice id")
    command.add_argument("--since", type=iso_time, help="first event time to re-send (ISO 8601, inclusive)")
    command.add_argument("--until", type=iso_time, help="event time to stop before (ISO 8601, exclusive)")
    command.add_argument("--idle", type=float, default=3.0, help="seconds without a new dead letter that end the read")
    add_service_options(command, kafka=True, tenants=True)
    add_logging_options(command)
    options = parser.parse_args(argv)
    settings = settings_from(options)
    configure_logging_from(settings)
    tenants = load_tenant_directory(require_tenants_file(settings, "redeliver"))
    if options.practice not in tenants:
        raise ConfigError(f"{tenants.source}: no such practice {options.practice!r}")
    wait_for_broker(settings.bootstrap_servers, settings.connect_timeout_s)
    report = redeliver_practice(settings.bootstrap_servers, tenants, options.practice,
                                since=options.since, until=options.until, idle_s=options.idle)
    print(report.to_json())
    return 0 if not report.failed_event_ids else 1
