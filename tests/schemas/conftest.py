"""Fixtures of the event-contract tests: a real registry-compatible HTTP server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from schemas.registry import SchemaRegistryClient
from tests.schemas.schema_registry_double import SchemaRegistryDouble


@pytest.fixture(scope="session")
def shared_registry() -> Iterator[SchemaRegistryDouble]:
    """One registry for tests that only register and read back (hypothesis round trips)."""
    registry = SchemaRegistryDouble().start()
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def shared_registry_client(shared_registry: SchemaRegistryDouble) -> Iterator[SchemaRegistryClient]:
    with SchemaRegistryClient(shared_registry.url) as client:
        yield client


@pytest.fixture
def registry() -> Iterator[SchemaRegistryDouble]:
    """A fresh registry for tests that count requests, require auth or inject faults."""
    fresh = SchemaRegistryDouble().start()
    yield fresh
    fresh.stop()


@pytest.fixture
def registry_client(registry: SchemaRegistryDouble) -> Iterator[SchemaRegistryClient]:
    with SchemaRegistryClient(registry.url) as client:
        yield client
