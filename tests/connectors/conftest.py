"""Connector test fixtures: sandbox practices as tenant-directory entries, clients, a private sandbox.

The session `sandbox` (a `python -m sandbox` subprocess) serves reads and ordinary writes. Tests that
inject faults, revoke tokens or shrink limits use `private_sandbox`, a separate world in a background
thread, so they never disturb other packages' tests sharing the session sandbox.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from callstream.tenants import Practice
from connectors.fhir import ModMedClient
from connectors.ratelimit import RateLimiterRegistry
from sandbox.generator import build_world
from sandbox.world import SandboxWorld
from tests.connectors.helpers import PracticeSet, Recorder
from tests.fixtures.pipeline import pipeline_cast, pipeline_tenants  # noqa: F401  (test_dispatch's practices)
from tests.fixtures.sandbox import SandboxServer, running_sandbox, sandbox  # noqa: F401  (fixture registration)


@pytest.fixture(scope="session")
def sandbox_practices(sandbox: SandboxServer, tmp_path_factory: pytest.TempPathFactory) -> PracticeSet:  # noqa: F811
    return PracticeSet(sandbox, tmp_path_factory.mktemp("sandbox-credentials"))


@pytest.fixture(scope="session")
def private_world() -> SandboxWorld:
    return build_world(seed=23, practices=3, patients_per_practice=40)


@pytest.fixture(scope="session")
def private_sandbox(private_world: SandboxWorld) -> Iterator[SandboxServer]:
    with running_sandbox(private_world) as server:
        yield server


@pytest.fixture(scope="session")
def private_practices(private_sandbox: SandboxServer, tmp_path_factory: pytest.TempPathFactory) -> PracticeSet:
    return PracticeSet(private_sandbox, tmp_path_factory.mktemp("private-credentials"))


@pytest.fixture(scope="session")
def limiters() -> RateLimiterRegistry:
    """One registry for the session, like one process: consecutive tests share each API key's budget."""
    return RateLimiterRegistry()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def client(limiters: RateLimiterRegistry, recorder: Recorder) -> AsyncIterator[ModMedClient]:
    async with ModMedClient(limiters=limiters, observer=recorder) as modmed:
        yield modmed


@pytest.fixture
def main_practice(sandbox_practices: PracticeSet) -> Practice:
    """Proprietary, no FHIR Task create (pain-1001 in the seeded sandbox)."""
    return sandbox_practices.proprietary(fhir_task_create=False)


@pytest.fixture
def task_practice(sandbox_practices: PracticeSet) -> Practice:
    """Proprietary with FHIR Task create."""
    return sandbox_practices.proprietary(fhir_task_create=True)
