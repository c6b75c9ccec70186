"""The shared retry vocabulary: both jitter shapes stay inside their bounds, and Retry-After parses."""

from __future__ import annotations

import random

import pytest

from callstream.retry import Backoff, retry_after_seconds


def test_equal_jitter_waits_at_least_half_the_step_and_never_past_the_cap() -> None:
    backoff = Backoff(base_s=0.5, cap_s=4.0)
    rng = random.Random(1)
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (10, 4.0), (10_000, 4.0)]:
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert min(delays) >= ceiling / 2
        assert max(delays) <= ceiling


def test_full_jitter_spreads_from_zero_to_the_step() -> None:
    backoff = Backoff(base_s=0.1, cap_s=2.0, jitter="full")
    rng = random.Random(2)
    delays = [backoff.delay(1, rng) for _ in range(500)]
    assert 0 <= min(delays) < 0.02
    assert 0.18 < max(delays) <= 0.2


def test_the_random_module_itself_is_a_jitter_source() -> None:
    assert 0 <= Backoff(base_s=1.0, cap_s=1.0, jitter="full").delay(0, random) <= 1.0


def test_a_seeded_generator_gives_the_same_equal_jitter_the_sinks_always_drew() -> None:
    """ceiling / 2 + uniform(0, ceiling / 2): the formula the sinks, SIEM and alerts used before the move."""
    expected_rng, rng = random.Random(3), random.Random(3)
    backoff = Backoff(base_s=1.0, cap_s=8.0)
    for attempt in range(6):
        ceiling = min(8.0, 2.0**attempt)
        assert backoff.delay(attempt, rng) == ceiling / 2 + expected_rng.uniform(0, ceiling / 2)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None), ("", None), ("7", 7.0), (" 0.25 ", 0.25), ("-3", None), ("nan", None), ("inf", None),
        ("soon", None), ("Tue, 14 Nov 2023 22:13:40 GMT", 20.0), ("Tue, 14 Nov 2023 22:13:00 GMT", 0.0),
    ],
)
def test_retry_after_reads_seconds_and_http_dates(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header, now=1_700_000_000) == seconds  # 1_700_000_000 = Tue, 14 Nov 2023 22:13:20 GMT
