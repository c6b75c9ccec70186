"""The call sequencer: each call's events in order, different calls side by side, and a bound on how many
events the worker holds.

The agent (``streams.app``) hands every consumed call event to ``CallSequencer.submit`` and acknowledges it
from ``on_done``. At the bound, ``submit`` waits, and so does the consumer: a practice whose ModMed stalls
holds its calls' events, never the whole worker's memory. How many events are held is exported as
``callstream_events_in_flight``: near ``--max-in-flight`` the worker is being held back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from streams.metrics import Metrics


class CallSequencer:
    """Runs each call's events one after another while calls run side by side.

    Every submitted event chains behind the previous one of its key; ``max_in_flight`` bounds the events in
    flight over all calls, so a stalled practice cannot make the worker buffer without limit. With
    ``metrics``, their number is the ``callstream_events_in_flight`` gauge, read when it is scraped.
    """

    def __init__(self, max_in_flight: int = 2000, metrics: Metrics | None = None) -> None:
        self._tails: dict[bytes | None, asyncio.Future[None]] = {}
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight = 0
        if metrics is not None:
            metrics.watch_events_in_flight(lambda: self._in_flight)
        self._running: set[asyncio.Task[None]] = set()
        """The event loop keeps only weak references to tasks: these keep each event's task alive."""

    async def submit(self, key: bytes | None, work: Callable[[], Awaitable[None]],
                     on_done: Callable[[BaseException | None], None]) -> None:
        """Queue ``work`` behind its key's previous event; waits only while the in-flight bound is reached."""
        await self._slots.acquire()
        self._in_flight += 1
        previous = self._tails.get(key) if key is not None else None
        tail: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if key is not None:
            self._tails[key] = tail

        async def run() -> None:
            error: BaseException | None = None
            try:
                if previous is not None:
                    await asyncio.shield(previous)
                await work()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - handed to on_done, which decides
                error = exc
            finally:
                tail.set_result(None)
                if key is not None and self._tails.get(key) is tail:
                    del self._tails[key]
                self._in_flight -= 1
                self._slots.release()
            on_done(error)

        task = asyncio.ensure_future(run())
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def busy(self, key: bytes | None) -> bool:
        """Whether an event submitted now for ``key`` would wait behind an earlier one of its call."""
        return key is not None and key in self._tails

    @property
    def in_flight(self) -> int:
        """Events submitted and not yet done, waiting behind their call's previous one or running."""
        return self._in_flight
