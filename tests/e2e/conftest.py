"""End-to-end fixtures: the session sandbox plus the pipeline's broker, tenants and worker."""

from tests.fixtures.pipeline import (  # noqa: F401  (fixture registration)
    alert_receiver,
    pipeline_broker,
    pipeline_cast,
    pipeline_tenants,
    pipeline_worker,
)
from tests.fixtures.sandbox import sandbox  # noqa: F401  (fixture registration)
