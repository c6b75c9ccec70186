"""The call sequencer (streams.sequencer): a call's events in order, other calls going ahead, a bound on what
the worker holds, and that number exported as callstream_events_in_flight."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from callstream.metrics_server import serve_metrics
from streams.metrics import Metrics
from streams.sequencer import CallSequencer


async def test_the_sequencer_keeps_a_calls_order_while_other_calls_go_ahead() -> None:
    sequencer = CallSequencer(max_in_flight=10)
    order: list[str] = []
    done: list[BaseException | None] = []
    gate = asyncio.Event()

    def step(label: str, wait: bool = False, fail: bool = False) -> Any:
        async def run() -> None:
            if wait:
                await gate.wait()
            if fail:
                raise RuntimeError("broker gone")
            order.append(label)
        return run

    await sequencer.submit(b"call-a", step("a1", wait=True), done.append)
    await sequencer.submit(b"call-a", step("a2"), done.append)
    await sequencer.submit(b"call-b", step("b1"), done.append)
    await asyncio.sleep(0.05)
    assert order == ["b1"], "call b does not wait for call a"
    gate.set()
    await sequencer.submit(b"call-a", step("a3", fail=True), done.append)
    for _ in range(50):
        if len(done) == 4:
            break
        await asyncio.sleep(0.01)
    assert order == ["b1", "a1", "a2"]
    assert [type(error).__name__ for error in done if error is not None] == ["RuntimeError"]
    assert sequencer.in_flight == 0


def scraped_in_flight(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    [family] = [f for f in text_string_to_metric_families(text) if f.name == "callstream_events_in_flight"]
    [sample] = family.samples
    return sample.value


async def test_the_events_in_flight_are_scraped_while_they_wait_and_run_and_the_bound_holds_the_consumer() -> None:
    metrics = Metrics()
    sequencer = CallSequencer(max_in_flight=3, metrics=metrics)
    server = serve_metrics(metrics.registry, "127.0.0.1", 0)
    gate, done = asyncio.Event(), asyncio.Event()
    finished: list[BaseException | None] = []

    async def held() -> None:
        await gate.wait()

    def finish(error: BaseException | None) -> None:
        finished.append(error)
        if len(finished) == 4:
            done.set()

    try:
        assert await asyncio.to_thread(scraped_in_flight, server.port) == 0
        for key in (b"call-a", b"call-a", b"call-b"):  # one running and one waiting for call a, one for call b
            await sequencer.submit(key, held, finish)
        assert await asyncio.to_thread(scraped_in_flight, server.port) == 3 == sequencer.in_flight
        fourth = asyncio.ensure_future(sequencer.submit(b"call-c", held, finish))
        await asyncio.sleep(0.05)
        assert not fourth.done(), "at the bound the consumer waits"
        gate.set()
        await asyncio.wait_for(fourth, 5)
        await asyncio.wait_for(done.wait(), 5)
        assert finished == [None] * 4
        assert metrics.registry.get_sample_value("callstream_events_in_flight") == 0
    finally:
        server.close()
