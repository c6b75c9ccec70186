"""Pipeline test fixtures: the session sandbox, the pipeline's private broker and the sandbox's tenants, and the
worker's real Kafka outputs on that broker."""

import asyncio
from collections.abc import AsyncIterator

import pytest

from streams.outputs import KafkaOutputs
from tests.fixtures.pipeline import pipeline_broker, pipeline_cast, pipeline_tenants  # noqa: F401  (fixtures)
from tests.fixtures.sandbox import sandbox  # noqa: F401  (fixture registration)


@pytest.fixture
async def outputs(pipeline_broker: str) -> AsyncIterator[KafkaOutputs]:  # noqa: F811  (the imported fixture, requested by name)
    producer = KafkaOutputs(pipeline_broker)
    producer.start(asyncio.get_running_loop())
    try:
        yield producer
    finally:
        await producer.close()
