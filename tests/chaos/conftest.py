"""Chaos fixtures: the session sandbox, its tenant directory and callers (tests/fixtures), and a private
stack per test (tests/chaos/harness.py), so a broker one test pauses or crashes never touches another."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

import pytest

from callstream.tenants import TenantDirectory
from devkit.cast import PracticeCast
from tests.chaos.harness import ChaosRun, RunFactory, chaos_run
from tests.fixtures.pipeline import pipeline_cast, pipeline_tenants  # noqa: F401  (fixture registration)
from tests.fixtures.sandbox import SandboxServer, sandbox  # noqa: F401  (fixture registration)


@pytest.fixture
def chaos(sandbox: SandboxServer, pipeline_tenants: tuple[Path, TenantDirectory],  # noqa: F811
          pipeline_cast: dict[str, PracticeCast], tmp_path: Path) -> Iterator[RunFactory]:  # noqa: F811
    """Starts a run (``chaos(seed=..., broker_env=..., storage_engine=...)``); everything it started is
    killed at the end of the test, passed or failed."""
    with ExitStack() as stack:
        def start(*, seed: int, **options: Any) -> ChaosRun:
            context: AbstractContextManager[ChaosRun] = chaos_run(sandbox, pipeline_tenants[0], pipeline_cast,
                                                                  tmp_path, seed=seed, **options)
            return stack.enter_context(context)

        yield start
