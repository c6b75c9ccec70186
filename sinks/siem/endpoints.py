"""Who receives a practice's audit events, and the one signed request that delivers an event there.

Shared by the firehose and `callstream siem redeliver` (sinks/redeliver.py), so a redelivered event
goes to the same endpoint with the same signature scheme and webhook-id as a live one. Isolation
lives here: a practice's endpoint and secret come from its own tenant entry only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import httpx

from callstream import __version__
from callstream.retry import retry_after_seconds
from callstream.siem_delivery import SiemOutcome
from callstream.tenants import SiemFormat, TenantDirectory
from callstream.webhooks import WebhookSecret, WebhookSecretError, resolve_secret, signature_headers
from schemas.models import UNRESOLVED_PRACTICE_ID
from schemas.topics import SIEM_DEAD_LETTER

logger = logging.getLogger(__name__)

USER_AGENT = f"callstream-siem/{__version__}"
MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how one practice receives its audit events."""

    practice_id: str
    url: str = field(repr=False)
    secret: WebhookSecret = field(repr=False)
    body_format: SiemFormat


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """Why an event of this practice is not sent: skipped (no endpoint) or dead-lettered."""

    reason: str
    error_class: str
    dead_letter: bool
    outcome: SiemOutcome | None = None


async def post_signed(transport: httpx.AsyncHTTPTransport, endpoint: Endpoint, event_id: str, body: bytes,
                      timeout: dict[str, float | None]) -> tuple[int | None, float | None, float, str]:
    """One signed attempt (webhook-id = the audit event id, a fresh timestamp and signature):
    (status or None, Retry-After seconds, request seconds, failure label).

    Through a transport, not an AsyncClient: the client logs every request URL at INFO, and SIEM URLs
    carry tokens. A transport never logs a URL and never follows a redirect.
    """
    headers = {
        **signature_headers(endpoint.secret, event_id, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
    started = time.monotonic()
    try:
        request = httpx.Request("POST", endpoint.url, content=body, headers=headers, extensions={"timeout": timeout})
        response = await transport.handle_async_request(request)
        try:
            received = 0
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received > MAX_RESPONSE_BYTES:
                    break
        finally:
            await response.aclose()
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return None, None, time.monotonic() - started, type(exc).__name__
    status = response.status_code
    return status, retry_after_seconds(response.headers.get("retry-after")), time.monotonic() - started, f"HTTP {status}"


class EndpointDirectory:
    """Practice id → its own endpoint, from the tenant directory; remembers disabled endpoints."""

    def __init__(self, tenants: TenantDirectory) -> None:
        self._tenants = tenants
        self.configured = sum(1 for practice_id in tenants if tenants[practice_id].siem is not None)
        self._secrets: dict[str, WebhookSecret] = {}
        self.disabled: dict[str, str] = {}
        self._warned: set[str] = set()

    def endpoint_for(self, practice_id: str) -> Endpoint | Undeliverable:
        if practice_id == UNRESOLVED_PRACTICE_ID:
            return Undeliverable("call matched no practice", "UnresolvedPractice", dead_letter=False)
        practice = self._tenants.get(practice_id)
        if practice is None:
            self._warn_once(practice_id, "audit events for practice %s skipped: not in the tenant directory")
            return Undeliverable("practice not in the tenant directory", "UnknownPractice", dead_letter=False)
        if practice.siem is None:
            return Undeliverable("practice has no SIEM endpoint", "NoSiemEndpoint", dead_letter=False)
        if practice_id in self.disabled:
            return Undeliverable(self.disabled[practice_id], "EndpointDisabled", dead_letter=True,
                                 outcome=SiemOutcome.DISABLED)
        secret = self._secrets.get(practice_id)
        if secret is None:
            try:
                secret = resolve_secret(practice.siem.secret_ref)
            except WebhookSecretError as exc:
                self._warn_once(practice_id, "SIEM deliveries of practice %s dead-lettered: %s", exc)
                return Undeliverable(f"signing secret unavailable: {exc}", type(exc).__name__, dead_letter=True,
                                     outcome=SiemOutcome.FAILED)
            self._secrets[practice_id] = secret
        return Endpoint(practice_id, practice.siem.url, secret, practice.siem.format)

    def disable(self, practice_id: str, reason: str) -> None:
        self.disabled[practice_id] = reason
        logger.error("SIEM endpoint of practice %s disabled: %s; its audit events go to %s until the tenant "
                     "directory is updated and the sink restarted", practice_id, reason, SIEM_DEAD_LETTER)

    def _warn_once(self, practice_id: str, message: str, *details: object) -> None:
        """One warning per practice, not one per event."""
        if practice_id not in self._warned:
            self._warned.add(practice_id)
            logger.warning(message, practice_id, *details)
