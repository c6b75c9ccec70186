"""End-to-end fixtures: the session sandbox plus the pipeline's broker, tenants and worker, and per test a
telephony side, an audit-topic reader and a ModMed client."""

from collections.abc import AsyncIterator, Iterator

import pytest

from connectors.fhir import ModMedClient
from schemas.models import AuditEvent
from schemas.topics import AUDIT
from devkit.telephony import Telephony
from tests.fixtures.pipeline import (  # noqa: F401  (fixture registration)
    TopicReader,
    WorkerProcess,
    alert_receiver,
    pipeline_broker,
    pipeline_cast,
    pipeline_tenants,
    pipeline_worker,
)
from tests.fixtures.sandbox import sandbox  # noqa: F401  (fixture registration)


@pytest.fixture
def telephony(pipeline_broker: str, pipeline_worker: WorkerProcess) -> Iterator[Telephony]:  # noqa: F811
    phone = Telephony(pipeline_broker, reply_timeout_s=45)
    phone.listen()
    try:
        yield phone
    finally:
        phone.close()


@pytest.fixture
def audit(pipeline_broker: str) -> Iterator[TopicReader]:  # noqa: F811
    reader = TopicReader(pipeline_broker, AUDIT, AuditEvent)
    try:
        yield reader
    finally:
        reader.close()


@pytest.fixture
async def modmed() -> AsyncIterator[ModMedClient]:
    async with ModMedClient() as client:
        yield client
