"""Read-only access to review items for other processes (the audit read API, the daily digest).

The queue process owns its store (review/service.py); others ask its loopback API. Where the store is a
ClickHouse server (not the embedded chDB, which admits one process per data directory and one directory
per process), a reader can fall back to reading the table itself when the queue process is down.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import httpx

from callstream.errors import CallstreamError, ServiceUnavailableError
from callstream.settings import Settings
from review.core import ItemState
from review.service import DEFAULT_API_PORT
from review.store import ReviewStore

API_ENV = "CALLSTREAM_QUEUE_API"
DSN_ENV = "CALLSTREAM_QUEUE_DSN"
OPEN_STATES = (ItemState.OPEN, ItemState.RETRYING)


class ReviewReader(Protocol):
    """Review items as the queue API renders them (``ReviewItem.to_json_dict``)."""

    def items(self, practice_id: str, *, call_id: str | None = None, open_only: bool = False) -> list[dict[str, Any]]:
        """Raises ServiceUnavailableError when the items cannot be read now."""
        ...


class QueueApiReader:
    """Through the queue process's API (``CALLSTREAM_QUEUE_API``, default 127.0.0.1:19096)."""

    def __init__(self, api: str, timeout_s: float = 5.0) -> None:
        self.api = api.rstrip("/")
        self.timeout_s = timeout_s

    def items(self, practice_id: str, *, call_id: str | None = None, open_only: bool = False) -> list[dict[str, Any]]:
        query = {"practice": practice_id, **({"call": call_id} if call_id else {})}
        states = [state.value for state in OPEN_STATES] if open_only else [None]
        found: list[dict[str, Any]] = []
        for state in states:
            params = {**query, **({"state": state} if state else {})}
            try:
                response = httpx.get(f"{self.api}/items", params=params, timeout=self.timeout_s, trust_env=False)
                response.raise_for_status()
                items = response.json()["items"]
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                raise ServiceUnavailableError(f"no review queue answers at {self.api}") from None
            found.extend(item for item in items if isinstance(item, dict))
        return sorted(found, key=lambda item: (str(item.get("created_at")), str(item.get("item_id"))))


class StoreReader:
    """Straight from a review store (a ClickHouse server the queue process shares)."""

    def __init__(self, store: ReviewStore) -> None:
        self.store = store

    def items(self, practice_id: str, *, call_id: str | None = None, open_only: bool = False) -> list[dict[str, Any]]:
        try:
            states = OPEN_STATES if open_only else (None,)
            items = [item for state in states for item in self.store.select_items(practice_id, state, call_id=call_id)]
        except CallstreamError as exc:
            raise ServiceUnavailableError(f"review store: {exc}") from None
        return [item.to_json_dict() for item in sorted(items, key=lambda item: (item.created_at, item.item_id))]


class FirstAnswering:
    """The first reader that answers: the queue API, then the shared store."""

    def __init__(self, *readers: ReviewReader) -> None:
        self.readers = readers

    def items(self, practice_id: str, *, call_id: str | None = None, open_only: bool = False) -> list[dict[str, Any]]:
        failures = []
        for reader in self.readers:
            try:
                return reader.items(practice_id, call_id=call_id, open_only=open_only)
            except ServiceUnavailableError as exc:
                failures.append(str(exc))
        raise ServiceUnavailableError("; ".join(failures) or "no review reader")


def review_reader(settings: Settings, database: str | None = None) -> ReviewReader:
    """The queue API, and the store itself when it is on a ClickHouse server (see the module docstring)."""
    api = QueueApiReader(os.environ.get(API_ENV, f"http://127.0.0.1:{DEFAULT_API_PORT}"))
    dsn = os.environ.get(DSN_ENV) or settings.effective_clickhouse_dsn
    if dsn.startswith("chdb://"):
        return api
    return FirstAnswering(api, LazyStoreReader(dsn, database))


class LazyStoreReader:
    """A StoreReader connected at first use (the server may be down when the process starts)."""

    def __init__(self, dsn: str, database: str | None) -> None:
        self._dsn = dsn
        self._database = database
        self._reader: StoreReader | None = None

    def items(self, practice_id: str, *, call_id: str | None = None, open_only: bool = False) -> list[dict[str, Any]]:
        if self._reader is None:
            try:
                store = ReviewStore.open(self._dsn, self._database)
            except CallstreamError as exc:
                raise ServiceUnavailableError(f"review store: {exc}") from None
            self._reader = StoreReader(store)
        return self._reader.items(practice_id, call_id=call_id, open_only=open_only)
