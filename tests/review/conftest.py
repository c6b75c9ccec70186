"""The review queue's end-to-end fixtures: the pipeline's broker, tenants, cast and worker, and the sandbox."""

from tests.fixtures.pipeline import (  # noqa: F401  (fixture registration)
    alert_receiver,
    pipeline_broker,
    pipeline_cast,
    pipeline_tenants,
    pipeline_worker,
)
from tests.fixtures.sandbox import sandbox  # noqa: F401  (fixture registration)
