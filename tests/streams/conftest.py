"""Pipeline test fixtures: the session sandbox, the pipeline's private broker and the sandbox's tenants."""

from tests.fixtures.pipeline import pipeline_broker, pipeline_cast, pipeline_tenants  # noqa: F401  (fixtures)
from tests.fixtures.sandbox import sandbox  # noqa: F401  (fixture registration)
