"""Serialization throughput of the event contract: `python -m devkit.bench_schemas [--events N]`.

The pipeline targets 2,000 events/s per worker; this prints what one core spends on the contract
part of that budget (model validation + Avro framing), in both directions, per event shape.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from schemas.models import (
    AuditAction,
    AuditEvent,
    AuditOutcome,
    AvroModel,
    CallEvent,
    CallStarted,
    Intent,
    IntentRecognised,
    OfferedSlot,
    Reply,
)
from schemas.serde import AvroSerde
from schemas.topics import AUDIT, CALL_EVENTS, REPLIES


def _call_event(seq: int) -> CallEvent:
    payload = (
        CallStarted(caller_number="+15125550142")
        if seq % 2
        else IntentRecognised(
            intent=Intent.BOOK_APPOINTMENT,
            confidence=0.93,
            visit_reason="esi",
            provider_hint="Dr. Rivera",
            medication_mentioned=False,
            controlled_substance_mentioned=False,
            transcript_snippet="I need my next epidural injection next week",
        )
    )
    return CallEvent(
        event_id=uuid.uuid4(),
        call_id=f"call-{seq}",
        seq=seq,
        occurred_at=datetime.now(UTC),
        called_number="+15125550100",
        payload=payload,
    )


def _reply(seq: int) -> Reply:
    start = datetime(2026, 3, 9, 9, tzinfo=UTC)
    return Reply(
        reply_id=uuid.uuid4(),
        call_id=f"call-{seq}",
        in_reply_to=uuid.uuid4(),
        practice_id="pain-austin",
        template="offer_slots",
        text="I have three openings with Dr. Rivera next week.",
        offered_slots=[
            OfferedSlot(
                slot_id=f"slot-{index}",
                start=start + timedelta(hours=index),
                end=start + timedelta(hours=index, minutes=30),
                practitioner_display="Dr. Rivera",
                location_display="North Austin",
                visit_reason="esi",
            )
            for index in range(3)
        ],
        escalated=False,
        created_at=datetime.now(UTC),
    )


def _audit(seq: int) -> AuditEvent:
    return AuditEvent(
        event_id=uuid.uuid4(),
        occurred_at=datetime.now(UTC),
        practice_id="pain-austin",
        call_id=f"call-{seq}",
        caller_number="+15125550142",
        action=AuditAction.FHIR_READ,
        outcome=AuditOutcome.SUCCESS,
        resource_type="Slot",
        resource_ids=["slot-1", "slot-2"],
        latency_ms=41.5,
        detail={"http_status": "200"},
    )


def _rate(events: int, seconds: float) -> str:
    return f"{events / seconds:>10,.0f}/s  {seconds / events * 1e6:7.1f} µs/event"


def _measure(name: str, topic: str, build: Callable[[int], AvroModel], model: type[AvroModel], events: int) -> None:
    """Time encode (to_avro + encode) and decode (decode + from_avro) of `events` prebuilt models."""
    serde = AvroSerde.for_topic(topic)
    instances = [build(seq) for seq in range(events)]
    started = time.perf_counter()
    encoded = [serde.encode(instance.to_avro()) for instance in instances]
    encode_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for message in encoded:
        model.from_avro(serde.decode(message))
    decode_seconds = time.perf_counter() - started
    size = sum(map(len, encoded)) / events
    print(f"{name:<11} {size:6.0f} B  encode {_rate(events, encode_seconds)}  decode {_rate(events, decode_seconds)}")


def main(argv: list[str] | None = None) -> int:
    """Print per-shape throughput of single-object encoding on this machine."""
    parser = argparse.ArgumentParser(prog="python -m devkit.bench_schemas", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000, help="events per shape (default 20000)")
    arguments = parser.parse_args(argv)
    if arguments.events < 1:
        parser.error("--events must be at least 1")
    print(f"single-object encoding, {arguments.events} events per shape, one core; target 2,000 events/s per worker")
    _measure("CallEvent", CALL_EVENTS, _call_event, CallEvent, arguments.events)
    _measure("Reply", REPLIES, _reply, Reply, arguments.events)
    _measure("AuditEvent", AUDIT, _audit, AuditEvent, arguments.events)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
