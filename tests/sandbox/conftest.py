"""Sandbox test helpers. The `sandbox` fixture comes from tests/fixtures/sandbox.py; until
tests/conftest.py registers that module in `pytest_plugins`, it is imported here."""

from __future__ import annotations

import httpx
import pytest

from tests.fixtures.sandbox import SandboxServer, sandbox  # noqa: F401  (fixture registration)
from tests.sandbox.helpers import proprietary_headers


@pytest.fixture(scope="session")
def http() -> httpx.Client:
    with httpx.Client(timeout=15.0) as client:
        yield client


@pytest.fixture(scope="session")
def main_practice(sandbox: SandboxServer) -> dict:
    """A proprietary practice without FHIR Task create and with an EMA-only template."""
    return sandbox.practice(track="proprietary", fhir_task_create=False)


@pytest.fixture(scope="session")
def task_practice(sandbox: SandboxServer) -> dict:
    return sandbox.practice(track="proprietary", fhir_task_create=True)


@pytest.fixture(scope="session")
def certified_practice(sandbox: SandboxServer) -> dict:
    return sandbox.practice(track="certified")


@pytest.fixture
def main_headers(main_practice: dict, http: httpx.Client) -> dict[str, str]:
    return proprietary_headers(main_practice, http)


@pytest.fixture
def task_headers(task_practice: dict, http: httpx.Client) -> dict[str, str]:
    return proprietary_headers(task_practice, http)
