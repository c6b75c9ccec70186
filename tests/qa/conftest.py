"""QA view fixtures: an audit store seeded by the real code paths, users, the app and its server.

Scripted calls of two practices run through `CallProcessor` (the worker's shell around the call-flow core)
against the session sandbox; its audit records are Avro-encoded and go through the ClickHouse sink's
`AuditRowProcessor` into a private database of the session's chDB, and its review-queue commands become
items through review.core as `callstream queue run` makes them. Only Kafka is left out (the outputs are
collected in memory, acknowledged at once).

Practice A (pain-1002, write phase): a booking, a refill request (escalated, provider task) and a
controlled visit with an expired agreement (blocked). Practice B (pain-1003, read-only): a refill request,
queued for staff; one of its items is resolved.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from callstream.tenants import TenantDirectory
from connectors.dispatch import Dispatcher
from connectors.fhir import ModMedClient
from connectors.ledger import InMemoryLedger
from connectors.operations import ModMedConnector
from qa.app import QaConfig
from qa.records import QaRecords
from qa.server import QaServer
from qa.users import UserDirectory, add_user
from review.core import item_from_command, resolve
from review.reader import StoreReader
from review.store import ReviewStore
from schemas.models import CommandRoute, SlotChosen
from schemas.serde import AvroSerde
from schemas.topics import AUDIT, CALL_EVENTS
from sinks.audit_rows import AuditRowProcessor
from sinks.clickhouse_store import AuditStore
from devkit.cast import PracticeCast, Script, booking, controlled_visit, refill
from streams.metrics import Metrics
from streams.call_states import InMemoryCallStates
from streams.processor import CallProcessor
from streams.records import RawEvent
from devkit.telephony import OFFERED_SLOT
from tests.fixtures.outputs import InMemoryOutputs
from tests.fixtures.pipeline import pipeline_cast, pipeline_tenants  # noqa: F401  (fixture registration)
from tests.fixtures.sandbox import sandbox  # noqa: F401  (fixture registration)

PRACTICE_A, PRACTICE_B = "pain-1002", "pain-1003"
PASSWORDS = {"ana": "ana-correct-horse-1", "ben": "ben-battery-staple-2"}
USERS = {"ana": PRACTICE_A, "ben": PRACTICE_B}


@dataclass(frozen=True)
class QaWorld:
    store: AuditStore
    records: QaRecords
    tenants_file: Path
    tenants: TenantDirectory
    calls: dict[str, str]
    """label → call id: a_booking, a_refill, a_blocked (practice A), b_refill (practice B)."""
    users_ref: str


async def _play(tenants: TenantDirectory, scripts: list[Script]) -> InMemoryOutputs:
    """Each script's events through one CallProcessor, a slot choice naming the slot its offer listed."""
    published, ledger, serde = InMemoryOutputs(), InMemoryLedger(), AvroSerde.for_topic(CALL_EVENTS)
    async with ModMedClient() as client:
        processor = CallProcessor(tenants=tenants, dispatcher=Dispatcher(ModMedConnector(client, ledger), ledger),
                                  outputs=published, states=InMemoryCallStates(), metrics=Metrics())

        offsets = iter(range(1_000_000))

        async def call(script: Script) -> None:
            for event in script.events:
                match = OFFERED_SLOT.match(event.payload.slot_id) if isinstance(event.payload, SlotChosen) else None
                if match is not None:
                    offer = next(reply for reply in reversed(published.replies)
                                 if reply.call_id == script.call_id and reply.offered_slots)
                    slot = offer.offered_slots[int(match.group(1)) - 1]
                    event = event.model_copy(update={"payload": SlotChosen(slot_id=slot.slot_id,
                                                                           offer_id=str(offer.reply_id))})
                await processor.handle(RawEvent(CALL_EVENTS, 0, next(offsets), event.call_id.encode(),
                                                serde.encode(event.to_avro())))

        await asyncio.gather(*(call(script) for script in scripts))
    return published


@pytest.fixture(scope="session")
def qa_world(clickhouse_client: Any, pipeline_tenants: tuple[Path, TenantDirectory],  # noqa: F811
             pipeline_cast: dict[str, PracticeCast], tmp_path_factory: pytest.TempPathFactory) -> Iterator[QaWorld]:  # noqa: F811
    tenants_file, tenants = pipeline_tenants
    a, b = pipeline_cast[PRACTICE_A], pipeline_cast[PRACTICE_B]
    scripts = {"a_booking": booking(a, a.plain[-1], "follow-up"), "a_refill": refill(a, a.refill[-1]),
               "a_blocked": controlled_visit(a, a.expired[-1]), "b_refill": refill(b, b.refill[-1])}
    published = asyncio.run(_play(tenants, list(scripts.values())))
    database = f"qa_{uuid.uuid4().hex[:12]}"
    store = AuditStore(clickhouse_client, database)
    store.migrate()
    rows = AuditRowProcessor()
    audit_serde = AvroSerde.for_topic(AUDIT)
    store.insert([rows.process(audit_serde.encode(event.to_avro())) for event in published.audits])
    reviews = ReviewStore(clickhouse_client, database)
    reviews.migrate()
    now = datetime.now(UTC)
    items = [item_from_command(command, 0, offset, now, retries=False)
             for offset, command in enumerate(published.commands)
             if command.route is CommandRoute.REVIEW_QUEUE]
    for item in items:
        reviews.put(item)
    b_items = [item for item in items if item.practice_id == PRACTICE_B]
    assert b_items, "the read-only practice's refill is queued for staff"
    reviews.put(resolve(b_items[0], "qa-test", "called the patient back", now))
    users_ref = f"file:{tmp_path_factory.mktemp('qa-users') / 'users.json'}"
    for username, practice_id in USERS.items():
        add_user(users_ref, username, practice_id, PASSWORDS[username])
    try:
        yield QaWorld(store, QaRecords(store, StoreReader(reviews), tenants), tenants_file, tenants,
                      {label: script.call_id for label, script in scripts.items()}, users_ref)
    finally:
        clickhouse_client.command(f"DROP DATABASE IF EXISTS {database}")


def qa_config(world: QaWorld) -> QaConfig:
    return QaConfig(world.records, UserDirectory(world.users_ref), world.tenants, "qa-test-cookie-key")


@pytest.fixture(scope="session")
def qa_server(qa_world: QaWorld) -> Iterator[QaServer]:
    with QaServer(qa_config(qa_world)) as server:
        yield server


@pytest.fixture
def client(qa_server: QaServer) -> Iterator[httpx.Client]:
    """A fresh cookie jar against the session's QA server."""
    with httpx.Client(base_url=qa_server.url, timeout=30) as made:
        yield made
