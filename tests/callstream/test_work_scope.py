"""The work scope: one explicit value per call event, handed down from the processor to the FHIR client."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from callstream.deadline import Deadline
from callstream.work_scope import BACKGROUND, EventPosition, WorkScope, WriteRequests


async def test_a_scope_under_another_deadline_keeps_the_events_tally_and_held_acks() -> None:
    event = WorkScope.for_event(4, 120)
    turn = Deadline.after(4.0)
    write = event.under(turn).under(Deadline.after(30.0))
    assert event.deadline is None and event.under(turn).deadline is turn
    assert write.event == EventPosition(4, 120)
    assert write.writes is event.writes and write.held_acks is event.held_acks, "one event, one tally, one list"
    acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    write.hold_ack(lambda: acknowledged)
    assert event.held_acks == [acknowledged]


def test_background_work_has_no_deadline_no_event_and_holds_nothing() -> None:
    assert BACKGROUND.deadline is None and BACKGROUND.event is None and BACKGROUND.writes is None
    published: list[str] = []
    with pytest.raises(RuntimeError):
        BACKGROUND.hold_ack(lambda: published.append("record"))  # type: ignore[arg-type, func-returns-value]
    assert published == [], "outside an event nothing could wait for the record: it is not published"
    assert BACKGROUND.under(Deadline.after(1.0)).event is None


def test_two_events_scopes_share_nothing() -> None:
    first, second = WorkScope.for_event(1, 10), WorkScope.for_event(1, 11)
    assert first.writes is not None and second.writes is not None
    first.writes.record(201)
    first.writes.record(None)
    assert first.writes == WriteRequests(sent=2, succeeded=1)
    assert second.writes == WriteRequests() and second.held_acks == [] and second.held_acks is not first.held_acks


@pytest.mark.parametrize(("status", "succeeded"), [(200, 1), (201, 1), (299, 1), (300, 0), (409, 0), (503, 0),
                                                   (None, 0)])
def test_a_write_counts_as_succeeded_only_on_a_2xx_answer(status: int | None, succeeded: int) -> None:
    tally = WriteRequests()
    tally.record(status)
    assert tally == WriteRequests(sent=1, succeeded=succeeded)


# ------------------------------------------------------------------ handed on at every layer

ROOT = Path(__file__).resolve().parents[2]
CHAIN = ("streams/work.py", "connectors/dispatch.py", "connectors/operations.py", "connectors/idempotent_writes.py",
         "connectors/slot_offers.py", "connectors/fhir.py", "connectors/ema/commands.py", "connectors/ema/directory.py")
"""The modules between the processor and the ledger / FHIR client that take a scope and pass it on."""


def scope_dropped(sources: dict[str, str]) -> list[str]:
    """Method calls, inside a function that has a ``scope``, to a method of the chain that takes one, without it.

    The chain's parameters default to BACKGROUND, so a call that forgot the scope would still run, only without
    the caller's deadline, event and tally: this finds such calls by name. ``get`` is only the ledger's."""
    trees = {path: ast.parse(source) for path, source in sources.items()}
    takes_scope = {node.name for tree in trees.values() for node in ast.walk(tree)
                   if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                   and any(arg.arg == "scope" for arg in [*node.args.args, *node.args.kwonlyargs])} - {"get"}
    dropped = []
    for path, tree in trees.items():
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef) or not any(
                    arg.arg == "scope" for arg in [*function.args.args, *function.args.kwonlyargs]):
                continue
            for call in ast.walk(function):
                if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
                    continue  # a bare name is a callable handed in, or a module helper: not a layer of the chain
                name = call.func.attr
                ledger_get = name == "get" and isinstance(call.func.value, ast.Attribute) \
                    and call.func.value.attr == "_ledger"
                if name not in takes_scope and not ledger_get:
                    continue
                passed = [*call.args, *(keyword.value for keyword in call.keywords)]
                if not any(isinstance(node, ast.Name) and node.id == "scope" for arg in passed for node in ast.walk(arg)):
                    dropped.append(f"{path}:{call.lineno} {name}()")
    return dropped


def test_every_layer_hands_the_scope_on() -> None:
    assert scope_dropped({path: (ROOT / path).read_text() for path in CHAIN}) == []


def test_the_check_finds_a_call_that_drops_the_scope() -> None:
    source = '''
class Connector:
    async def read_flags(self, practice, *, scope=BACKGROUND):
        return await self.client.search_json(practice, "Flag", {})

    async def book(self, practice, key, *, scope=BACKGROUND):
        entry = self._ledger.get(key)
        await self._ledger.begin(key, "BOOK", scope=scope.under(None))
        return self._cache.get(key)

class Client:
    async def search_json(self, practice, resource_type, params, *, scope=BACKGROUND): ...
'''
    assert scope_dropped({"made_up.py": source}) == ["made_up.py:4 search_json()", "made_up.py:7 get()"]
