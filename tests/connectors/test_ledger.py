"""Idempotency ledger: deterministic keys, state transitions, hostile stored values."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.ledger import InMemoryLedger, LedgerState, MappingLedger, idempotency_key

texts = st.text(min_size=1, max_size=40)


@given(texts, texts, texts)
def test_key_is_deterministic_and_hides_its_inputs(call_id: str, command: str, target: str) -> None:
    key = idempotency_key(call_id, command, target)
    assert key == idempotency_key(call_id, command, target)
    assert key.startswith("cs1-") and len(key) == 68
    assert set(key[4:]) <= set("0123456789abcdef")  # a digest: no call id or target inside


@given(texts, texts, texts, texts)
def test_different_inputs_give_different_keys(call_id: str, command: str, target: str, other: str) -> None:
    if other != target:
        assert idempotency_key(call_id, command, target) != idempotency_key(call_id, command, other)
    # Field boundaries are unambiguous: ("a|b", "c") and ("a", "b|c") must not collide.
    assert idempotency_key(call_id + "|x", command, target) != idempotency_key(call_id, "x|" + command, target)


@pytest.mark.parametrize("bad", ["", None, 5])
def test_key_parts_must_be_non_empty_strings(bad: object) -> None:
    with pytest.raises(ValueError):
        idempotency_key(bad, "BOOK_APPOINTMENT", "Patient/1")  # type: ignore[arg-type]


async def test_pending_done_failed_lifecycle_in_a_plain_mapping() -> None:
    store: dict[str, bytes] = {}
    ledger = MappingLedger(store)
    key = idempotency_key("call-1", "BOOK_APPOINTMENT", "Patient/p1|Slot/s1")
    assert ledger.get(key) is None
    assert (await ledger.begin(key, "BOOK_APPOINTMENT")).state is LedgerState.PENDING
    assert (await ledger.begin(key, "BOOK_APPOINTMENT")).attempts == 2
    done = await ledger.complete(key, "Appointment", "appt-9")
    assert (done.state, done.resource_id, done.attempts, done.command) == (LedgerState.DONE, "appt-9", 2, "BOOK_APPOINTMENT")
    assert json.loads(store[key])["state"] == "done"  # a changelog record is the entry's JSON
    assert ledger.get(key) == done
    failed = await ledger.fail(key, "ConflictError")
    assert failed.state is LedgerState.FAILED and failed.failure == "ConflictError"


async def test_only_a_write_ahead_ledger_proves_a_key_unattempted() -> None:
    class WriteAhead(MappingLedger):
        write_ahead = True

    key = idempotency_key("call-3", "CREATE_TASK", "Patient/p1|refill")
    plain, durable = MappingLedger({}), WriteAhead({})
    assert not plain.proves_unattempted(key), "an entry of a plain ledger may have been lost"
    assert durable.proves_unattempted(key)
    await durable.begin(key, "CREATE_TASK")
    assert not durable.proves_unattempted(key)
    assert not WriteAhead({key: b"garbage"}).proves_unattempted(key), "an unreadable entry is an attempt"


@pytest.mark.parametrize(
    "stored",
    [
        {"garbage": True},
        {"key": "cs1-" + "0" * 64, "command": "X", "state": "done", "attempts": 1, "updated_at": "2026-01-01T00:00:00Z"},
        {"key": "cs1-" + "a" * 64, "command": "X", "state": "exploded", "attempts": 1, "updated_at": "2026-01-01T00:00:00Z"},
        "not-a-dict",
        b"\xff\xfe",
    ],
)
def test_corrupt_or_foreign_entries_read_as_pending(stored: object) -> None:
    key = idempotency_key("call-2", "CANCEL_APPOINTMENT", "Appointment/a1")
    raw = json.dumps(stored).encode() if isinstance(stored, dict) else stored
    ledger = MappingLedger({key: raw})  # type: ignore[dict-item]
    entry = ledger.get(key)
    assert entry is not None and entry.state is LedgerState.PENDING and entry.key == key


async def test_in_memory_ledger_is_bounded() -> None:
    ledger = InMemoryLedger(max_entries=3)
    keys = [idempotency_key(f"call-{n}", "CREATE_TASK", "Patient/p") for n in range(5)]
    for key in keys:
        await ledger.begin(key, "CREATE_TASK")
    assert [ledger.get(key) is not None for key in keys] == [False, False, True, True, True]
    with pytest.raises(ValueError):
        InMemoryLedger(max_entries=0)
