"""The Outputs protocol (streams.outputs): the worker's Kafka outputs and the tests' in-memory one take and
return the same things, so a processor test against the fake exercises the calls the worker makes."""

from __future__ import annotations

import inspect

import pytest

from streams.outputs import KafkaOutputs, Outputs
from tests.fixtures.outputs import InMemoryOutputs

PUBLISHING = [name for name, member in vars(Outputs).items() if inspect.isfunction(member) and not name.startswith("_")]


def test_the_protocol_names_what_the_processor_publishes() -> None:
    assert sorted(PUBLISHING) == ["audit", "command", "dead_letter", "reply"]


@pytest.mark.parametrize("implementation", [KafkaOutputs, InMemoryOutputs])
@pytest.mark.parametrize("name", PUBLISHING)
def test_every_implementation_has_the_protocols_signatures(implementation: type, name: str) -> None:
    assert inspect.signature(getattr(implementation, name)) == inspect.signature(getattr(Outputs, name))
