"""The queue process's probes (review.service.Rounds): ready only once the loop turns, dead once it stalls."""

from __future__ import annotations

import httpx

from callstream.metrics_server import serve_metrics
from review.service import QueueMetrics, Rounds
from tests.connectors.test_breaker import ManualClock


def test_not_ready_before_the_first_round_but_live_while_the_consumer_joins() -> None:
    clock = ManualClock()
    rounds = Rounds(stall_after_s=120, monotonic=clock)
    clock.now += 60
    assert rounds.live() and not rounds.ready()
    clock.now += 61
    assert not rounds.live(), "a loop that never finished a round within the bound is stuck"


def test_a_stalled_loop_is_neither_live_nor_ready_and_a_new_round_revives_it() -> None:
    clock = ManualClock()
    rounds = Rounds(stall_after_s=120, monotonic=clock)
    rounds.done()
    clock.now += 119
    assert rounds.live() and rounds.ready()
    clock.now += 2
    assert not rounds.live() and not rounds.ready()
    rounds.done()
    assert rounds.live() and rounds.ready()


def test_the_metrics_endpoint_answers_the_probes_from_the_rounds() -> None:
    """What `callstream queue run` serves to the kubelet and Prometheus (the Helm queue Deployment's probes)."""
    clock = ManualClock()
    rounds = Rounds(monotonic=clock)
    server = serve_metrics(QueueMetrics().registry, "127.0.0.1", 0, readiness=rounds.ready, liveness=rounds.live)
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert httpx.get(f"{base}/readyz").status_code == 503
        rounds.done()
        assert httpx.get(f"{base}/readyz").status_code == 200
        assert "callstream_review_oldest_open_cs_age_seconds" in httpx.get(f"{base}/metrics").text
    finally:
        server.close()
