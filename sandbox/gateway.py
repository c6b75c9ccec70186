"""Admission of API calls: injected latency and errors, the per-key rate limit, call statistics.

Every FHIR and token call of both tracks passes `Gateway.admit` before any work, in the
order a real edge applies them; the statistics feed `GET /_admin/practices/{id}/stats`,
which the rate benchmark reads.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field

from sandbox.errors import FhirError
from sandbox.faults import FaultBoard
from sandbox.ratelimit import RateLimits
from sandbox.world import SandboxWorld, Tenant

ACCESS_LOG = "sandbox.access"
"""One INFO line per request: practice, route template, status (never the query string)."""
log = logging.getLogger(ACCESS_LOG)


@dataclass
class PracticeStats:
    api_calls: int = 0
    screen_requests: int = 0
    injected_latency_ms: int = 0
    """Latency the faults added and the sandbox waited out: shows a latency fault was applied, no stopwatch needed."""
    by_status: Counter[int] = field(default_factory=Counter)


class Gateway:
    def __init__(self, world: SandboxWorld, faults: FaultBoard) -> None:
        self.world = world
        self.faults = faults
        self.limits = RateLimits()
        self._stats: dict[str, PracticeStats] = {pid: PracticeStats() for pid in world.profiles}
        self._lock = threading.Lock()

    async def delay(self, tenant: Tenant) -> None:
        latency = self.faults.get(tenant.practice_id).latency_ms
        if latency:
            await asyncio.sleep(latency / 1000)
            with self._lock:
                self._stats.setdefault(tenant.practice_id, PracticeStats()).injected_latency_ms += latency

    def admit(self, tenant: Tenant, limiter_key: str) -> None:
        """Rate limit, then injected 429 bursts and 5xx; raises the refusal as a FhirError."""
        retry_after = self.limits.limiter(limiter_key).try_acquire(tenant.settings.rate_limit_per_minute)
        if retry_after is not None:
            raise FhirError(
                429, f"rate limit of {tenant.settings.rate_limit_per_minute} calls per minute exceeded",
                headers={"Retry-After": str(retry_after)},
            )
        faults = self.faults.get(tenant.practice_id)
        if self.faults.take_burst(tenant.practice_id):
            raise FhirError(429, "too many requests (injected burst)",
                            headers={"Retry-After": str(faults.burst_retry_after_s)})
        if self.faults.roll(faults.error_5xx_ratio):
            raise FhirError(500, "internal error (injected)")

    def lose_write_response(self, tenant: Tenant) -> bool:
        return self.faults.roll(self.faults.get(tenant.practice_id).error_5xx_after_write_ratio)

    def record(self, tenant: Tenant, route: str, status: int, screen: bool = False) -> None:
        """Count the call and log its route template, never its query string (PHI lives there)."""
        with self._lock:
            stats = self._stats.setdefault(tenant.practice_id, PracticeStats())
            if screen:
                stats.screen_requests += 1
            else:
                stats.api_calls += 1
            stats.by_status[status] += 1
        log.info("%s %s %d", tenant.practice_id, route, status)

    def stats(self, tenant: Tenant) -> dict:
        with self._lock:
            stats = self._stats.setdefault(tenant.practice_id, PracticeStats())
            by_status = dict(stats.by_status)
            limiter_keys = [k for k in (tenant.profile.api_key, tenant.profile.certified and tenant.profile.certified.client_id) if k]
            return {
                "practice_id": tenant.practice_id,
                "calls": stats.api_calls,
                "screen_requests": stats.screen_requests,
                "injected_latency_ms": stats.injected_latency_ms,
                "status_429": by_status.get(429, 0),
                "status_5xx": sum(n for code, n in by_status.items() if code >= 500),
                "by_status": {str(code): n for code, n in sorted(by_status.items())},
                "rate_limit_per_minute": tenant.settings.rate_limit_per_minute,
                "calls_in_window": sum(self.limits.limiter(k).in_window() for k in limiter_keys),
            }

    def reset_stats(self, tenant: Tenant) -> None:
        with self._lock:
            self._stats[tenant.practice_id] = PracticeStats()
